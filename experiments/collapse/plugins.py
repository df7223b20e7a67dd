"""The toy rewards as plugins (``module:factory``), served like any built-in model.

- ``experiments.collapse.plugins:quality_scorer`` — a quality scorer that mildly prefers some
  modes and rewards clean images of any mode:
  ``Q(x) = scale * (sum_m p(m | x) w_m + crisp_weight * crispness(x))`` with ``p`` the
  mode classifier's softmax, ``w_m = 1`` for the preferred modes and ``1 - margin`` for
  the others, and ``crispness`` the mean over pixels of ``exp(-d^2 / (2 * 0.2^2))``, d the
  RGB distance of the pixel to the nearest colour of the toy palette (background and
  the four shape colours): ~0.97 on clean renders, lower on blurred or noisy samples.
  Options: ``model_dir`` (a toy directory), ``preferred`` (mode indices, default [0]),
  ``margin`` (default 0.2), ``scale`` (default 1.0), ``crisp_weight`` (default 0.0),
  ``net`` (``classifier``, the default, or ``embedder``: the same formula read by the
  embedder's network, also trained on the mode labels: an independent auxiliary scorer).
- ``experiments.collapse.plugins:embedder`` — the diversity embedding: the unit-normalised
  64-d penultimate features of a small CNN trained on the mode labels (a second network,
  other seed and data than the classifier). Options: ``model_dir``.
- ``experiments.collapse.plugins:mode_classifier`` — the mode classifier itself as a scorer whose
  score is the predicted mode index (for labelling through a service; the experiment
  labels locally with the same network).

Each factory takes the :class:`~divreward.models.base.LoadOptions` a registry loader gets;
``opts.options`` holds the options above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from divreward.models.base import Embedder, LoadOptions, ModelInfo, Scorer, check_prompts
from experiments.collapse.data import _BACKGROUND, COLOURS, SIZE
from experiments.collapse.pretrain import load_cnn, load_meta

__all__ = [
    "ToyEmbedder",
    "ToyModeClassifier",
    "ToyQualityScorer",
    "embedder",
    "images_to_tensor",
    "mode_classifier",
    "quality_scorer",
]


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 images -> (N, 3, 16, 16) float32 in [0, 1] (area-resized)."""
    if len(images) == 0:
        return torch.zeros((0, 3, SIZE, SIZE))
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"images[{i}]: expected (H, W, 3), got shape {arr.shape}")
        t = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        if t.shape[-2:] != (SIZE, SIZE):
            t = torch.nn.functional.interpolate(t, size=(SIZE, SIZE), mode="area")
        out.append(t)
    return torch.cat(out)


_PALETTE = torch.tensor([[_BACKGROUND] * 3, *[list(c) for c in COLOURS.values()]])


def crispness(x: torch.Tensor, width: float = 0.2) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N,): mean over pixels of exp(-d^2 / (2 width^2)), d the
    distance of the pixel's RGB to the nearest palette colour."""
    px = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 1, 3).float()
    d2 = ((px - _PALETTE.to(px)) ** 2).sum(-1).min(-1).values
    return torch.exp(-d2 / (2 * width**2)).mean(1)


def _model_dir(opts: LoadOptions, what: str) -> Path:
    raw = opts.options.get("model_dir") or opts.source
    if not raw:
        raise ValueError(f"{what}: option model_dir (a toy directory) is required")
    path = Path(str(raw)).expanduser()
    load_meta(path)  # a clear error when it is not a toy directory
    return path


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _unknown(opts: LoadOptions, allowed: set[str], what: str) -> None:
    bad = sorted(set(opts.options) - allowed)
    if bad:
        raise ValueError(f"{what}: unknown options {bad}; valid: {sorted(allowed)}")


