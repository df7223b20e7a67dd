"""ImageReward (Xu et al. 2023): BLIP ViT-L/16 + a BERT-base text encoder that
cross-attends to the image, then a linear MLP head; reimplemented on transformers'
BLIP modules without the ``image-reward`` package (which does not import on
transformers 5 and loads its checkpoint with ``strict=False``).

Score (``ImageReward/ImageReward.py``, ``ImageReward.score``)::

    image_embeds = visual_encoder(preprocess(image))            # (B, 197, 1024)
    hidden = text_encoder(ids, mask, encoder_hidden_states=image_embeds)   # (B, 35, 768)
    score = (mlp(hidden[:, 0].float()) - 0.16717362830052426) / 1.0333394966054072

``mlp`` is ``Linear(768, 1024) Dropout Linear(1024, 128) Dropout Linear(128, 64) Dropout
Linear(64, 16) Linear(16, 1)``: no activations (the reference comments them out).

- Text: ``bert-base-uncased`` (hub id ``google-bert/bert-base-uncased``, option
  ``tokenizer_source``) with ``[DEC]`` added as bos and ``[ENC]`` as an additional
  special token (vocabulary 30524), ``padding="max_length"``, ``truncation=True``,
  ``max_length=35``: prompts longer than 33 word pieces are cut, as in the reference.
  Position 0 holds ``[CLS]``: the reference's ``score``/``inference_rank`` (and its
  training code) do **not** replace it by ``[ENC]`` as BLIP's ITM head does.
- Image: ``Resize(224, bicubic)`` of the shorter side, ``CenterCrop(224)``, ``ToTensor``,
  ``Normalize`` with the OpenAI CLIP mean/std, through torchvision on PIL images exactly
  as the reference's ``_transform``. Option ``preprocess: tensor``: the same as batched
  tensor operations on the model's device (:func:`preprocess_tensor`).
- Weights: ``THUDM/ImageReward`` files ``ImageReward.pt`` (a plain state dict, read with
  ``torch.load(weights_only=True)``: no code runs) and ``med_config.json`` (the BERT
  config). Keys are renamed onto transformers' ``BlipVisionModel`` /
  ``BlipTextModel(add_pooling_layer=False)`` (see :data:`_RENAMES`) and loaded strictly:
  a missing, unexpected or mis-shaped key is an error. ``blip.vision_proj`` and
  ``blip.text_proj`` (BLIP's contrastive projections, unused by the score) are
  shape-checked and dropped; ``blip.text_encoder.embeddings.position_ids`` (a buffer of
  old BLIP code), when present, must be ``arange``.
- The vision tower is BLIP's ViT-L/16 at 224 px, fixed in the reference code
  (``vit='large'``); only a tiny directory carries ``divreward_blip_vision_config.json``
  to describe its smaller tower (read only when present, documented in docs/models.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from divreward.models._checkpoint import (
    CheckpointMismatchError,
    Shape,
    check_keys_and_shapes,
    meta_tensors,
    module_shapes,
)
from divreward.models._common import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PIXELS,
    canonical,
    check_options,
    iter_chunks,
    option,
    seeded,
)
from divreward.models._tensor_preprocess import (
    by_size,
    preprocess_mode,
    resize_like_pil,
    stack_on,
)
from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import (
    check_device,
    model_info,
    note_tiny,
    optional,
    resolve_dir,
    resolve_dtype,
    resolve_file,
)

REPO = "THUDM/ImageReward"
WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER_REPO = "google-bert/bert-base-uncased"
TOKENIZER_REQUIRED = ("vocab.txt",)
TOKENIZER_OPTIONAL = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
VISION_CONFIG_FILE = "divreward_blip_vision_config.json"  # tiny directories only
OPTIONS = ("tokenizer_source", "max_batch", "max_batch_pixels", "preprocess")

MEAN = 0.16717362830052426  # the reference's reward standardisation
STD = 1.0333394966054072
MAX_LENGTH = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLIP_EMBED_DIM = 256  # width of BLIP's (dropped) contrastive projections

# BLIP ViT-L/16 of ``create_vit('large', 224)``: 24 blocks, width 1024, 16 heads,
# qkv bias, LayerNorm eps 1e-6, exact GELU.
VIT_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
}

# Checkpoint key <-> module key, tried in order; ``{n}`` is a block index, a name ending
# in "." a prefix (the rest of the key is kept), any other name a whole key.
_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.{n}.norm1.", "vision.encoder.layers.{n}.layer_norm1."),
    ("blip.visual_encoder.blocks.{n}.norm2.", "vision.encoder.layers.{n}.layer_norm2."),
    ("blip.visual_encoder.blocks.{n}.attn.qkv.", "vision.encoder.layers.{n}.self_attn.qkv."),
    (
        "blip.visual_encoder.blocks.{n}.attn.proj.",
        "vision.encoder.layers.{n}.self_attn.projection.",
    ),
    ("blip.visual_encoder.blocks.{n}.mlp.", "vision.encoder.layers.{n}.mlp."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.{n}.", "mlp.{n}."),
)


def _rules(pairs: tuple[tuple[str, str], ...], inverse: bool) -> tuple[tuple[str, str], ...]:
    """(regex, replacement) rules from ``pairs``: checkpoint -> module, or the inverse."""
    rules = []
    for ckpt, mod in pairs:
        src, dst = (mod, ckpt) if inverse else (ckpt, mod)
        pattern = re.escape(src).replace(re.escape("{n}"), r"(\d+)")
        rules.append(
            ("^" + pattern + ("" if src.endswith(".") else "$"), dst.replace("{n}", r"\1"))
        )
    return tuple(rules)


_RENAMES = _rules(_KEY_MAP, inverse=False)  # checkpoint key -> module key
_INVERSE = _rules(_KEY_MAP, inverse=True)  # module key -> checkpoint key (tiny builder, tests)
_DROPPED = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
)
_POSITION_IDS = "blip.text_encoder.embeddings.position_ids"


def _apply(rules: tuple[tuple[str, str], ...], key: str) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def module_key(ckpt_key: str) -> str | None:
    """``ImageReward.pt`` key -> module key; None for keys outside the module."""
    return _apply(_RENAMES, ckpt_key)


def checkpoint_key(mod_key: str) -> str:
    """Module key -> the ``ImageReward.pt`` key it is loaded from."""
    key = _apply(_INVERSE, mod_key)
    if key is None:
        raise KeyError(f"no checkpoint key for module key {mod_key!r}")
    return key


class ImageRewardModel(nn.Module):
    """``vision`` (BlipVisionModel) + ``text`` (BlipTextModel with cross-attention) +
    ``mlp``; ``forward`` returns the standardised score ``(B,)`` float32."""

    def __init__(self, vision_config: Any, text_config: Any) -> None:
        super().__init__()
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        width = text_config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(B, 3, S, S)``, ``(B, 35)``, ``(B, 35)`` -> ``(B, D)`` float32: the text
        encoder's first-token state after cross-attending to the image."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        image_embeds = self.vision(pixel_values.to(dtype)).last_hidden_state  # (B, 1 + n, Dv)
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        hidden = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state  # (B, 35, D); bidirectional self-attention (is_decoder=False)
        return hidden[:, 0].float()

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        raw = self.mlp(self.features(pixel_values, input_ids, attention_mask))  # (B, 1)
        return ((raw - MEAN) / STD).squeeze(-1)


def vision_config(weights_dir: Path) -> Any:
    """BLIP ViT-L/16 (the reference's ``vit='large'``), unless ``weights_dir`` carries
    the tiny profile's :data:`VISION_CONFIG_FILE`."""
    from transformers import BlipVisionConfig

    values = dict(VIT_LARGE)
    extra = weights_dir / VISION_CONFIG_FILE
    if extra.is_file():
        values.update(json.loads(extra.read_text()))
    return BlipVisionConfig(**values)


def text_config(
    med_config: dict[str, Any], encoder_width: int, bos_token_id: int, path: str = MED_CONFIG
) -> Any:
    """``BlipTextConfig`` from BLIP's ``med_config.json`` (a BERT config);
    ``encoder_width`` is the vision width, as ``BLIP_Pretrain`` overrides it;
    ``bos_token_id`` is the tokenizer's ``[DEC]``."""
    from transformers import BlipTextConfig

    if not med_config.get("add_cross_attention", False):
        raise ValueError(
            f"{path}: 'add_cross_attention' must be true for ImageReward's text encoder"
        )
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "pad_token_id",
        "initializer_range",
    )
    missing = [k for k in keys[:6] if k not in med_config]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    values = {k: med_config[k] for k in keys if k in med_config}
    # is_decoder=True only builds the cross-attention layers; forward() keeps the
    # self-attention bidirectional (its is_decoder argument defaults to False).
    return BlipTextConfig(
        **values, encoder_hidden_size=encoder_width, is_decoder=True, bos_token_id=bos_token_id
    )


