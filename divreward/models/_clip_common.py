"""CLIP through transformers, shared by PickScore, CLIPScore and the CLIP embedder.

Loading: ``CLIPModel`` weights + config from the model source; the image processor and
tokenizer from a processor source (the same repository for OpenAI's CLIPs; for
PickScore, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` as in the reference).

Preprocessing is transformers' PIL-backed ``CLIPImageProcessorPil`` configured by the
processor source's ``preprocessor_config.json`` (shortest side to 224, bicubic, centre
crop 224, OpenAI mean/std): the references ran transformers 4's PIL processor, while
transformers 5's default ``CLIPImageProcessor`` is torchvision-backed and differs by up
to 0.015 per pixel value. :func:`preprocess` computes the PIL processor's values bit for
bit, faster. Text is truncated at 77 tokens.

transformers 5: ``get_image_features``/``get_text_features`` return an output object;
the projected embedding is its ``.pooler_output``.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from divreward.models._common import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PIXELS,
    canonical,
    iter_chunks,
    seeded,
    unique_texts,
)
from divreward.models._tensor_preprocess import (
    by_size,
    preprocess_mode,
    resize_like_pil,
    stack_on,
)
from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import (
    Resolved,
    WeightsNotFoundError,
    check_device,
    resolve_dir,
    resolve_dtype,
    resolve_file,
    resolve_first,
)
from divreward.models.weights import optional as optional_file

if TYPE_CHECKING:
    import torch
    from PIL import Image

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json")
CONTEXT_LENGTH = 77


@dataclass
class ClipBundle:
    """A loaded CLIP: model (eval, on device), tokenizer, PIL image processor."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    processor: Any  # transformers.CLIPImageProcessorPil
    device: str
    dtype: torch.dtype
    resolved: list[Resolved]  # model weights file first, then config, processor dir
    max_resolution: int  # the processor's crop side
    preprocess: str = "pil"  # "pil": the reference processor; "tensor": preprocess_tensor


def load_clip(
    opts: LoadOptions, processor_source: str | None, model_name: str = "clip"
) -> ClipBundle:
    """Load a transformers CLIP from ``opts.source`` (hub id or local directory) and its
    processor/tokenizer from ``processor_source`` (default: the same source);
    ``model_name`` names the model in option errors."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    assert opts.source is not None  # load_model fills in the registry default
    device = check_device(opts.device)
    dtype = resolve_dtype(opts)
    weights = resolve_first(opts.source, WEIGHT_FILES, opts)
    config = resolve_file(opts.source, CONFIG_FILE, opts)
    if config.path.parent != weights.path.parent:
        raise WeightsNotFoundError(
            f"config.json and the weights of {opts.source!r} resolved to different "
            f"directories ({config.path.parent} vs {weights.path.parent})"
        )
    proc = resolve_dir(processor_source or opts.source, opts, PROCESSOR_FILES, TOKENIZER_FILES)
    if not (proc.path / "tokenizer.json").is_file() and not all(
        (proc.path / f).is_file() for f in ("vocab.json", "merges.txt")
    ):
        raise WeightsNotFoundError(
            f"tokenizer for {processor_source or opts.source!r} not found in {proc.path}: "
            "need tokenizer.json, or vocab.json and merges.txt"
        )
    model: Any = CLIPModel.from_pretrained(str(weights.path.parent), dtype=dtype)
    model = model.to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(proc.path))
    processor = CLIPImageProcessorPil.from_pretrained(str(proc.path))
    crop = processor.crop_size
    side = int(crop["height"]) if isinstance(crop, dict) else int(crop.height)
    mode = preprocess_mode(model_name, opts.options)
    resolved = [weights, config, proc]
    return ClipBundle(model, tokenizer, processor, device, dtype, resolved, side, mode)


def hub_files(opts: LoadOptions, processor_source: str | None) -> list[tuple[str, list[str]]]:
    """What :func:`load_clip` reads from the hub: the model's weights (either format) and
    config from ``opts.source``, the processor and tokenizer files from
    ``processor_source`` (default: the same repository)."""
    assert opts.source is not None
    model = [*WEIGHT_FILES, CONFIG_FILE]
    proc = [*PROCESSOR_FILES, *(optional_file(f) for f in TOKENIZER_FILES)]
    source = processor_source or opts.source
    if source == opts.source:
        return [(opts.source, [*model, *proc])]
    return [(opts.source, model), (source, proc)]


def processor_preprocess(processor: Any, images: Sequence[np.ndarray]) -> torch.Tensor:
    """The processor itself on canonical images: ``(N, 3, S, S)`` float32 (S = crop side)."""
    from PIL import Image

    pil: list[Image.Image] = [Image.fromarray(img) for img in images]
    return processor(images=pil, return_tensors="pt")["pixel_values"]


def preprocess(processor: Any, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Canonical images -> ``(N, 3, S, S)`` float32 pixel values (S = crop side), equal
    bit for bit to :func:`processor_preprocess`, in fewer copies and in parallel.

    The PIL processor converts each image to PIL and back twice (RGB conversion, resize),
    rescales in float64 and normalises per image. Here each image is resized by the same
    PIL call (bicubic, shortest side, no reducing gap) and centre-cropped as uint8, the
    images' resizes run in parallel threads (PIL releases the GIL; as many as torch has),
    and ``(float32(v * rescale) - mean) / std`` in float32, the processor's arithmetic,
    is a 256-entry table per channel applied to the whole batch at once. A processor
    configured otherwise, or an image smaller than the crop after resizing (the
    processor pads it), goes through the processor.
    """
    import torch

    table = _pil_table(processor)
    if table is None:
        return processor_preprocess(processor, images)
    short = int(processor.size["shortest_edge"])
    ch, cw = int(processor.crop_size["height"]), int(processor.crop_size["width"])

    def one(img: np.ndarray) -> np.ndarray | None:
        from PIL import Image

        nh, nw = _resize_side(int(img.shape[0]), int(img.shape[1]), short)
        top, left = (nh - ch) // 2, (nw - cw) // 2
        if top < 0 or left < 0:
            return None
        resized = Image.fromarray(img).resize((nw, nh), resample=Image.Resampling.BICUBIC)
        return np.asarray(resized)[top : top + ch, left : left + cw]

    workers = torch.get_num_threads()
    crops = (
        list(_preprocess_pool(workers).map(one, images))
        if workers > 1 and len(images) > 1
        else [one(img) for img in images]
    )
    out = torch.empty((len(images), 3, ch, cw))
    done = [i for i, c in enumerate(crops) if c is not None]
    if done:
        u = np.stack([c for c in crops if c is not None])  # (B, S, S, 3) uint8, as done
        values = np.stack([table[c][u[..., c]] for c in range(3)], axis=1)  # (B, 3, S, S)
        out[done] = torch.from_numpy(values)
    rest = [i for i, c in enumerate(crops) if c is None]
    if rest:
        out[rest] = processor_preprocess(processor, [images[i] for i in rest])
    return out


