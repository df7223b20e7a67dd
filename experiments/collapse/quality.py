"""What the within-mode worlds share: a quality that is a weighted sum of named parts,
served as a plugin; learned regressors of those parts (GARDO's auxiliary rewards); and
the oracle policy.

- A world's quality is ``Q(x) = sum_j weight_j * part_j(x)``, each part in [0, 1]
  (:class:`PartsQuality`); the world says which parts are pixel oracles.
- :class:`PartsScorer` serves a :class:`PartsQuality` as a reward-service scorer (what
  the worlds' ``quality_scorer`` plugin factories return).
- :func:`train_regressor` fits a small CNN (:class:`~experiments.collapse.nets.ModeCNN` with
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
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, PrivateAttr
from safetensors.torch import load_file, save_file

from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from experiments.collapse.data import SIZE
from experiments.collapse.nets import FlowNet, ModeCNN
from experiments.collapse.plugins import _model_dir, images_to_tensor
from experiments.collapse.pretrain import (
    ToySettings,
    fit_cnn,
    load_cnn,
    load_meta,
    ode_sample,
)
from experiments.collapse.worlds import PluginSpec, PretrainedWorld

__all__ = [
    "CnnWorld",
    "PartsQuality",
    "PartsScorer",
    "RegressorScorer",
    "base_parts",
    "best_renders",
    "build_regressors",
    "check_options",
    "oracle_policy",
    "regressor_scorer",
    "train_regressor",
    "weights_from",
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
    opts: LoadOptions, what: str, names: tuple[str, ...], defaults: dict[str, float]
) -> RegressorScorer:
    """A world's regressor plugin: options ``model_dir`` (the world's directory),
    ``member`` (0 or 1) and the parts' weights (``defaults``: option name -> default)."""
    check_options(opts, {"model_dir", "member", *defaults}, what)
    weights = weights_from(opts, defaults, what)
    model_dir = _model_dir(opts, what)
    member = opts.options.get("member", 0)
    if member not in (0, 1):
        raise ValueError(f"{what}: option member must be 0 or 1, got {member!r}")
    path = model_dir / f"regressor{member}.safetensors"
    if not path.is_file():
        raise ValueError(f"{what}: {path} missing; rebuild the world's directory")
    options = {"member": member, **dict(zip(defaults, weights, strict=True))}
    return RegressorScorer(what.replace(" ", "_"), path, names, weights, options)


Classify = Callable[[torch.Tensor], np.ndarray]


