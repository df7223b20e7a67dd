"""HPSv2 and HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on HPD v2.

score_i = cos(image_features_i, text_features_i)      (real values ≈ 0.2-0.35)

as in ``hpsv2/img_score.py`` (``image_features @ text_features.T``, diagonal; open_clip
normalises both). No logit scale.

Weights: ``xswu/HPSv2`` files ``HPS_v2_compressed.pt`` (option ``version="v2.0"``) and
``HPS_v2.1_compressed.pt`` (``"v2.1"``), key ``state_dict``, loaded **strictly** into
upstream open_clip's ``CLIP`` built from the ``ViT-H-14`` config (its state dict
matches hpsv2's bundled fork key for key). The model is built on the meta device and
the checkpoint assigned into it, so no random 1B-parameter init runs first; the only
non-persistent buffer (the text causal mask) is rebuilt after loading. Checkpoints are
read with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

Preprocessing (hpsv2's ``image_transform(..., resize_longest_max=True)``): RGB ->
ToTensor -> resize so the **longest** side is 224 (bicubic on the float tensor,
torchvision's default antialias) -> pad centred with black (left/top get ``pad // 2``)
to 224 x 224 -> OpenAI mean/std. One deviation, documented: upstream skips the pad when
the longest side is already 224, which crashes the model on non-square inputs; here
such images are padded too (the square case is identical). Option ``preprocess``:
``pil`` (default, this reference, per image on the CPU) or ``tensor`` (the same
operations batched on the model's device: :func:`preprocess_tensor`).

Tokeniser: open_clip's ``SimpleTokenizer`` (the BPE vocabulary ships in the wheel),
context length 77, as ``open_clip.get_tokenizer("ViT-H-14")``.

Tiny profile: the repository directory may carry ``open_clip_config.json`` (open_clip's
own file name and format, ``{"model_cfg": {...}}``), read **only if present**, naming a
small architecture; the real ``xswu/HPSv2`` repository has no such file, so real
weights always get ViT-H-14. ``divreward make-tiny-models`` writes it beside the tiny
checkpoints, under a directory marked as tiny.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from divreward.models._common import (
    canonical,
    check_options,
    iter_chunks,
    option,
    seeded,
    unique_texts,
)
from divreward.models._tensor_preprocess import by_size, preprocess_mode, stack_on
from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import (
    WeightsNotFoundError,
    check_device,
    model_info,
    optional,
    resolve_dtype,
    resolve_file,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REPO = "xswu/HPSv2"
VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
ARCHITECTURE = "ViT-H-14"
ARCH_FILE = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPTIONS = ("version", "preprocess")

TINY_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def longest_side_pad(image: np.ndarray, size: int) -> torch.Tensor:
    """HPSv2's eval transform without normalisation: ``(H, W, 3) uint8`` ->
    ``(3, size, size)`` float32 in about [0, 1] (bicubic may overshoot slightly), the
    longest side resized to ``size`` and the other padded centred with black."""
    import torch
    import torchvision.transforms.functional as tvf
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0  # (3,H,W)
    h, w = int(x.shape[1]), int(x.shape[2])
    scale = size / float(max(h, w))
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        x = tvf.resize(x, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        # padding order: left, top, right, bottom
        x = tvf.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0.0)
    return x


def preprocess(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Canonical images -> ``(N, 3, size, size)`` normalised pixel values (the reference:
    one image at a time, on the CPU)."""
    import torch

    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    if not images:
        return torch.zeros((0, 3, size, size))
    return torch.stack([(longest_side_pad(img, size) - mean) / std for img in images])


