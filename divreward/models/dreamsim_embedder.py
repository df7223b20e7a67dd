"""DreamSim perceptual embeddings (Fu et al. 2023) through the unmodified ``dreamsim``
package (0.2.1).

embed(images)[i] = dreamsim's ``model.embed(x_i)``: the concatenated backbone features
(``ensemble``: DINO ViT-B/16 CLS 768 + CLIP ViT-B/16 512 + OpenCLIP ViT-B/16 512 = 1792;
single-branch types 768 or 512), LoRA-tuned, then mean-centred and L2-normalised by
dreamsim (``normalize_embeds=True``); rows are re-normalised in float32 here. The
DreamSim distance is ``1 - cos``.

Preprocessing (dreamsim's own): RGB -> resize to 224 x 224 (**squash**, bicubic, PIL)
-> ToTensor, values in [0, 1]; each branch normalises with its own mean/std inside.
Option ``preprocess: tensor``: the same as batched tensor operations on the model's
device (:func:`preprocess_tensor`).

Weights: ``dreamsim(pretrained=True, device=..., cache_dir=..., dreamsim_type=...)``
downloads its release zips (and, for DINO branches, the DINO code and weights through
``torch.hub``) into ``cache_dir`` unless they are already there. The cache directory is
always explicit: the model source when it is a directory, else ``LoadOptions.cache_dir``,
else ``<weights_dir>/dreamsim``, else ``~/.cache/divreward/dreamsim``. With a weights
directory, or with ``HF_HUB_OFFLINE=1``/``DIVREWARD_OFFLINE=1``, nothing is downloaded
and missing files are an error naming each of them. dreamsim sets torch.hub's global
directory; it is restored after loading.

Tiny profile: ``build_tiny`` writes a cache directory the unmodified ``dreamsim()`` loads:
random backbone files, a minimal ``facebookresearch_dino_main/hubconf.py`` with the
DINO weights in ``checkpoints/``, and peft LoRA folders. The DINO branch is narrow
(width 32, 12 blocks: dreamsim hooks block 11). The CLIP and OpenCLIP branches cannot
be narrowed: dreamsim builds them with a hard-coded ``vit_base`` (width 768, 12 blocks)
and loads strictly. So their random weights are full ViT-B shapes, each tensor a window
of one shared 4M-float Gaussian pool (stored once per file, ~16 MB instead of 343 MB),
and the tiny cache carries ``divreward_dreamsim.json`` (read **only if present**;
``{"image_size": 32}``) so the tiny profile feeds 32 x 32 images instead of 224.
Tiny types: ``ensemble`` and ``dino_vitb16``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
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
)
from divreward.models._tensor_preprocess import (
    by_size,
    preprocess_mode,
    resize_like_pil,
    stack_on,
)
from divreward.models.base import Embedder, LoadOptions, ModelInfo
from divreward.models.weights import (
    Resolved,
    WeightsNotFoundError,
    check_device,
    find_tiny_root,
    model_info,
    resolve_dtype,
    weights_root,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "dreamsim"
OPTIONS = ("dreamsim_type", "preprocess")
IMAGE_SIZE = 224
TINY_FILE = "divreward_dreamsim.json"
DINO_HUB = "facebookresearch_dino_main"
DINO_WEIGHTS = "checkpoints/dino_vitbase16_pretrain.pth"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"

# The files dreamsim 0.2.1 checks before deciding to download (model.download_weights),
# plus what its torch.hub branches read. LoRA folders hold adapter_config.json and the
# adapter weights.
LORA_TAG = {
    "ensemble": "ensemble_lora",
    "dino_vitb16": "dino_vitb16_single_lora",
    "dinov2_vitb14": "dinov2_vitb14_single_lora",
    "open_clip_vitb32": "open_clip_vitb32_single_lora",
    "clip_vitb32": "clip_vitb32_single_lora",
    "synclr_vitb16": "synclr_vitb16_single_lora",
}
BACKBONES = {
    "ensemble": [
        "dino_vitb16_pretrain.pth",
        "clip_vitb16_pretrain.pth.tar",
        "open_clip_vitb16_pretrain.pth.tar",
        f"{DINO_HUB}/hubconf.py",
        DINO_WEIGHTS,
    ],
    "dino_vitb16": ["dino_vitb16_pretrain.pth", f"{DINO_HUB}/hubconf.py", DINO_WEIGHTS],
    "dinov2_vitb14": ["dinov2_vitb14_pretrain.pth"],
    "open_clip_vitb32": ["open_clip_vitb32_pretrain.pth.tar"],
    "clip_vitb32": ["clip_vitb32_pretrain.pth.tar"],
    "synclr_vitb16": ["synclr_vit_b_16.pth"],
}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TINY_TYPES = ("ensemble", "dino_vitb16")


def required_files(dreamsim_type: str) -> list[str]:
    return [*BACKBONES[dreamsim_type], f"{LORA_TAG[dreamsim_type]}/adapter_config.json"]


def squash_resize(image: np.ndarray, size: int) -> torch.Tensor:
    """dreamsim's preprocessing: ``(H, W, 3) uint8`` -> PIL bicubic resize to
    ``size x size`` (aspect ratio not kept) -> ``(3, size, size)`` float32 in [0, 1]."""
    import torch
    from PIL import Image

    pil = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(pil, dtype=np.float32) / 255.0  # (size, size, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def preprocess_tensor(images: Sequence[np.ndarray], size: int, device: str) -> torch.Tensor:
    """:func:`squash_resize` for a batch, as tensor operations on ``device``: one
    antialiased bicubic resize (PIL's kernel, rounded to uint8 levels) per group of images
    of one size, then ``/ 255``. Within 2 uint8 levels per pixel of the reference
    (tests/models/test_tensor_preprocess.py); ``(N, 3, size, size)`` float32 on
    ``device``."""
    import torch

    out = torch.empty((len(images), 3, size, size), device=device)
    for _, idx in by_size(images).items():
        out[idx] = resize_like_pil(stack_on(images, idx, device), (size, size)) / 255.0
    return out


@dataclass(eq=False, repr=False)
class DreamSimEmbedder(Embedder):
    model: Any  # dreamsim's PerceptualModel (peft-wrapped), eval, on device
    image_size: int
    dim: int
    device: str
    dtype: Any
    info: ModelInfo
    preprocess: str = "pil"  # "pil": squash_resize (the reference); "tensor": preprocess_tensor

    def __post_init__(self) -> None:
        self.max_resolution = self.image_size

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, S, S)`` values in [0, 1] on the model's device and dtype."""
        import torch

        if self.preprocess == "tensor":
            x = preprocess_tensor(images, self.image_size, self.device)
        else:
            x = torch.stack([squash_resize(img, self.image_size) for img in images])
        return x.to(self.device, self.dtype)

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        imgs = canonical(images)
        out = [np.zeros((0, self.dim), np.float32)]
        with torch.inference_mode():
            for sl in iter_chunks(imgs, self.max_batch, self.max_batch_pixels):
                emb = self.model.embed(self.pixels(imgs[sl])).float()  # (B, dim)
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out.append(emb.cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def cache_dir_for(opts: LoadOptions, dreamsim_type: str = "ensemble") -> tuple[Path, bool]:
    """The explicit dreamsim cache directory, and whether downloading is allowed: the
    source directory, else ``cache_dir``, else ``<weights_dir>/dreamsim`` when it holds
    ``dreamsim_type``'s files, else the default cache (as the hub-id models resolve)."""
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "DIVREWARD_OFFLINE")
    )
    source = opts.source or DEFAULT_SOURCE
    if source != DEFAULT_SOURCE:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(
                f"dreamsim: source {source!r} is neither 'dreamsim' nor an existing "
                "dreamsim cache directory"
            )
        return path, False
    if opts.cache_dir:
        return Path(opts.cache_dir).expanduser(), not offline
    root = weights_root(opts)
    if root is not None and all(
        (root / "dreamsim" / f).is_file() for f in required_files(dreamsim_type)
    ):
        return root / "dreamsim", False
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return home / "divreward" / "dreamsim", not offline


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """None: dreamsim's checkpoints are its GitHub release files (and DINO's torch.hub
    files), fetched by its own loader into :func:`cache_dir_for`'s directory; see
    :func:`pull`."""
    return []