def _candidates(
    s: ToySettings, n: int, seed: int, classify: Classify | None
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` renders of every mode (test split) and their labels; with ``classify``, a
    render the classifier puts in another mode is no candidate (label -1): a policy's
    samples count for the mode the classifier reads, and the best render of a mode must
    not be one whose score comes from the classifier mistaking it for another mode."""
    x, y = s.sample(n * s.k, seed, "test")
    labels = y.numpy().copy()
    if classify is not None:
        labels[np.asarray(classify(x)) != labels] = -1
    return x, labels


def oracle_policy(
    s: ToySettings,
    quality: Callable[[torch.Tensor], np.ndarray],
    n: int = 256,
    seed: int = 7,
    classify: Classify | None = None,
) -> dict[str, Any]:
    """Render ``n`` images of every mode (the world's test split; with ``classify``, those
    the classifier labels correctly), keep each mode's best-quality one, and score the
    even mixture of those K images.

    Returns ``best`` (per mode), ``mixture`` (their mean: the even mixture's reward, with
    coverage K), ``max`` (the best single mode's: what a policy collapsed onto it gets),
    ``ratio`` = mixture / max, ``data_mean`` (the mean over all renders: the data's, i.e.
    roughly the base model's, reward) and ``coverage`` (K).
    """
    x, labels = _candidates(s, n, seed, None)
    q = np.asarray(quality(x), dtype=np.float64)
    data_mean = float(q.mean())
    if classify is not None:
        x, labels = _candidates(s, n, seed, classify)
    best = np.array([q[labels == m].max() for m in range(s.k)])
    mixture, top = float(best.mean()), float(best.max())
    return {
        "best": best.tolist(),
        "mixture": mixture,
        "max": top,
        "ratio": mixture / top,
        "data_mean": data_mean,
        "coverage": int(s.k),
    }


def base_parts(
    model_dir: str | Path, quality: PartsQuality, n: int = 512, steps: int = 20, seed: int = 3
) -> dict[str, Any]:
    """Mean and standard deviation of each part and of Q over ``n`` ODE samples of the
    base model's generic prompt: how widely the base model spreads the quality."""
    flow = FlowNet.from_pretrained(str(Path(model_dir) / "flow"))
    x = ode_sample(flow, 0, n, steps, seed)
    p = quality.parts(x).double()
    q = quality(x)
    out: dict[str, Any] = {"quality": [float(q.mean()), float(q.std())]}
    for j, name in enumerate(quality.names):
        out[name] = [float(p[:, j].mean()), float(p[:, j].std())]
    return out


# ----------------------------------------------------------------------------- worlds


class CnnWorld(PretrainedWorld):
    """What the within-mode worlds share: a cached pre-trained directory built from a
    world's :class:`~experiments.collapse.pretrain.ToySettings` subclass, its ModeCNN
    classifier as the mode labeller, its ModeCNN embedder as the diversity embedding, a
    :class:`PartsQuality` quality with two regressors as GARDO's auxiliary scorers, p* =
    uniform, and the oracle policy's samples. A subclass gives :meth:`settings`,
    :meth:`quality`, :meth:`parts_quality` (in this process) and the regressor plugin
    path (``regressor_plugin``)."""

    regressor_plugin: ClassVar[str]

    toy_seed: int = Field(default=0, ge=0, description="Seed of the pre-trained world.")
    toy: dict[str, Any] = Field(
        default_factory=dict, description="Pre-training settings overrides."
    )
    within: float = Field(default=4.0, ge=0.0, description="Weight of the within-mode part.")
    between: float = Field(default=1.0, ge=0.0, description="Weight of the between-mode part.")

    _classifier: Any = PrivateAttr(default=None)

    @abstractmethod
    def settings(self) -> ToySettings: ...

    @abstractmethod
    def parts_quality(self) -> PartsQuality:
        """The quality as the plugin computes it, in this process."""

    def _weights(self) -> dict[str, float]:
        return {"within": self.within, "between": self.between}

    def aux_scorers(self) -> list[PluginSpec]:
        """The two quality regressors (:func:`build_regressors`)."""
        name = self.quality().name
        return [
            PluginSpec(
                name=f"{name}_reg{i}",
                plugin=self.regressor_plugin,
                options={"model_dir": str(self.model_dir), "member": i, **self._weights()},
            )
            for i in (0, 1)
        ]

    def embedder(self) -> PluginSpec:
        return PluginSpec(
            name="toy_embedder",
            plugin="experiments.collapse.plugins:embedder",
            options={"model_dir": str(self.model_dir)},
        )

    def mode_names(self) -> list[str]:
        return self.settings().mode_names()

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> np.ndarray:
        if self._classifier is None:
            self._classifier = load_cnn(self.model_dir / "classifier.safetensors", self.k)
        return np.asarray(self._classifier(images.float()).argmax(1).numpy(), dtype=np.int64)

    def ideal(self, base_histogram: np.ndarray) -> np.ndarray:
        """p* = uniform over the K modes: an even mixture of each mode's best images
        reaches near the maximum reward with full coverage (:func:`oracle_policy`)."""
        return np.full(len(base_histogram), 1.0 / len(base_histogram))

    def oracle_samples(self, n: int, seed: int) -> torch.Tensor:
        """An even mixture of each mode's best renders: the ceil(n / K) best-quality of
        256 renders of every mode, interleaved, the first ``n``."""
        return best_renders(self.settings(), self.parts_quality(), n, seed, self.classify)

    def oracle_policy(self, n: int = 256, seed: int = 7) -> dict[str, Any]:
        """:func:`oracle_policy` of this world (candidates: the renders its classifier
        reads as their mode)."""
        return oracle_policy(self.settings(), self.parts_quality(), n, seed, self.classify)

    def meta(self) -> dict[str, Any]:
        return {
            **load_meta(self.model_dir),
            "oracle_policy": self.oracle_policy(),
            "base_parts": base_parts(self.model_dir, self.parts_quality()),
        }


def best_renders(
    s: ToySettings,
    quality: Callable[[torch.Tensor], np.ndarray],
    n: int,
    seed: int,
    classify: Classify | None = None,
    pool: int = 256,
) -> torch.Tensor:
    """The ceil(n / K) best-quality of ``pool`` renders of every mode (test split; with
    ``classify``, among those it labels correctly), interleaved mode by mode (image i is
    of mode i mod K), the first ``n``."""
    x, labels = _candidates(s, pool, seed, classify)
    q = np.asarray(quality(x), dtype=np.float64)
    per = -(-n // s.k)
    best = []
    for m in range(s.k):
        idx = np.flatnonzero(labels == m)
        best.append(x[idx[np.argsort(-q[idx], kind="stable")[:per]]])
    if min(len(b) for b in best) < per:
        raise ValueError(f"oracle samples: fewer than {per} renders of some mode in {pool * s.k}")
    return torch.stack(best, dim=1).reshape(-1, *x.shape[1:])[:n]
