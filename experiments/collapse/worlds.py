"""Worlds of the collapse experiment: what a world must provide, and the worlds by name.

A **world** is a setting the methods are compared in: a pre-trained generator of K labelled
modes, a quality reward served by the reward service, an embedder for the diversity methods
and the metrics, and what the report needs to read the outcome (a mode classifier, the ideal
distribution, optionally an oracle policy). The runner (:mod:`experiments.collapse.runner`)
treats every world the same way; a world is one subclass of :class:`World` and one line in
:data:`WORLDS`.

The protocol (a pydantic model, so a world's options are validated, dumped into every run
record and part of a run's fingerprint; ``--set world.<name>.<field>=...`` overrides them):

- ``name`` (class variable): the world's name in :data:`WORLDS`, the report and the
  output directory ``<out>/<name>/``; ``summary`` (class variable): one line for the report.
- ``budget`` (:class:`Budget`): training steps, seeds, evaluation samples and GRPO's
  checkpoint spacing for this world (a world may use fewer seeds or steps; the report says
  which).
- ``train`` (dict): TrainConfig-level overrides of the experiment's shared training knobs
  for this world (e.g. ``num_steps``); empty by default.
- ``family``, ``height``, ``width``, ``prompt``: the trainer's model family, the image size
  and the one prompt every group is drawn for. :meth:`register_family` makes ``family``
  known to the trainer (default: the toy family of :mod:`experiments.collapse.family`).
- :meth:`prepare` ``(cache_dir, log) -> Path``: build (or load from ``cache_dir``) the
  pre-trained generator and the world's networks; returns the model directory the
  trainer loads (``TrainConfig.model``). Idempotent and cheap once cached; called in every
  process that uses the world (the runner's workers too).
- :meth:`quality` -> :class:`PluginSpec`: the quality scorer plugin (entry name, import
  path, options), served by the reward service and loaded in-process for evaluation;
  the training reward is this scorer with weight 1.
- :meth:`embedder` -> :class:`PluginSpec`: the embedder plugin of the diversity methods,
  of Vendi and of the mean pairwise distance.
- :meth:`aux_scorers` -> list of :class:`PluginSpec`: auxiliary scorers for GARDO's
  uncertainty gate (served with weight 0; never part of the reward). Empty: GARDO cannot
  run in the world and the runner skips it, saying so.
- :meth:`mode_names` -> list[str]: the K modes (K = its length).
- :meth:`classify` ``(images) -> labels``: the mode of each image ((N, 3, H, W) float in
  [0, 1] -> (N,) int): the histograms, coverage, entropy, KL to the ideal.
- :meth:`ideal` ``(base_histogram) -> p*``: the ideal mode distribution of ``kl_ideal``.
- :meth:`oracle_samples` ``(n, seed) -> images | None``: samples of the world's oracle
  policy (e.g. the best-quality render of each mode, an even mixture), evaluated like a
  policy and shown next to the fronts; None when the world has none.
- :meth:`meta` -> dict: facts for the report (classifier accuracy, ...).

The first world, :class:`ShapesQualityIsMode` (``shapes-quality-is-mode``), is the
setting of the first report: there quality *is* the mode (a preferred mode scores 5,
the others 4, nothing within a mode changes the score).
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

__all__ = [
    "WORLDS",
    "Budget",
    "PluginSpec",
    "ShapesQualityIsMode",
    "World",
    "make_world",
    "tilted_ideal",
]


class PluginSpec(BaseModel):
    """A scorer or embedder plugin as the reward service's config names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The entry's name in the service (and in TrainConfig).")
    plugin: str = Field(description="Import path 'package.module:factory'.")
    options: dict[str, Any] = Field(default_factory=dict)

    def load(self, kind: Literal["scorer", "embedder"]) -> Any:
        """The plugin's model in this process (the object the service's replica holds)."""
        from divreward.models.base import LoadOptions
        from divreward.models.plugins import load_plugin

        return load_plugin(self.name, self.plugin, kind, LoadOptions(options=dict(self.options)))

    def entry(self, **deployment: Any) -> dict[str, Any]:
        """The service config entry (RewardAppArgs.scorers[name] / DiversityAppArgs.embedder)."""
        return {**deployment, "plugin": self.plugin, "options": dict(self.options)}