def local_files(opts: LoadOptions) -> tuple[Path, list[str], list[str]]:
    """Offline: the cache directory the loader would use, and which of the type's
    required files are present and missing there."""
    dreamsim_type = option(opts.options, "dreamsim_type", str, "ensemble")
    cache, _ = cache_dir_for(opts, dreamsim_type)
    files = required_files(dreamsim_type)
    present = [f for f in files if (cache / f).is_file()]
    return cache, present, [f for f in files if f not in present]


def pull(opts: LoadOptions, weights_dir: Path | None) -> Path:
    """Fetch the checkpoints of ``opts``' dreamsim type the only way dreamsim offers: by
    loading it once (on the CPU, downloading what is missing) into
    ``<weights_dir>/dreamsim``, else the directory the loader uses. Returns it."""
    from dataclasses import replace

    if weights_dir is not None:
        cache = weights_dir / "dreamsim"
    else:
        cache = cache_dir_for(replace(opts, weights_dir=None), "ensemble")[0]
    cache.mkdir(parents=True, exist_ok=True)
    load(replace(opts, source=None, cache_dir=str(cache), device="cpu", dtype=None))
    return cache


def load(opts: LoadOptions) -> DreamSimEmbedder:
    import torch
    from dreamsim import dreamsim

    check_options("dreamsim", opts.options, OPTIONS)
    dreamsim_type = option(opts.options, "dreamsim_type", str, "ensemble")
    mode = preprocess_mode("dreamsim", opts.options)
    if dreamsim_type not in LORA_TAG:
        raise ValueError(
            f"dreamsim: option 'dreamsim_type' must be one of {sorted(LORA_TAG)}, "
            f"got {dreamsim_type!r}"
        )
    device = check_device(opts.device)
    # DreamSim runs in fp32 unless asked otherwise (its reference does; it is small).
    dtype = resolve_dtype(opts) if opts.dtype is not None else torch.float32
    cache, may_download = cache_dir_for(opts, dreamsim_type)
    missing = [f for f in required_files(dreamsim_type) if not (cache / f).is_file()]
    if missing and not may_download:
        root = weights_root(opts)
        dirs = list(dict.fromkeys([*([root / "dreamsim"] if root else []), cache]))
        places = [
            f"{d}: missing "
            + ", ".join(str(d / f) for f in required_files(dreamsim_type) if not (d / f).is_file())
            for d in dirs
        ]
        raise WeightsNotFoundError(
            f"dreamsim ({dreamsim_type}) weights not found; looked in: " + "; ".join(places),
            "Fetch them with `divreward weights pull dreamsim` on a machine with internet "
            "access (`--weights-dir DIR`: into DIR/dreamsim)",
            repo_id="dreamsim",
            looked=[str(d) for d in dirs],
        )
    image_size = IMAGE_SIZE
    if (cache / TINY_FILE).is_file():
        image_size = int(json.loads((cache / TINY_FILE).read_text())["image_size"])
        log.info("dreamsim: image size %d from %s", image_size, cache / TINY_FILE)
    previous_hub = torch.hub.get_dir()
    # dreamsim and torch.hub print progress ("Using cached ...", "Using cache found in")
    # on stdout/stderr: keep it out of the caller's output (a CLI table, a service log)
    # and log it instead.
    # Its known warnings (torch's deprecated weight_norm in the DINO head, peft's "Already
    # found a peft_config" from dreamsim wrapping the model twice) are logged the same way.
    captured = io.StringIO()
    caught: list[warnings.WarningMessage] = []
    try:
        with (
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            model, _ = dreamsim(
                pretrained=True,
                device=device,
                cache_dir=str(cache),
                normalize_embeds=True,
                dreamsim_type=dreamsim_type,
            )
    except (OSError, RuntimeError, ValueError) as exc:  # download/hub/load failures
        raise WeightsNotFoundError(
            f"dreamsim ({dreamsim_type}) could not be loaded from {cache}: "
            f"{type(exc).__name__}: {exc}".replace("\n", " "),
            "Fetch its files with `divreward weights pull dreamsim`",
            repo_id="dreamsim",
            looked=[str(cache)],
        ) from exc
    finally:
        torch.hub.set_dir(previous_hub)
        if captured.getvalue().strip():
            log.info("dreamsim: %s", captured.getvalue().strip())
        for w in caught:
            log.info("dreamsim: %s: %s", w.category.__name__, w.message)
    model = model.to(device=device, dtype=dtype).eval()
    # The CLIP branches keep their projection as a plain tensor (not a parameter), so
    # .to(dtype) above does not reach it.
    for extractor in model.base_model.model.extractor_list:
        if isinstance(getattr(extractor, "proj", None), torch.Tensor):
            extractor.proj = extractor.proj.to(device=device, dtype=dtype)
    adapter = _adapter_file(cache / LORA_TAG[dreamsim_type])
    with torch.inference_mode():
        probe = torch.zeros((1, 3, image_size, image_size), device=device, dtype=dtype)
        dim = int(model.embed(probe).shape[-1])
    resolved = Resolved(adapter, str(cache), None, find_tiny_root(cache) is not None)
    info = model_info("dreamsim", "embedder", opts, [resolved], device, dtype)
    return DreamSimEmbedder(model, image_size, dim, device, dtype, info, mode)


def _adapter_file(folder: Path) -> Path:
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(folder / n) for n in ADAPTER_FILES)
    raise WeightsNotFoundError(f"dreamsim LoRA weights not found: none of {looked}")