def _pil_table(processor: Any) -> np.ndarray | None:
    """``(3, 256)`` float32: the processor's rescale and normalisation of each uint8
    level per channel, computed as it does (``float32(float64(v) * rescale_factor)``,
    then ``(x - mean) / std`` in float32); None when the processor is not configured as
    :func:`preprocess` assumes (shortest-side bicubic resize, centre crop, rescale,
    normalise, RGB, no padding)."""
    from PIL import Image

    size, crop = processor.size, processor.crop_size
    try:
        plain = (
            processor.do_resize
            and processor.do_center_crop
            and processor.do_rescale
            and processor.do_normalize
            and processor.do_convert_rgb is not False
            and not getattr(processor, "do_pad", None)
            and int(processor.resample) == int(Image.Resampling.BICUBIC)
            and size["shortest_edge"]
            and not size["longest_edge"]
            and crop["height"]
            and crop["width"]
        )
    except (AttributeError, KeyError, TypeError):
        return None
    if not plain:
        return None
    levels = (np.arange(256, dtype=np.float64) * float(processor.rescale_factor)).astype(np.float32)
    mean = np.array(processor.image_mean, dtype=np.float32)
    std = np.array(processor.image_std, dtype=np.float32)
    return np.stack([(levels - mean[c]) / std[c] for c in range(3)])


@functools.cache
def _preprocess_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")


def _resize_side(h: int, w: int, short: int) -> tuple[int, int]:
    """The processor's shortest-side resize (aspect kept, long side truncated)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def preprocess_tensor(processor: Any, images: Sequence[np.ndarray], device: str) -> torch.Tensor:
    """The same preprocessing as :func:`preprocess` as batched tensor operations on
    ``device``: images of one size are resized together (bicubic with antialiasing, PIL's
    kernel), rounded to uint8 levels as PIL does, centre-cropped and normalised. Equal to
    the PIL processor within 2 uint8 levels per pixel before normalisation
    (tests/models/test_clip_preprocess.py); ``(N, 3, S, S)`` float32 on ``device``."""
    import torch

    short = int(processor.size["shortest_edge"])
    crop = processor.crop_size
    ch, cw = int(crop["height"]), int(crop["width"])
    mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
    scale = float(processor.rescale_factor)
    out = torch.empty((len(images), 3, ch, cw), device=device)
    for (h, w), idx in by_size(images).items():
        nh, nw = _resize_side(h, w, short)
        top, left = (nh - ch) // 2, (nw - cw) // 2
        if top < 0 or left < 0:  # smaller than the crop: the processor pads; keep its path
            out[idx] = processor_preprocess(processor, [images[i] for i in idx]).to(device)
            continue
        x = resize_like_pil(stack_on(images, idx, device), (nh, nw))  # (B, 3, nh, nw)
        x = x[:, :, top : top + ch, left : left + cw]
        out[idx] = (x * scale - mean) / std
    return out


def image_features(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    max_batch: int = DEFAULT_MAX_BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """``(N, P)`` float32 unit-norm projected image embeddings, in chunks of at most
    ``max_batch`` images and ``max_pixels`` input pixels."""
    import torch

    out = []
    with torch.inference_mode():
        for sl in iter_chunks(images, max_batch, max_pixels):
            if bundle.preprocess == "tensor":
                pixels = preprocess_tensor(bundle.processor, images[sl], bundle.device)
            else:
                pixels = preprocess(bundle.processor, images[sl])
            pixels = pixels.to(bundle.device, bundle.dtype)
            emb = bundle.model.get_image_features(pixel_values=pixels).pooler_output  # (B, P)
            out.append(_unit(emb.float()).cpu())
    proj = bundle.model.config.projection_dim
    return torch.cat(out) if out else torch.zeros((0, proj))


def text_features(
    bundle: ClipBundle, texts: Sequence[str], max_batch: int = DEFAULT_MAX_BATCH
) -> torch.Tensor:
    """``(N, P)`` float32 unit-norm projected text embeddings (77-token truncation), in
    chunks of at most ``max_batch`` texts."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), max_batch):
            tok = bundle.tokenizer(
                list(texts[start : start + max_batch]),
                padding=True,
                truncation=True,
                max_length=CONTEXT_LENGTH,
                return_tensors="pt",
            ).to(bundle.device)
            emb = bundle.model.get_text_features(
                input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
            ).pooler_output  # (B, P)
            out.append(_unit(emb.float()).cpu())
    proj = bundle.model.config.projection_dim
    return torch.cat(out) if out else torch.zeros((0, proj))


