"""What the within-mode worlds share: a quality that is a weighted sum of named parts,
served as a plugin; learned regressors of those parts (GARDO's auxiliary rewards); and
the oracle policy.

- A world's quality is ``Q(x) = sum_j weight_j * part_j(x)``, each part in [0, 1]
  (:class:`PartsQuality`); the world says which parts are pixel oracles.
- :class:`PartsScorer` serves a :class:`PartsQuality` as a reward-service scorer (what
  the worlds' ``quality_scorer`` plugin factories return).
- :func:`train_regressor` fits a small CNN (:class:`~divreward.toy.nets.ModeCNN` with
  one output per part) to the parts on the world's own renders; :class:`RegressorScorer`
  serves ``sum_j weight_j * part_hat_j(x)``. Two of them (other seed, other data) are
  the auxiliary scorers for GARDO's uncertainty gate: a second opinion on the same
  preference that agrees with the oracle on the data and drifts off it (GARDO flags
  samples whose primary reward runs ahead of the auxiliary ones).
- :func:`oracle_policy`: the best-quality render of each mode among ``n`` per mode,
  scored; an even mixture of them against the best single mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.toy.data import SIZE
from divreward.toy.nets import ModeCNN
from divreward.toy.plugins import images_to_tensor
from divreward.toy.pretrain import ToySettings, fit_cnn

__all__ = [
    "PartsQuality",
    "PartsScorer",
    "RegressorScorer",
    "check_options",
    "oracle_policy",
    "train_regressor",
]

#: (N, 3, H, W) images in [0, 1] -> (N, P) parts in [0, 1]
PartsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PartsQuality:
    """``Q(x) = parts(x) @ weights``; ``names[j]`` names part j."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    parts: PartsFn

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        p = self.parts(x).double()
        return (p @ torch.tensor(self.weights, dtype=torch.float64)).numpy()


def check_options(opts: LoadOptions, allowed: set[str], what: str) -> None:
    bad = sorted(set(opts.options) - allowed)
    if bad:
        raise ValueError(f"{what}: unknown options {bad}; valid: {sorted(allowed)}")


def _weight(opts: LoadOptions, key: str, default: float, what: str) -> float:
    value = float(opts.options.get(key, default))
    if not value >= 0:
        raise ValueError(f"{what}: option {key} must be >= 0, got {value}")
    return value


def weights_from(opts: LoadOptions, defaults: dict[str, float], what: str) -> tuple[float, ...]:
    """The parts' weights: option ``<name>`` for each part (>= 0), else its default
    (other options are the caller's to check)."""
    return tuple(_weight(opts, k, v, what) for k, v in defaults.items())


class PartsScorer(Scorer):
    """A :class:`PartsQuality` as a reward-service scorer (uint8 images of any size,
    area-resized to 16x16 like the toy's other plugins)."""

    max_resolution = SIZE

    def __init__(self, name: str, quality: PartsQuality, source: str, options: dict) -> None:
        self.quality = quality
        self.info = ModelInfo(name=name, kind="scorer", source=source, options=options)

    @torch.no_grad()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        if len(images) == 0:
            return np.zeros(0)
        return np.asarray(self.quality(images_to_tensor(images)), dtype=np.float64)

    @torch.no_grad()
    def score_components(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], metadata: Any = None
    ) -> dict[str, np.ndarray]:
        """The score and each part (in [0, 1], before its weight)."""
        check_prompts(images, prompts)
        x = images_to_tensor(images)
        parts = self.quality.parts(x).double().numpy() if len(images) else np.zeros((0, 0))
        out = {"score": self.score(images, prompts)}
        for j, name in enumerate(self.quality.names):
            out[name] = parts[:, j] if len(images) else np.zeros(0)
        return out


def train_regressor(
    s: ToySettings, parts: PartsFn, n_parts: int, seed: int, split: str
) -> tuple[ModeCNN, float]:
    """A ModeCNN with ``n_parts`` outputs fitted (MSE) to ``parts`` of ``s.cnn_data`` of
    the world's images; returns it and its held-out mean absolute error per part."""
    torch.manual_seed(seed)
    x, _ = s.sample(s.cnn_data, seed, split)
    xt, _ = s.sample(2048, seed + 10_000, "test")
    with torch.no_grad():
        y, yt = parts(x).float(), parts(xt).float()
    net = fit_cnn(ModeCNN(n_parts), x, y, s.cnn_epochs, seed, torch.nn.functional.mse_loss)
    with torch.no_grad():
        mae = float((net(xt) - yt).abs().mean())
    return net, mae