def preprocess_tensor(images: Sequence[np.ndarray], size: int, device: str) -> torch.Tensor:
    """:func:`preprocess` as batched tensor operations on ``device``: the same operations
    (ToTensor, antialiased bicubic resize of the float tensor, centred black pad, OpenAI
    normalisation), one resize per group of images of one size. Equal to
    :func:`preprocess` up to float rounding (tests/models/test_tensor_preprocess.py);
    ``(N, 3, size, size)`` float32 on ``device``."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    mean = torch.tensor(OPENAI_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=device).view(1, 3, 1, 1)
    # Black padding is 0 before normalisation: fill with the normalised 0, then paste.
    out = ((0.0 - mean) / std).expand(len(images), 3, size, size).contiguous()
    for (h, w), idx in by_size(images).items():
        x = stack_on(images, idx, device) / 255.0  # (B, 3, h, w) in [0, 1]
        scale = size / float(max(h, w))
        new_h, new_w = round(h * scale), round(w * scale)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out[idx, :, top : top + new_h, left : left + new_w] = (x - mean) / std
    return out


@dataclass(eq=False, repr=False)
class HPSv2(Scorer):
    model: Any  # open_clip CLIP, eval, on device
    tokenizer: Any  # open_clip SimpleTokenizer
    image_size: int
    device: str
    dtype: Any
    info: ModelInfo
    preprocess: str = "pil"  # "pil": preprocess (the reference); "tensor": preprocess_tensor

    def __post_init__(self) -> None:
        self.max_resolution = self.image_size

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixel values on the model's device and dtype."""
        if self.preprocess == "tensor":
            x = preprocess_tensor(images, self.image_size, self.device)
        else:
            x = preprocess(images, self.image_size)
        return x.to(self.device, self.dtype)

    def features(
        self, images: Sequence[np.ndarray], prompts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and text features, ``(N, embed_dim)`` float32 each."""
        import torch

        dim = int(self.model.text_projection.shape[1])
        img_out, txt_out = [torch.zeros((0, dim))], [torch.zeros((0, dim))]
        with torch.inference_mode():
            for sl in iter_chunks(images, self.max_batch, self.max_batch_pixels):
                pixels = self.pixels(images[sl])
                distinct, index = unique_texts(prompts[sl])  # each prompt encoded once
                tokens = self.tokenizer(distinct).to(self.device)  # (U, 77) int64
                img = self.model.encode_image(pixels).float()  # (B, D)
                txt = self.model.encode_text(tokens).float()[index]  # (B, D)
                img_out.append((img / img.norm(dim=-1, keepdim=True)).cpu())
                txt_out.append((txt / txt.norm(dim=-1, keepdim=True)).cpu())
        return torch.cat(img_out), torch.cat(txt_out)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        imgs = canonical(images)
        img, txt = self.features(imgs, prompts)
        return (img * txt).sum(dim=-1).double().numpy()  # (N,) cosine


def model_config(directory: Path | None) -> tuple[str, dict[str, Any]]:
    """The open_clip architecture: ``directory/open_clip_config.json`` if present (tiny
    profile), else open_clip's built-in ViT-H-14."""
    import open_clip

    if directory is not None and (directory / ARCH_FILE).is_file():
        path = directory / ARCH_FILE
        raw = json.loads(path.read_text())
        cfg = raw.get("model_cfg")
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected an object with a 'model_cfg' entry")
        log.info("hpsv2: architecture from %s (not %s)", path, ARCHITECTURE)
        return str(path), cfg
    cfg = open_clip.get_model_config(ARCHITECTURE)
    assert cfg is not None, "open_clip lost its built-in ViT-H-14 config"
    return ARCHITECTURE, cfg


def build_model(cfg: dict[str, Any], device: str = "meta") -> Any:
    """open_clip ``CLIP(**cfg)`` on ``device`` (``meta``: no memory, no init)."""
    import open_clip
    import torch

    if cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "custom_text" in cfg:
        raise ValueError("hpsv2: only the standard open_clip CLIP text tower is supported")
    with torch.device(device):
        return open_clip.CLIP(**cfg, output_dict=True)


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """The checkpoint of the chosen version (and the tiny profile's architecture file,
    read only when present)."""
    return [(opts.source or REPO, [VERSIONS[_version(opts)], optional(ARCH_FILE)])]


def _version(opts: LoadOptions) -> str:
    version = option(opts.options, "version", str, "v2.0")
    if version not in VERSIONS:
        raise ValueError(
            f"hpsv2: option 'version' must be one of {sorted(VERSIONS)}, got {version!r}"
        )
    return str(version)


def load(opts: LoadOptions) -> HPSv2:
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    check_options("hpsv2", opts.options, OPTIONS)
    version = _version(opts)
    mode = preprocess_mode("hpsv2", opts.options)
    name = "hpsv2" if version == "v2.0" else "hpsv21"
    device = check_device(opts.device)
    dtype = resolve_dtype(opts)
    source = opts.source or REPO
    resolved = resolve_file(source, VERSIONS[version], opts)
    arch, cfg = model_config(resolved.path.parent)
    checkpoint = torch.load(resolved.path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsNotFoundError(
            f"{resolved.path} is not an HPSv2 checkpoint (expected a dict with 'state_dict')"
        )
    model = build_model(cfg, "meta")
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{resolved.path} does not match the open_clip {arch} architecture: {exc}"
        ) from exc
    # The causal mask is a non-persistent buffer: not in the checkpoint, still on meta.
    model.attn_mask = _causal_mask(model)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"hpsv2: tensors not provided by {resolved.path}: {leftover}")
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = SimpleTokenizer(context_length=int(cfg["text_cfg"].get("context_length", 77)))
    image_size = int(cfg["vision_cfg"]["image_size"])
    info = model_info(name, "scorer", opts, [resolved], device, dtype)
    return HPSv2(model, tokenizer, image_size, device, dtype, info, mode)


def _causal_mask(model: Any) -> torch.Tensor:
    import torch

    n = int(model.context_length)
    return torch.full((n, n), float("-inf")).triu_(1)  # (77, 77) additive mask


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/xswu/HPSv2/{HPS_v2_compressed.pt, HPS_v2.1_compressed.pt}`` (random
    tiny CLIPs, different seeds per version) + ``open_clip_config.json`` naming the
    tiny architecture."""
    import torch

    target = out_dir / REPO
    target.mkdir(parents=True, exist_ok=True)
    (target / ARCH_FILE).write_text(json.dumps({"model_cfg": TINY_MODEL_CFG}, indent=2) + "\n")
    for offset, filename in enumerate(VERSIONS.values()):
        with seeded(seed * 1000 + offset):
            model = build_model(TINY_MODEL_CFG, "cpu")
        torch.save({"state_dict": model.state_dict()}, target / filename)
