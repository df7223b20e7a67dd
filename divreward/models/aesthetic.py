"""The LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor),
as Flow-GRPO and GARDO use it (``flow_grpo/aesthetic_scorer.py``).

score_i = MLP(e_i / ||e_i||), e_i = CLIP ViT-L/14 image features (``get_image_features``)

- CLIP: transformers ``CLIPModel`` ``openai/clip-vit-large-patch14`` (option
  ``clip_source``) with its own processor (shortest side 224 bicubic, centre crop, OpenAI
  mean/std), loaded and preprocessed by :mod:`divreward.models._clip_common`.
- MLP, no activations: Linear 768->1024, Dropout(0.2), ->128, Dropout(0.2), ->64,
  Dropout(0.1), ->16, ->1 in eval mode; checkpoint keys ``layers.{0,2,4,6,7}.{weight,bias}``
  loaded strictly (every key and shape must match). The output is raw (about 1-10 on
  real images), unscaled, as in Flow-GRPO.
- Weights: the published ``sac+logos+ava1-l14-linearMSE.pth``; the registry source is
  the hub copy ``trl-lib/ddpo-aesthetic-predictor`` file ``aesthetic-model.pth`` (the
  same upload, renamed, used by TRL's DDPO); a local ``.pth`` file or a directory holding
  ``aesthetic-model.pth`` works as the source too. Read with ``torch.load(weights_only=True)``.

The prompt is not used (one score per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from divreward.models import _clip_common as clip
from divreward.models._checkpoint import check_keys_and_shapes, module_shapes
from divreward.models._common import canonical, check_options, option, seeded
from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import Resolved, is_hub_id, model_info, resolve_file

if TYPE_CHECKING:
    import torch

REPO = "trl-lib/ddpo-aesthetic-predictor"
MLP_FILE = "aesthetic-model.pth"
CLIP_SOURCE = "openai/clip-vit-large-patch14"
#: Hidden sizes of the published head (input = CLIP's projection dim, 768 for ViT-L/14).
HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)
OPTIONS = ("clip_source", "preprocess")


def build_mlp(in_dim: int) -> torch.nn.Sequential:
    """The head in the published layout (``layers.{0,2,4,6,7}`` once wrapped in ``layers``)."""
    import torch.nn as nn

    h1, h2, h3, h4 = HIDDEN
    d1, d2, d3 = DROPOUT
    return nn.Sequential(
        nn.Linear(in_dim, h1),
        nn.Dropout(d1),
        nn.Linear(h1, h2),
        nn.Dropout(d2),
        nn.Linear(h2, h3),
        nn.Dropout(d3),
        nn.Linear(h3, h4),
        nn.Linear(h4, 1),
    )


def head_module(in_dim: int) -> torch.nn.Module:
    """The head held as ``layers``, so its state dict keys are the published ones."""
    import torch.nn as nn

    module = nn.Module()
    module.layers = build_mlp(in_dim)
    return module


def load_mlp(path: Path, in_dim: int, device: str) -> torch.nn.Module:
    """The head from a published-layout file, strictly (errors name the keys)."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic: {path} holds a {type(state).__name__}, not a state dict")
    mlp = head_module(in_dim)
    found = {k: tuple(v.shape) for k, v in state.items()}
    check_keys_and_shapes(module_shapes(mlp), found, model="aesthetic MLP", path=str(path))
    mlp.load_state_dict(state, strict=True)
    return mlp.to(device).eval()


class Aesthetic(Scorer):
    def __init__(self, bundle: clip.ClipBundle, mlp: torch.nn.Module, info: ModelInfo) -> None:
        self.bundle = bundle
        self.mlp = mlp
        self.info = info
        self.max_resolution = bundle.max_resolution

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        import torch

        check_prompts(images, prompts)
        feats = clip.image_features(
            self.bundle, canonical(images), self.max_batch, self.max_batch_pixels
        )  # (N, 768) float32, unit rows
        with torch.inference_mode():
            out = self.mlp.layers(feats.to(self.bundle.device))  # type: ignore[operator]
        return out[:, 0].double().cpu().numpy()


def _head_file(opts: LoadOptions) -> Resolved:
    assert opts.source is not None
    path = Path(opts.source).expanduser()
    if path.is_file():
        return Resolved(path, str(path), None, False)
    return resolve_file(opts.source, MLP_FILE, opts)


def load(opts: LoadOptions) -> Aesthetic:
    check_options("aesthetic", opts.options, OPTIONS)
    clip_src = option(opts.options, "clip_source", str, CLIP_SOURCE)
    head = _head_file(opts)
    bundle = clip.load_clip(replace(opts, source=clip_src), None, "aesthetic")
    in_dim = int(bundle.model.config.projection_dim)
    mlp = load_mlp(head.path, in_dim, bundle.device)
    files = [head, *bundle.resolved]
    info = model_info("aesthetic", "scorer", opts, files, bundle.device, bundle.dtype)
    return Aesthetic(bundle, mlp, info)


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """(repo, files) that :func:`load` reads from the hub: the head and the CLIP (what
    the zoo's CLIP loader reads)."""
    clip_src = option(opts.options, "clip_source", str, CLIP_SOURCE)
    pairs = [
        (opts.source or REPO, [MLP_FILE]),
        *clip.hub_files(replace(opts, source=clip_src), None),
    ]
    return [(repo, files) for repo, files in pairs if is_hub_id(repo)]  # local paths: nothing


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/openai/clip-vit-large-patch14/`` (random tiny CLIP, projection 16, 32 px
    processor) and ``out_dir/trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth`` (a
    random head with the published key names and hidden sizes, input 16)."""
    import torch

    target = out_dir / CLIP_SOURCE
    clip.write_tiny_clip(target, seed, float(np.log(100.0)))
    clip.write_processor(target, side=32)
    with seeded(seed + 1):
        mlp = head_module(16)
    head = out_dir / REPO
    head.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), head / MLP_FILE)