# --- tiny profile -----------------------------------------------------------------------

TINY_DINO = {"embed_dim": 32, "depth": 12, "num_heads": 2}
_POOL_SIZE = 1 << 22  # 4M floats: larger than ViT-B's biggest tensor (768 x 3072)

_HUBCONF = '''"""Tiny stand-in for facebookresearch/dino:main's hubconf.py, written by
`divreward make-tiny-models` for DreamSim's tiny profile: a random DINO-style ViT of
width {embed_dim} with {depth} blocks. Not DINO. For testing the machinery only."""

from functools import partial

import torch
from dreamsim.feature_extraction.vision_transformer import VisionTransformer

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = VisionTransformer(
        patch_size=16, embed_dim={embed_dim}, depth={depth}, num_heads={num_heads},
        mlp_ratio=4, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0, **kwargs,
    )
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(
            url="{url}", map_location="cpu", weights_only=True,
        )
        model.load_state_dict(state_dict, strict=True)
    return model
'''


def _pooled(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Replace every large float tensor of a ViT-B state dict by a window of one shared
    N(0, 0.02²) pool (torch.save stores the pool once); small tensors (LayerNorm, biases)
    keep their init values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL_SIZE, generator=gen) * 0.02
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value.is_floating_point() and value.numel() >= 4096:
            start = int(torch.randint(0, _POOL_SIZE - value.numel() + 1, (1,), generator=gen))
            out[key] = pool[start : start + value.numel()].view(value.shape)
        else:
            out[key] = value.detach().clone()
    return out


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/dreamsim/``: a dreamsim cache for the ``ensemble`` and ``dino_vitb16``
    types (see the module docstring)."""
    import torch
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer, vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    cache = out_dir / "dreamsim"
    (cache / DINO_HUB).mkdir(parents=True, exist_ok=True)
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    (cache / TINY_FILE).write_text(json.dumps({"image_size": 32}) + "\n")
    (cache / DINO_HUB / "hubconf.py").write_text(_HUBCONF.format(url=DINO_URL, **TINY_DINO))
    d = TINY_DINO["embed_dim"]
    with seeded(seed):
        dino = VisionTransformer(patch_size=16, qkv_bias=True, num_classes=0, **TINY_DINO)
        torch.save(dino.state_dict(), cache / DINO_WEIGHTS)
        # dreamsim reads a DINO projection head from the full training checkpoint
        # ('student' weights); it is only used for the 'embedding' feature, never for
        # DINO's 'cls' feature, and its tensors are assigned whatever their shape.
        head = {
            "module.head.mlp.0.weight": torch.randn(16, d) * 0.02,
            "module.head.mlp.0.bias": torch.zeros(16),
            "module.head.mlp.2.weight": torch.randn(16, 16) * 0.02,
            "module.head.mlp.2.bias": torch.zeros(16),
            "module.head.mlp.4.weight": torch.randn(8, 16) * 0.02,
            "module.head.mlp.4.bias": torch.zeros(8),
            "module.head.last_layer.weight": torch.randn(32, 8) * 0.02,
        }
        torch.save({"student": head}, cache / "dino_vitb16_pretrain.pth")
        vit_b = vit_base(patch_size=16).state_dict()
    for offset, name in enumerate(("clip_vitb16", "open_clip_vitb16")):
        state = _pooled(vit_b, seed * 1000 + 10 + offset)
        # dreamsim's CLIP-as-DINO conversion turns pos_drop into CLIP's ln_pre LayerNorm.
        state["pos_drop.weight"] = torch.ones(768)
        state["pos_drop.bias"] = torch.zeros(768)
        gen = torch.Generator().manual_seed(seed * 1000 + 20 + offset)
        state["proj"] = torch.randn(768, 512, generator=gen) * 768**-0.5
        torch.save({"state_dict": state}, cache / f"{name}_pretrain.pth.tar")
    previous_hub = torch.hub.get_dir()
    try:
        for offset, dreamsim_type in enumerate(TINY_TYPES):
            quiet = io.StringIO()
            with (
                seeded(seed * 1000 + 30 + offset),
                contextlib.redirect_stdout(quiet),
                contextlib.redirect_stderr(quiet),
                warnings.catch_warnings(),
            ):
                # dreamsim's DINO head uses torch's deprecated weight_norm: known, harmless.
                warnings.filterwarnings("ignore", ".*weight_norm.*", FutureWarning)
                base = PerceptualModel(
                    **dreamsim_args["model_config"][dreamsim_type],
                    device="cpu",
                    load_dir=str(cache),
                    normalize_embeds=True,
                )
                lora = LoraConfig(
                    r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["qkv"]
                )
                peft_model = get_peft_model(base, lora)
                # peft initialises lora_B to zero (a no-op adapter); make it act.
                for pname, param in peft_model.named_parameters():
                    if "lora_B" in pname:
                        torch.nn.init.normal_(param, std=0.02)
                peft_model.save_pretrained(str(cache / LORA_TAG[dreamsim_type]))
    finally:
        torch.hub.set_dir(previous_hub)