def expected_checkpoint_shapes(model: ImageRewardModel) -> dict[str, Shape]:
    """Every key and shape ``ImageReward.pt`` must carry for ``model`` (the optional
    ``position_ids`` buffer aside)."""
    shapes = {checkpoint_key(k): s for k, s in module_shapes(model).items()}
    vision_width = model.vision.config.hidden_size
    text_width = model.text.config.hidden_size
    shapes["blip.vision_proj.weight"] = (BLIP_EMBED_DIM, vision_width)
    shapes["blip.vision_proj.bias"] = (BLIP_EMBED_DIM,)
    shapes["blip.text_proj.weight"] = (BLIP_EMBED_DIM, text_width)
    shapes["blip.text_proj.bias"] = (BLIP_EMBED_DIM,)
    return shapes


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``ImageReward.pt`` as a flat ``{key: tensor}`` (``weights_only``: no code runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(
            f"cannot read {path} as a weights-only state dict ({exc})"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointMismatchError(f"{path} is not a flat state dict of tensors")
    return state


def load_checkpoint(
    state: dict[str, torch.Tensor],
    vcfg: Any,
    tcfg: Any,
    device: str,
    dtype: torch.dtype,
    path: str,
) -> ImageRewardModel:
    """Strict key/shape check, rename, load with ``assign=True``; BLIP in ``dtype``,
    the MLP head in fp32."""
    with torch.device("meta"):
        model = ImageRewardModel(vcfg, tcfg)
    expected = expected_checkpoint_shapes(model)
    found = {k: tuple(v.shape) for k, v in state.items()}
    max_pos = tcfg.max_position_embeddings
    if _POSITION_IDS in found:
        expected[_POSITION_IDS] = (1, max_pos)
    check_keys_and_shapes(expected, found, model="ImageReward", path=path)
    if _POSITION_IDS in state and not torch.equal(
        state[_POSITION_IDS].long(), torch.arange(max_pos).unsqueeze(0)
    ):
        raise CheckpointMismatchError(f"checkpoint {path}: {_POSITION_IDS} is not 0..{max_pos - 1}")
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in _DROPPED or key == _POSITION_IDS:
            continue
        mkey = module_key(key)
        assert mkey is not None  # every other key passed the strict check above
        target = torch.float32 if mkey.startswith("mlp.") else dtype
        loaded[mkey] = tensor.to(device=device, dtype=target)
    model.load_state_dict(loaded, strict=True, assign=True)
    # position_ids is a non-persistent buffer: recreate it off the meta device.
    model.text.embeddings.position_ids = torch.arange(max_pos, device=device).unsqueeze(0)
    left = meta_tensors(model)
    if left:
        raise RuntimeError(f"ImageReward: tensors left on the meta device after loading: {left}")
    return model.eval()


def init_tokenizer(tokenizer_dir: Path) -> Any:
    """``bert-base-uncased`` + ``[DEC]`` (bos) + ``[ENC]``, as BLIP's ``init_tokenizer``."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def preprocess_transform(size: int) -> Any:
    """The reference's ``_transform(224)`` (torchvision on PIL)."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    return Compose(
        [
            Resize(size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(size),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def preprocess_tensor(images: Sequence[np.ndarray], size: int, device: str) -> torch.Tensor:
    """:func:`preprocess_transform` as batched tensor operations on ``device``: shorter
    side to ``size`` (torchvision's output size, PIL's antialiased bicubic kernel, rounded
    to uint8 levels), torchvision's centre crop, ToTensor, CLIP normalisation; one resize
    per group of images of one size. Within 2 uint8 levels per pixel of the reference
    (tests/models/test_tensor_preprocess.py); ``(N, 3, size, size)`` float32 on
    ``device``."""
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    out = torch.empty((len(images), 3, size, size), device=device)
    for (h, w), idx in by_size(images).items():
        # torchvision's Resize(int): the short side to ``size``, the long one truncated.
        short, long = min(h, w), max(h, w)
        new_long = int(size * long / short)
        nh, nw = (new_long, size) if w <= h else (size, new_long)
        x = resize_like_pil(stack_on(images, idx, device), (nh, nw))  # (B, 3, nh, nw)
        top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)  # torchvision's crop
        x = x[:, :, top : top + size, left : left + size]
        out[idx] = (x / 255.0 - mean) / std
    return out


@dataclass(eq=False, repr=False)
class ImageReward(Scorer):
    model: ImageRewardModel
    tokenizer: Any
    # field(): required here, although BatchLimits gives class defaults
    max_batch: int = field()
    max_batch_pixels: int = field()
    device: str
    info: ModelInfo
    preprocess: str = "pil"  # "pil": the reference transform; "tensor": preprocess_tensor

    def __post_init__(self) -> None:
        size: Any = self.model.vision.config.image_size  # an int for BLIP (typed as a union)
        self.image_size = int(size)
        self.transform = preprocess_transform(self.image_size)
        self.max_resolution = self.image_size

    def pixel_values(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, S, S)`` float32, normalised, on the model's device."""
        if self.preprocess == "tensor":
            return preprocess_tensor(images, self.image_size, self.device)
        x = torch.stack([self.transform(Image.fromarray(img)) for img in images])
        return x.to(self.device)

    def tokens(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 35)`` ids and mask, ``[CLS] ... [SEP] [PAD]...``."""
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    @torch.inference_mode()
    def score(self, images: Any, prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        arrays = canonical(images)
        out = np.empty(len(arrays), dtype=np.float64)
        for sl in iter_chunks(arrays, self.max_batch, self.max_batch_pixels):
            pixels = self.pixel_values(arrays[sl])
            ids, mask = self.tokens(prompts[sl])
            scores = self.model(pixels, ids.to(self.device), mask.to(self.device))
            out[sl] = scores.float().cpu().numpy()
        return out


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """``ImageReward.pt`` and ``med_config.json`` (plus the tiny profile's vision config,
    read only when present), and the BERT tokenizer files."""
    tokenizer_source = option(opts.options, "tokenizer_source", str, TOKENIZER_REPO)
    return [
        (opts.source or REPO, [WEIGHTS_FILE, MED_CONFIG, optional(VISION_CONFIG_FILE)]),
        (tokenizer_source, [*TOKENIZER_REQUIRED, *(optional(f) for f in TOKENIZER_OPTIONAL)]),
    ]


def load(opts: LoadOptions) -> ImageReward:
    check_options("imagereward", opts.options, OPTIONS)
    device = check_device(opts.device)
    tokenizer_source = option(opts.options, "tokenizer_source", str, TOKENIZER_REPO)
    max_batch = option(opts.options, "max_batch", int, DEFAULT_MAX_BATCH)
    max_batch_pixels = option(opts.options, "max_batch_pixels", int, DEFAULT_MAX_PIXELS)
    mode = preprocess_mode("imagereward", opts.options)
    for key, value in (("max_batch", max_batch), ("max_batch_pixels", max_batch_pixels)):
        if value < 1:
            raise ValueError(f"imagereward: option {key!r} must be >= 1, got {value}")
    dtype = resolve_dtype(opts)

    main = resolve_file(opts.source or REPO, WEIGHTS_FILE, opts)
    med = resolve_file(opts.source or REPO, MED_CONFIG, opts)
    tok_dir = resolve_dir(tokenizer_source, opts, TOKENIZER_REQUIRED, TOKENIZER_OPTIONAL)
    profile = note_tiny("imagereward", [main, med, tok_dir])

    vcfg = vision_config(main.path.parent)
    tokenizer = init_tokenizer(tok_dir.path)
    med_config = json.loads(med.path.read_text())
    tcfg = text_config(med_config, vcfg.hidden_size, tokenizer.bos_token_id, str(med.path))
    if len(tokenizer) != tcfg.vocab_size:
        raise ValueError(
            f"the tokenizer of {tok_dir.source} has {len(tokenizer)} tokens with [DEC] and "
            f"[ENC] but {med.path} says vocab_size={tcfg.vocab_size}"
        )
    model = load_checkpoint(read_state_dict(main.path), vcfg, tcfg, device, dtype, str(main.path))
    info = model_info("imagereward", "scorer", opts, [main, med, tok_dir], device, dtype, profile)
    return ImageReward(model, tokenizer, max_batch, max_batch_pixels, device, info, mode)


# ---------------------------------------------------------------------------------------
# Tiny twin
# ---------------------------------------------------------------------------------------

TINY_VISION: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,  # the reference's preprocessing size; patch 32 keeps it cheap
    "patch_size": 32,
    # Pitfall: BlipVisionConfig defaults to 1e-10, which makes a random tower output ~0
    # for every image (all images would score the same).
    "initializer_range": 0.02,
}


def tiny_bert_vocab() -> list[str]:
    """A small uncased WordPiece vocabulary: BERT's special tokens, characters, their
    ``##`` continuations and a few whole words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:!?'\"-()&/")
    words = " ".join(
        (
            "a an the of on in at with and photo painting red two cats sofa bowl city street",
            "rain night close up bee flower fox snow horse astronaut riding lighthouse dusk",
            "oil top view bicycle leaning wall watercolor ramen asleep dog cat",
        )
    ).split(" ")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    cont = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    seen: list[str] = []
    for tok in [*specials, *chars, *cont, *words]:
        if tok not in seen:
            seen.append(tok)
    return seen


def tiny_med_config(vocab_size: int, encoder_width: int) -> dict[str, Any]:
    """The tiny twin of ImageReward's med_config.json (same keys)."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": encoder_width,
        "add_cross_attention": True,
    }


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/THUDM/ImageReward/{ImageReward.pt, med_config.json,
    divreward_blip_vision_config.json}`` and ``out_dir/google-bert/bert-base-uncased/
    {vocab.txt, tokenizer_config.json}``. ``ImageReward.pt`` is written in the
    **original** key layout (``blip.visual_encoder.*``, ``blip.text_encoder.*``,
    ``mlp.layers.*``, the projections and ``position_ids``), so loading exercises the
    rename and the strict check."""
    ir_dir = out_dir / REPO
    tok_dir = out_dir / TOKENIZER_REPO
    ir_dir.mkdir(parents=True, exist_ok=True)
    tok_dir.mkdir(parents=True, exist_ok=True)

    vocab = tiny_bert_vocab()
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512}, indent=2) + "\n"
    )
    vision_width = TINY_VISION["hidden_size"]
    med = tiny_med_config(len(vocab) + 2, vision_width)  # + [DEC], [ENC]
    (ir_dir / MED_CONFIG).write_text(json.dumps(med, indent=2) + "\n")
    (ir_dir / VISION_CONFIG_FILE).write_text(json.dumps(TINY_VISION, indent=2) + "\n")

    vcfg = vision_config(ir_dir)
    tcfg = text_config(med, vision_width, bos_token_id=len(vocab))  # [DEC] follows the vocab
    with seeded(seed):
        model = ImageRewardModel(vcfg, tcfg)
        # The reference initialises its MLP with std 1/(768+1) and zero bias: a random
        # tiny model would then score every image the same; PyTorch's default Linear
        # init keeps the tiny scores apart.
        for layer in model.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        state = {checkpoint_key(k): v.detach().clone() for k, v in model.state_dict().items()}
        state["blip.vision_proj.weight"] = torch.randn(BLIP_EMBED_DIM, vision_width) * 0.02
        state["blip.vision_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)
        state["blip.text_proj.weight"] = torch.randn(BLIP_EMBED_DIM, med["hidden_size"]) * 0.02
        state["blip.text_proj.bias"] = torch.zeros(BLIP_EMBED_DIM)
    state[_POSITION_IDS] = torch.arange(med["max_position_embeddings"]).unsqueeze(0)
    torch.save(state, str(ir_dir / WEIGHTS_FILE))
