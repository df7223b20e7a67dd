"""GARDO's diversity-aware advantage shaping (arXiv 2512.24138, Sec. 4.3 and its code).

For one prompt's group of G images with quality r (G,) and embeddings e (G, D):

- nearest-neighbour distance: ``d_i = min_{j != i} (1 - clip(cos(e_i, e_j), -1, 1))`` on
  the unit-normalised rows (G = 1: d = [0]);
- centred reward ``c_i = r_i - mean_g r`` (divided by ``std_g r + eps`` only with
  ``std_normalize``; GARDO removes the std, Sec. 4.4);
- ``variant='code'`` (tinnerhrhe/GARDO, ``PerPromptStatTracker.update(type='gardo')``):
  ``A'_i = c_i * w_i`` with ``w_i = 1`` if ``r_i < mean_g r``, else ``d_i / mean_j d_j``;
- ``variant='paper'`` (Eq. 8): ``A'_i = c_i * d_i`` if ``c_i > 0``, else ``c_i``.

The weight is >= 0, so no advantage changes sign. Pinned where the sources are silent: a
group whose images all coincide (every d_i = 0, so ``d / mean d`` is 0/0) gets w = 1 in
the code variant (no diversity information, no shaping); a group whose rewards are all
equal gets exactly 0 advantages. The rewards are the quality as given: the shaping
changes advantages only. The trainer's advantage clip (the code's ±5) applies after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from divreward.core.config import AdvantageConfig, GARDOConfig
from divreward.core.spectral import cosine_distances
from divreward.core.validation import (
    ArrayLike,
    check_embeddings,
    check_same_length,
    check_scores,
    plain_dict,
)

__all__ = ["GARDOResult", "gardo_advantages", "gardo_rewards", "nearest_neighbour_distance"]


@dataclass(frozen=True)
class GARDOResult:
    """Everything a trainer logs for one group; arrays are (G,) float64.

    quality: r as given; rewards: r (unchanged). nn_distance: d_i. weight: w_i, the factor
    applied to the centred (or standardised) reward. advantages: the shaped A'_i.
    variant, std_normalize: the settings used.
    """

    quality: np.ndarray
    nn_distance: np.ndarray
    weight: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    variant: str
    std_normalize: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists of Python numbers and plain scalars."""
        return plain_dict(self)


def nearest_neighbour_distance(embeddings: ArrayLike) -> np.ndarray:
    """``d_i = min_{j != i} (1 - cos(e_i, e_j))``, cosine clipped to [-1, 1]; float64 (G,).

    A zero-norm row raises ``ValueError`` (its cosine is undefined); G = 1 gives [0.].
    """
    d = cosine_distances(embeddings)  # (G, G), zero diagonal, values in [0, 2]
    if d.shape[0] == 1:
        return np.zeros(1)
    np.fill_diagonal(d, np.inf)  # an image is not its own neighbour
    return d.min(axis=1)


def gardo_advantages(
    quality: ArrayLike,
    nn_distance: ArrayLike,
    config: GARDOConfig | None = None,
    advantage: AdvantageConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The shaped advantages and their weights, ``(A' (G,), w (G,))``, from the group's
    quality and nearest-neighbour distances (see the module docstring)."""
    cfg = config if config is not None else GARDOConfig()
    adv = advantage if advantage is not None else AdvantageConfig()
    r = check_scores(quality, "quality")
    d = check_scores(nn_distance, "nn_distance")
    check_same_length(r, "quality", d, "nn_distance")
    if (d < 0).any():
        raise ValueError(f"nn_distance: must be >= 0, got {float(d.min())}")
    if r.max() == r.min():  # no preference; exact zeros (the mean of equal floats can miss)
        centred = np.zeros_like(r)
    else:
        centred = r - r.mean()
        if cfg.std_normalize:
            centred = centred / (r.std() + adv.eps)
    if cfg.variant == "code":
        mean_d = d.mean()
        ratio = d / mean_d if mean_d > 0 else np.ones_like(d)
        weight = np.where(r < r.mean(), 1.0, ratio)
    else:  # "paper", Eq. 8
        weight = np.where(centred > 0, d, 1.0)
    return centred * weight, weight


def gardo_rewards(
    quality: ArrayLike,
    embeddings: ArrayLike,
    config: GARDOConfig | None = None,
    advantage: AdvantageConfig | None = None,
) -> GARDOResult:
    """GARDO's shaping for one group: quality (G,), embeddings (G, D)."""
    cfg = config if config is not None else GARDOConfig()
    q = check_scores(quality, "quality")
    x = check_embeddings(embeddings)
    check_same_length(q, "quality", x, "embeddings")
    d = nearest_neighbour_distance(x)
    advantages, weight = gardo_advantages(q, d, cfg, advantage)
    return GARDOResult(
        quality=q.copy(),
        nn_distance=d,
        weight=weight,
        rewards=q.copy(),
        advantages=advantages,
        variant=cfg.variant,
        std_normalize=cfg.std_normalize,
    )