def cosine(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    texts: Sequence[str],
    max_batch: int = DEFAULT_MAX_BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """``cos(image_i, text_i)`` for each pair, float64 ``(N,)``."""
    img = image_features(bundle, images, max_batch, max_pixels)
    distinct, index = unique_texts(texts)  # each distinct text is encoded once
    txt = text_features(bundle, distinct, max_batch)[index]
    return (img * txt).sum(dim=-1).double().numpy()


class ClipScorer(Scorer):
    """A scorer built on ``cos(image_i, prefix + prompt_i)`` of a CLIP bundle."""

    def __init__(self, bundle: ClipBundle, info: ModelInfo) -> None:
        self.bundle = bundle
        self.info = info
        self.max_resolution = bundle.max_resolution

    def cosine(self, images: Sequence[Any], prompts: Sequence[str], prefix: str = "") -> np.ndarray:
        """Checked inputs -> float64 ``(N,)`` cosines, in the model's batch limits."""
        check_prompts(images, prompts)
        texts = [prefix + p for p in prompts]
        return cosine(self.bundle, canonical(images), texts, self.max_batch, self.max_batch_pixels)


def logit_scale(bundle: ClipBundle) -> float:
    return float(bundle.model.logit_scale.detach().float().exp())


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --- tiny models ------------------------------------------------------------------------


@functools.cache
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real CLIP BPE (49408 tokens), rebuilt from the vocabulary that ships inside the
    open_clip wheel, in the same order as OpenAI's/HF's ``vocab.json``, so that tiny
    models tokenise exactly like the real ones, offline."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, [(a, b) for a, b in merges]


def write_processor(out: Path, side: int) -> None:
    """Write ``preprocessor_config.json`` (OpenAI CLIP's, with ``side`` for 224) and the
    tokenizer files into ``out``."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe()
    merge_pairs: Any = list(merges)  # tokenizers takes (a, b) pairs; the stub says str
    tokenizer = CLIPTokenizer(
        vocab=dict(vocab), merges=merge_pairs, model_max_length=CONTEXT_LENGTH
    )
    tokenizer.save_pretrained(str(out))
    pre = {
        "crop_size": {"height": side, "width": side},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": side},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def write_tiny_clip(model_dir: Path, seed: int, logit_scale_init: float) -> None:
    """A random CLIPModel (width 32, 2 layers, patch 8 at 32 px, projection 16, the real
    49408-token vocabulary) saved as ``config.json`` + ``model.safetensors``."""
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": CONTEXT_LENGTH,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=16,
        logit_scale_init_value=logit_scale_init,
    )
    import torch

    with seeded(seed):
        model = CLIPModel(config).eval()
    # A random CLIP's embeddings are dominated by input-independent parts (the class
    # token, the end-of-text token), so cos(image, text) has the same sign for nearly
    # every pair. Make that sign positive, or CLIPScore's clamp at 0 would map every
    # tiny score to 0 and hide pairing mistakes: flipping text_projection negates cos.
    with torch.no_grad():
        probe_img = torch.zeros((1, 3, vision["image_size"], vision["image_size"]))
        probe_txt = torch.tensor([[49406, 320, 1125, 49407]])  # "<sot> a photo <eot>"
        img = model.get_image_features(pixel_values=probe_img).pooler_output
        txt = model.get_text_features(input_ids=probe_txt).pooler_output
        if float(torch.nn.functional.cosine_similarity(img, txt).item()) < 0:
            model.text_projection.weight.neg_()
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir))