class Budget(BaseModel):
    """How much training and evaluation one world gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=80, ge=1, description="Training steps per run.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    eval_samples: int = Field(default=128, ge=8, description="Samples per evaluation.")
    curve_every: int = Field(
        default=10, ge=1, description="GRPO's checkpoints: an evaluation every this many steps."
    )


class World(BaseModel, ABC):
    """A setting of the experiment (see the module's docstring for the protocol)."""

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    summary: ClassVar[str]

    budget: Budget = Field(default_factory=Budget)
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides for this world."
    )
    family: str = "toy"
    height: int = 16
    width: int = 16
    prompt: str = "a toy image"

    def register_family(self) -> None:
        """Make ``family`` known to the trainer (the toy family by default)."""
        from experiments.collapse.family import register

        register()

    @abstractmethod
    def prepare(self, cache_dir: Path, log: Callable[[str], None] = print) -> Path:
        """Build or load the world; the generator's model directory."""

    @abstractmethod
    def quality(self) -> PluginSpec: ...

    @abstractmethod
    def embedder(self) -> PluginSpec: ...

    def aux_scorers(self) -> list[PluginSpec]:
        return []

    @abstractmethod
    def mode_names(self) -> list[str]: ...

    @abstractmethod
    def classify(self, images: torch.Tensor) -> np.ndarray: ...

    @abstractmethod
    def ideal(self, base_histogram: np.ndarray) -> np.ndarray: ...

    def oracle_samples(self, n: int, seed: int) -> torch.Tensor | None:
        return None

    def meta(self) -> dict[str, Any]:
        return {}

    @property
    def k(self) -> int:
        return len(self.mode_names())


def tilted_ideal(base_histogram: np.ndarray, weights: np.ndarray, tau: float) -> np.ndarray:
    """p*(m) ∝ p_base(m) exp(w_m / tau): the optimum of a reward w_m per mode under a KL
    leash (temperature tau) to the base distribution."""
    w = np.asarray(weights, dtype=float)
    p = np.maximum(np.asarray(base_histogram, dtype=float), 1e-12) * np.exp((w - w.max()) / tau)
    return np.asarray(p / p.sum())


# ----------------------------------------------------------------------------- worlds


class PretrainedWorld(World):
    """A world built from a :class:`~experiments.collapse.pretrain.ToySettings` and cached
    under the experiment's cache directory: :meth:`prepare` builds (or loads) it once,
    :attr:`model_dir` is its directory after that. A subclass gives :meth:`settings`."""

    _dir: Path | None = PrivateAttr(default=None)

    @abstractmethod
    def settings(self) -> Any:
        """The world's pre-training settings (a ToySettings)."""

    def prepare(self, cache_dir: Path, log: Callable[[str], None] = print) -> Path:
        from experiments.collapse.pretrain import ensure_toy

        if self._dir is None:
            self._dir = ensure_toy(cache_dir, self.settings(), log=log)
        return self._dir

    @property
    def model_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError(f"world {self.name}: prepare() first")
        return self._dir


