"""World "shapes-within-mode": the K toy shapes, with a quality every mode can improve.

The world
    The K = 8 (shape, colour) modes of :mod:`experiments.collapse.data`, rendered as in
    the quality-is-mode world except that a shape's centre is shifted from the image's by
    up to ``offset`` = 3 px on each axis (uniform; there: 2 px). So every mode holds
    well-centred and badly-centred images, and the base model spreads centring widely in
    every mode: on 512 of its samples centring is 0.64 ± 0.24, redness 0.32 ± 0.44,
    Q 2.88 ± 0.96 (:func:`~experiments.collapse.quality.base_parts`).

Quality (a pixel oracle: no network, so it cannot be entangled with the mode classifier)
    ``Q(x) = within * centring(x) + between * redness(x)``, with (:mod:`.oracles`)
    ``centring = exp(-d^2 / (2 * 2^2))``, d the distance in pixels of the ink centroid
    (pixel moments of the non-background pixels) from the image centre, and
    ``redness = clip((R - max(G, B)) / 0.5, 0, 1)`` of the ink's mean colour: 1 for the
    red modes (red square, red ring, red hbar: modes 0, 1, 4), 0 for the others.

Scale
    Defaults ``within = 4``, ``between = 1``: the maximum is 5 and the preferred-vs-other
    gap is 1.0, as in the quality-is-mode world (so the methods' strengths, e.g.
    DiverseGRPO's beta = 0.7, weigh against quality as there). The within-mode range
    (0 to 4) is four times the between-mode gap, and the base model's within-mode spread
    (standard deviation of 4 x centring: 0.94) is about the gap: like PickScore, whose
    variation between images of one content is as large as or larger than its
    preference between contents.

Auxiliary scorers (GARDO's uncertainty gate)
    ``regressor_scorer_plugin`` with ``member`` 0 or 1 (served as ``shapes_quality_reg0``
    and ``shapes_quality_reg1``): a small CNN fitted (MSE) to (centring, redness) on 4096
    renders of the classifier's or the embedder's data, served as
    ``within * centring_hat + between * redness_hat``. Two independent learned estimates
    of the same preference, as GARDO's auxiliary reward models are: they agree with the
    oracle on the data (held-out mean absolute error per part 0.020 and 0.026) and drift
    off it where the policy leaves the data, which is what the gate reads.

Embedder and mode labels
    As in the quality-is-mode world: two ModeCNNs trained on this world's renders
    (classifier: 99.7% held-out accuracy; embedder: 99.6% as a classifier), the
    embedder's unit-normalised penultimate features the embedding
    (``experiments.collapse.plugins:embedder`` with this world's ``model_dir``).
    Pre-training: 57-59 s on the shared 2 cores (cached under
    ``.cache/toy-collapse/shapes-k8-s0-<hash>/``); base histogram on 1024 ODE samples
    [0.122, 0.079, 0.129, 0.107, 0.171, 0.104, 0.089, 0.198] (8 of 8 modes).

Oracle policy and the ideal distribution
    :func:`shapes_oracle_policy` (the cached default world): the best of 256 renders of
    each mode scores [5.0, 4.95, 4.0, 3.99, 4.88, 3.88, 4.0, 3.99] (red square, red ring,
    blue square, blue ring, red hbar, blue hbar, green square, green ring); their even
    mixture 4.34 with coverage 8 of 8, against 5.0 for the best single mode (ratio 0.87)
    and 2.49 for the data. The runner's oracle samples (the 16 best of 256 renders per
    mode, 128 in all) score 4.21 with coverage 8, Vendi 2.69, pairwise distance 0.42
    (the base model: 3.02, 8, 2.43, 0.31).

    The ideal distribution of ``kl_ideal`` follows: p* = uniform over the K modes (an
    even mixture of each mode's best images reaches near the maximum reward with full
    coverage, so a policy that improves quality without collapsing should approach it).

GRPO-collapse check
    ``python -m experiments.collapse --set 'worlds=[shapes-within-mode]' --set
    'methods=[grpo]' --set backend=inprocess --set
    'world.shapes-within-mode.budget.seeds=[0,1,2]'`` (80 steps x G = 16, the runner's
    defaults). Nothing about the world was tuned to get it: these are its first settings
    (only the CNNs' epochs were raised, 3 -> 8, for the classifier's accuracy, 89.6% ->
    99.7%; the generator is unchanged). Coverage 8 -> 1, 1, 2 (seeds 0, 1, 2), quality
    3.02 -> 4.56, 4.59, 4.37, Vendi 2.43 -> 1.01, 1.00, 1.52; seeds 0 and 1 end on one red
    mode (ring, square), seed 2 on red square and red hbar. With no between-mode
    preference at all (``between = 0``; same seeds and budget) GRPO still collapses:
    coverage 8 -> 4, 1, 1 while quality reaches 3.97-4.00 of 4: the collapse is GRPO's
    own dynamics, not a trade-off the reward forces. On five seeds (the World default
    budget's 0-4) seeds 3 and 4 learn more slowly (quality 4.01, 3.85 at step 80, still
    rising) and still cover 6 and 7 modes: coverage fell on 5 of 5 seeds, to <= 2 modes
    on 3 of 5 (final 3.4 ± 1.3 SE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from divreward.models.base import LoadOptions
from experiments.collapse.data import _BACKGROUND, sample_dataset
from experiments.collapse.oracles import centring, redness
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
    """The K-modes world's settings plus the centring spread (``offset``, px).
    ``regressor_target`` names the parts the regressors are fitted to (it is in the
    cache key, so changing the oracle's constants rebuilds them)."""

    offset: float = 3.0
    cnn_epochs: int = 8
    regressor_target: str = f"centring(sigma={SIGMA}), redness"
    world = "shapes"  # type: ignore[misc]

    def sample(self, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_dataset(self.k, n, seed, self.offset)

    def build_extra(self, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        return build_regressors(self, parts, len(_NAMES), out, log)


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
    return regressor_scorer(opts, "shapes quality regressor", _NAMES, DEFAULT_WEIGHTS)


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