def build_regressors(
    s: ToySettings, parts: PartsFn, n_parts: int, out: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Two regressors (``regressor0/1.safetensors``), other seeds and data splits."""
    maes = []
    for i, split in enumerate(("classifier", "embedder")):
        net, mae = train_regressor(s, parts, n_parts, s.seed + 300 + 100 * i, split)
        save_file(net.state_dict(), str(out / f"regressor{i}.safetensors"))
        maes.append(mae)
    log(f"quality regressors: held-out mean abs. error per part {np.round(maes, 4).tolist()}")
    return {"regressor_mae": maes}


class RegressorScorer(Scorer):
    """``sum_j weight_j * part_hat_j(x)``, part_hat a fitted regressor (clipped to [0, 1])."""

    max_resolution = SIZE

    def __init__(
        self,
        name: str,
        path: Path,
        names: tuple[str, ...],
        weights: tuple[float, ...],
        options: dict,
    ) -> None:
        self.net = ModeCNN(len(names))
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval()
        self.weights = torch.tensor(weights, dtype=torch.float64)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.info = ModelInfo(
            name=name, kind="scorer", source=str(path), weights_hash=digest, options=options
        )

    @torch.no_grad()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        if len(images) == 0:
            return np.zeros(0)
        p = self.net(images_to_tensor(images)).double().clamp(0.0, 1.0)
        return (p @ self.weights).numpy()


def regressor_scorer(
    opts: LoadOptions,
    name: str,
    model_dir: Path,
    names: tuple[str, ...],
    weights: tuple[float, ...],
) -> RegressorScorer:
    member = opts.options.get("member", 0)
    if member not in (0, 1):
        raise ValueError(f"{name}: option member must be 0 or 1, got {member!r}")
    path = model_dir / f"regressor{member}.safetensors"
    if not path.is_file():
        raise ValueError(f"{name}: {path} missing; rebuild the world's directory")
    options = {"member": member, **dict(zip(names, weights, strict=True))}
    return RegressorScorer(name, path, names, weights, options)


def oracle_policy(
    s: ToySettings, quality: Callable[[torch.Tensor], np.ndarray], n: int = 256, seed: int = 7
) -> dict[str, Any]:
    """Render ``n`` images of every mode (the world's test split), keep each mode's
    best-quality one, and score the even mixture of those K images.

    Returns ``best`` (per mode), ``mixture`` (their mean: the even mixture's reward, with
    coverage K), ``max`` (the best single mode's: what a policy collapsed onto it gets),
    ``ratio`` = mixture / max, ``data_mean`` (the mean over all renders: the data's, i.e.
    roughly the base model's, reward) and ``coverage`` (K).
    """
    x, y = s.sample(n * s.k, seed, "test")
    q = np.asarray(quality(x), dtype=np.float64)
    labels = y.numpy()
    best = np.array([q[labels == m].max() for m in range(s.k)])
    mixture, top = float(best.mean()), float(best.max())
    return {
        "best": best.tolist(),
        "mixture": mixture,
        "max": top,
        "ratio": mixture / top,
        "data_mean": float(q.mean()),
        "coverage": int(s.k),
    }


def base_parts(
    model_dir: str | Path, quality: PartsQuality, n: int = 512, steps: int = 20, seed: int = 3
) -> dict[str, Any]:
    """Mean and standard deviation of each part and of Q over ``n`` ODE samples of the
    base model's generic prompt: how widely the base model spreads the quality."""
    from divreward.toy.nets import FlowNet
    from divreward.toy.pretrain import ode_sample

    flow = FlowNet.from_pretrained(str(Path(model_dir) / "flow"))
    x = ode_sample(flow, 0, n, steps, seed)
    p = quality.parts(x).double()
    q = quality(x)
    out: dict[str, Any] = {"quality": [float(q.mean()), float(q.std())]}
    for j, name in enumerate(quality.names):
        out[name] = [float(p[:, j].mean()), float(p[:, j].std())]
    return out
