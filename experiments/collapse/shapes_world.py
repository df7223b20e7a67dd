"""World "shapes-within-mode": the K toy shapes, with a quality every mode can improve.

The world
    The K = 8 (shape, colour) modes of :mod:`experiments.collapse.data`, rendered as in the
    K-modes world except that a shape's centre is shifted from the image's by up to
    ``offset`` = 3 px on each axis (uniform; the K-modes world: 2 px). So every mode
    holds well-centred and badly-centred images, and the base model spreads centring
    widely in every mode.

Quality (a pixel oracle: no network, so it cannot be entangled with the mode classifier)
    ``Q(x) = within * centring(x) + between * redness(x)``, with (:mod:`.oracles`)
    ``centring = exp(-d^2 / (2 * 2^2))``, d the distance in pixels of the ink centroid
    (pixel moments of the non-background pixels) from the image centre, and
    ``redness = clip((R - max(G, B)) / 0.5, 0, 1)`` of the ink's mean colour: 1 for the
    red modes (red square, red ring, red hbar: modes 0, 1, 4), 0 for the others.
    Defaults ``within = 4``, ``between = 1``: the maximum is 5 and the preferred-vs-other
    gap is 1.0, as in the K-modes world (so DiverseGRPO's beta = 0.7 weighs its bonus as
    there), and the within-mode range (0 to 4; a sample of the data spreads over
    SPREAD_NOTE) is four times the between-mode gap, like PickScore's variation within a
    content against its preference between contents.

Auxiliary scorers (GARDO's uncertainty gate)
    ``regressor_scorer`` with ``member`` 0 or 1: a small CNN fitted to (centring,
    redness) on 4096 renders of the classifier's or the embedder's data, served as
    ``within * centring_hat + between * redness_hat``. They agree with the oracle on the
    data (held-out MAE in ``meta.json``, ``regressor_mae``) and drift off it, which is
    what GARDO's gate reads.

Embedder and mode labels
    As in the K-modes world: two ModeCNNs trained on this world's renders (classifier,
    embedder), the embedder's unit-normalised penultimate features the embedding
    (``experiments.collapse.plugins:embedder`` with this world's ``model_dir``).

Oracle policy and the ideal distribution
    ORACLE_NOTE

    The ideal distribution for ``kl_ideal`` follows: p* = uniform over the K modes (the
    even mixture of each mode's best image reaches near the maximum reward with full
    coverage, so a policy that improves quality without collapsing should approach it).

GRPO-collapse check
    COLLAPSE_NOTE
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from divreward.models.base import LoadOptions
from experiments.collapse.data import _BACKGROUND, sample_dataset
from experiments.collapse.oracles import centring, redness
from experiments.collapse.plugins import _model_dir
from experiments.collapse.pretrain import ToySettings
from experiments.collapse.quality import (
    CnnWorld,
    PartsQuality,
    PartsScorer,
    RegressorScorer,
    build_regressors,
    check_options,
    oracle_policy,
    regressor_scorer,
    weights_from,
)
from experiments.collapse.worlds import PluginSpec

__all__ = [
    "DEFAULT_WEIGHTS",
    "SIGMA",
    "ShapesSettings",
    "ShapesWithinMode",
    "ideal_distribution",
    "quality",
    "quality_scorer",
    "regressor_scorer_plugin",
    "shapes_oracle_policy",
]

#: centring's width in pixels: a 2 px offset scores exp(-1/2) = 0.61
SIGMA = 2.0
#: part -> default weight
DEFAULT_WEIGHTS: dict[str, float] = {"within": 4.0, "between": 1.0}
_NAMES = ("centring", "redness")


def parts(x: torch.Tensor) -> torch.Tensor:
    """(N, 2): centring and redness of (N, 3, 16, 16) images in [0, 1]."""
    return torch.stack([centring(x, _BACKGROUND, SIGMA), redness(x, _BACKGROUND)], dim=1)


def quality(within: float = 4.0, between: float = 1.0) -> PartsQuality:
    return PartsQuality(_NAMES, (within, between), parts)


@dataclass(frozen=True)
class ShapesSettings(ToySettings):
    """The K-modes world's settings plus the centring spread (``offset``, px)."""

    offset: float = 3.0
    cnn_epochs: int = 8
    world = "shapes"  # type: ignore[misc]

    def sample(self, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_dataset(self.k, n, seed, self.offset)

    def build_extra(self, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        return build_regressors(self, parts, len(_NAMES), out, log)


def ideal_distribution(k: int) -> np.ndarray:
    """p* = uniform over the K modes."""
    return np.full(k, 1.0 / k)


def shapes_oracle_policy(
    s: ShapesSettings | None = None, n: int = 256, seed: int = 7, **weights: float
) -> dict[str, Any]:
    """:func:`~experiments.collapse.quality.oracle_policy` of this world."""
    return oracle_policy(s or ShapesSettings(), quality(**weights), n, seed)


def quality_scorer(opts: LoadOptions) -> PartsScorer:
    """Plugin ``experiments.collapse.shapes_world:quality_scorer``; options ``within``,
    ``between`` (the parts' weights). Needs no model directory."""
    check_options(opts, set(DEFAULT_WEIGHTS), "shapes quality")
    w = weights_from(opts, DEFAULT_WEIGHTS, "shapes quality")
    options = dict(zip(DEFAULT_WEIGHTS, w, strict=True))
    return PartsScorer("shapes_quality", quality(*w), "oracle", options)


def regressor_scorer_plugin(opts: LoadOptions) -> RegressorScorer:
    """Plugin ``experiments.collapse.shapes_world:regressor_scorer_plugin``; options
    ``model_dir`` (the world's directory), ``member`` (0 or 1), ``within``, ``between``."""
    check_options(opts, {"model_dir", "member", *DEFAULT_WEIGHTS}, "shapes regressor")
    w = weights_from(opts, DEFAULT_WEIGHTS, "shapes regressor")
    path = _model_dir(opts, "shapes regressor")
    return regressor_scorer(opts, "shapes_quality_regressor", path, _NAMES, w)


class ShapesWithinMode(CnnWorld):
    """The world of this module (see its docstring)."""

    name: ClassVar[str] = "shapes-within-mode"
    summary: ClassVar[str] = (
        "16x16 shapes, centre offsets up to 3 px; quality = 4 x centring (a pixel oracle any "
        "mode can improve) + 1 x redness (the 3 red modes preferred): max 5, gap 1"
    )
    regressor_plugin: ClassVar[str] = "experiments.collapse.shapes_world:regressor_scorer_plugin"

    def settings(self) -> ShapesSettings:
        return ShapesSettings(**{"seed": self.toy_seed, **self.toy})

    def parts_quality(self) -> PartsQuality:
        return quality(self.within, self.between)

    def quality(self) -> PluginSpec:  # type: ignore[override]
        return PluginSpec(
            name="shapes_quality",
            plugin="experiments.collapse.shapes_world:quality_scorer",
            options=self._weights(),
        )