class ShapesQualityIsMode(PretrainedWorld):
    """K (shape, colour) modes of 16x16 renders; quality = the mode's weight under the
    mode classifier's softmax (a preferred mode scores ``quality_scale``, the others
    ``quality_scale * (1 - margin)``): quality *is* the mode."""

    name: ClassVar[str] = "shapes-quality-is-mode"
    summary: ClassVar[str] = (
        "16x16 shapes; quality is the mode: a preferred mode scores 5, any other 4, "
        "nothing within a mode changes the score"
    )

    k_modes: int = Field(default=8, ge=2, le=24, description="Number of modes K.")
    toy_seed: int = Field(default=0, ge=0, description="Seed of the pre-trained toy world.")
    toy: dict[str, Any] = Field(default_factory=dict, description="ToySettings overrides.")
    preferred: list[int] = Field(default_factory=lambda: [0, 1], description="Preferred modes.")
    margin: float = Field(default=0.2, ge=0.0, lt=1.0, description="Quality of others: 1-margin.")
    crisp_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight of the plugin's crispness term in Q (0 in the reported setting).",
    )
    quality_scale: float = Field(
        default=5.0,
        gt=0.0,
        description="Q is scaled by this: 5 makes the preferred-vs-other gap 1.0, the order "
        "of PickScore differences, so the papers' beta = 0.7 weighs the bonus as they do.",
    )
    ideal_temperature: float | None = Field(
        default=None, gt=0.0, description="tau of the ideal; default margin / ln 2."
    )

    _classifier: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        bad = [m for m in self.preferred if not 0 <= m < self.k_modes]
        if bad:
            raise ValueError(f"preferred: modes {bad} outside 0..{self.k_modes - 1}")

    def settings(self) -> Any:
        from experiments.collapse.pretrain import ToySettings

        return ToySettings(**{"k": self.k_modes, "seed": self.toy_seed, **self.toy})

    def quality(self) -> PluginSpec:
        return PluginSpec(
            name="toy_quality",
            plugin="experiments.collapse.plugins:quality_scorer",
            options=self._quality_options(),
        )

    def _quality_options(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "preferred": list(self.preferred),
            "margin": self.margin,
            "scale": self.quality_scale,
            "crisp_weight": self.crisp_weight,
        }

    def aux_scorers(self) -> list[PluginSpec]:
        """The same quality formula read by the embedder's network (trained on the mode
        labels too, other seed and data): an independent estimate, as GARDO's auxiliary
        reward models are."""
        return [
            PluginSpec(
                name="toy_quality_aux",
                plugin="experiments.collapse.plugins:quality_scorer",
                options={**self._quality_options(), "net": "embedder"},
            )
        ]

    def embedder(self) -> PluginSpec:
        return PluginSpec(
            name="toy_embedder",
            plugin="experiments.collapse.plugins:embedder",
            options={"model_dir": str(self.model_dir)},
        )

    def mode_names(self) -> list[str]:
        from experiments.collapse.data import modes

        return [m.name for m in modes(self.k_modes)]

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> np.ndarray:
        from experiments.collapse.pretrain import load_cnn

        if self._classifier is None:
            self._classifier = load_cnn(self.model_dir / "classifier.safetensors", self.k_modes)
        return np.asarray(self._classifier(images.float()).argmax(1).numpy(), dtype=np.int64)

    def tau(self) -> float:
        if self.ideal_temperature is not None:
            return self.ideal_temperature
        return max(self.margin, 1e-6) / math.log(2.0)

    def ideal(self, base_histogram: np.ndarray) -> np.ndarray:
        """p* ∝ p_base exp(w / tau) with w = 1 (preferred) or 1 - margin (tau in units of
        the unscaled quality; default margin / ln 2: a preferred mode ends with twice its
        base share relative to the others)."""
        w = np.full(self.k_modes, 1.0 - self.margin)
        w[list(self.preferred)] = 1.0
        return tilted_ideal(base_histogram, w, self.tau())

    def meta(self) -> dict[str, Any]:
        from experiments.collapse.pretrain import load_meta

        return load_meta(self.model_dir)


#: World name -> "module:Class" (imported when first used).
WORLDS: dict[str, str] = {
    ShapesQualityIsMode.name: "experiments.collapse.worlds:ShapesQualityIsMode",
    "shapes-within-mode": "experiments.collapse.shapes_world:ShapesWithinMode",
    "digits": "experiments.collapse.digits_world:Digits",
}


def make_world(name: str, options: Mapping[str, Any] | None = None) -> World:
    """The world ``name`` with ``options`` (its fields) applied."""
    target = WORLDS.get(name)
    if target is None:
        raise ValueError(f"unknown world {name!r}; known: {sorted(WORLDS)}")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls(**dict(options or {}))  # type: ignore[no-any-return]