class _ToyModel:
    max_resolution = SIZE

    def __init__(self, model_dir: Path, weights: str, kind: str, name: str, options: dict) -> None:
        meta = load_meta(model_dir)
        self.k = int(meta["k"])
        self.net = load_cnn(model_dir / weights, self.k)
        self.info = ModelInfo(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            source=str(model_dir),
            weights_hash=_hash(model_dir / weights),
            options=options,
        )

    @torch.no_grad()
    def _probs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        x = images_to_tensor(images)
        if x.shape[0] == 0:
            return np.zeros((0, self.k))
        return torch.softmax(self.net(x), dim=1).double().numpy()


class ToyQualityScorer(_ToyModel, Scorer):
    def __init__(
        self,
        model_dir: Path,
        preferred: Sequence[int],
        margin: float,
        scale: float = 1.0,
        crisp_weight: float = 0.0,
        net: str = "classifier",
    ) -> None:
        if net not in ("classifier", "embedder"):
            raise ValueError(f"toy quality: net must be 'classifier' or 'embedder', got {net!r}")
        super().__init__(
            model_dir,
            f"{net}.safetensors",
            "scorer",
            "toy_quality",
            {
                "preferred": list(preferred),
                "margin": margin,
                "scale": scale,
                "crisp_weight": crisp_weight,
                "net": net,
            },
        )
        bad = [m for m in preferred if not 0 <= int(m) < self.k]
        if bad:
            raise ValueError(f"toy quality: preferred modes {bad} outside 0..{self.k - 1}")
        if not 0 <= margin < 1:
            raise ValueError(f"toy quality: margin must be in [0, 1), got {margin}")
        if not scale > 0:
            raise ValueError(f"toy quality: scale must be > 0, got {scale}")
        if crisp_weight < 0:
            raise ValueError(f"toy quality: crisp_weight must be >= 0, got {crisp_weight}")
        self.scale, self.crisp_weight = scale, crisp_weight
        self.weights = np.full(self.k, 1.0 - margin)
        self.weights[[int(m) for m in preferred]] = 1.0

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        q = self._probs(images) @ self.weights
        if self.crisp_weight and len(images):
            q = q + self.crisp_weight * crispness(images_to_tensor(images)).double().numpy()
        return np.asarray(self.scale * q, dtype=np.float64)


class ToyModeClassifier(_ToyModel, Scorer):
    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir, "classifier.safetensors", "scorer", "toy_mode", {})

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        return self._probs(images).argmax(axis=1).astype(np.float64)


class ToyEmbedder(_ToyModel, Embedder):
    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir, "embedder.safetensors", "embedder", "toy_embedder", {})
        self.dim = int(self.net.fc.out_features)

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        x = images_to_tensor(images)
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        f = self.net.features(x).double()
        # ReLU features of an all-dark input can be all zero: give such rows a fixed
        # direction instead of dividing by zero.
        f[f.norm(dim=1) < 1e-12, 0] = 1.0
        return torch.nn.functional.normalize(f, dim=1).float().numpy()


def quality_scorer(opts: LoadOptions) -> ToyQualityScorer:
    allowed = {"model_dir", "preferred", "margin", "scale", "crisp_weight", "net"}
    _unknown(opts, allowed, "toy quality")
    preferred = opts.options.get("preferred", [0])
    if isinstance(preferred, int):
        preferred = [preferred]
    return ToyQualityScorer(
        _model_dir(opts, "toy quality"),
        [int(m) for m in preferred],
        float(opts.options.get("margin", 0.2)),
        float(opts.options.get("scale", 1.0)),
        float(opts.options.get("crisp_weight", 0.0)),
        str(opts.options.get("net", "classifier")),
    )


def embedder(opts: LoadOptions) -> ToyEmbedder:
    _unknown(opts, {"model_dir"}, "toy embedder")
    return ToyEmbedder(_model_dir(opts, "toy embedder"))


def mode_classifier(opts: LoadOptions) -> ToyModeClassifier:
    _unknown(opts, {"model_dir"}, "toy mode classifier")
    return ToyModeClassifier(_model_dir(opts, "toy mode classifier"))
