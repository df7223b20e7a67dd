"""DRIFT's diversity reward shaping (Sec. 5.3) and reward-based sample selection (App. E).

- Intra-group diversity (Eq. 11): ``d_i = 1/(G-1) sum_{j != i} ||e_i - e_j||^2``.
- Intrinsic reward (Eqs. 9, 13): ``R_int = clip(gamma^T d_i, 0, sigma_clip)``.
- Shaped reward (Eq. 12): ``R~ = Q + lambda R_int``; decoupled advantage (Eq. 14):
  ``A~ = A(Q) + lambda A(R_int)``, each normalised within the group.
- Reward-concentrated / reward-contrasted subsets of a 2G pool (Eqs. 32-33).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from divreward.core.advantages import group_advantages
from divreward.core.config import AdvantageConfig, DRIFTConfig, SubsetStrategy
from divreward.core.validation import (
    ArrayLike,
    check_embeddings,
    check_positive_int,
    check_real,
    check_same_length,
    check_scores,
    plain_dict,
)

__all__ = [
    "DriftResult",
    "decoupled_advantages",
    "drift_rewards",
    "intra_group_diversity",
    "intrinsic_reward",
    "reward_concentrated_subset",
    "reward_contrast_subset",
    "select_subset",
]


@dataclass(frozen=True)
class DriftResult:
    """Everything a trainer logs for one group; arrays are (G,) float64.

    quality: Q as given. diversity: d (Eq. 11). intrinsic: R_int = clip(gamma^T d, 0,
    sigma_clip) (Eq. 13). rewards: Q + lambda R_int (Eq. 12; for logging when
    decoupled). advantages: A(Q) + lambda A(R_int) (Eq. 14) when ``decoupled``, else
    A(Q + lambda R_int) (Eq. 3 on Eq. 12). lam, decoupled: the settings used.
    """

    quality: np.ndarray
    diversity: np.ndarray
    intrinsic: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    lam: float
    decoupled: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists of Python numbers and plain scalars."""
        return plain_dict(self)


def intra_group_diversity(embeddings: ArrayLike) -> np.ndarray:
    """Eq. 11: mean squared Euclidean distance from each image to the others.

    embeddings: (G, D), used as given (DreamSim's are unit rows; then
    ``||e_i - e_j||^2 = 2 (1 - cos)``). Returns float64 (G,); G = 1 gives [0.].

    Computed in O(G D) from the centred embeddings, using
    ``sum_j ||e_i - e_j||^2 = G ||e_i - m||^2 + sum_j ||e_j - m||^2`` (m the mean), which
    also avoids the cancellation of the ``|a|^2 + |b|^2 - 2ab`` form for near-duplicates.
    """
    x = check_embeddings(embeddings)
    g = x.shape[0]
    if g == 1:
        return np.zeros(1)
    c = x - x.mean(axis=0)  # (G, D)
    sq = np.einsum("gd,gd->g", c, c)  # (G,) squared distance to the mean
    return (g * sq + sq.sum()) / (g - 1)


def intrinsic_reward(
    d: ArrayLike,
    gamma: float = 1.0,
    num_steps: int = 50,
    sigma_clip: float = 1.0,
) -> np.ndarray:
    """Eqs. 9 and 13: ``R_int = clip(gamma^T * d, 0, sigma_clip)``; float64 (G,).

    d: (G,) intra-group diversities (Eq. 11).

    Eq. 9 telescopes the potential-based shaping ``gamma d(s') - d(s)`` over the T
    denoising steps to ``gamma^T d(x_0) - d(x_T)``, with d(x_T) = 0 for pure noise.
    """
    div = check_scores(d, "d")
    gamma = check_real(gamma, "gamma")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma: must be in (0, 1], got {gamma}")
    t = check_positive_int(num_steps, "num_steps", minimum=0)
    sigma_clip = check_real(sigma_clip, "sigma_clip")
    if sigma_clip <= 0:
        raise ValueError(f"sigma_clip: must be > 0, got {sigma_clip}")
    return np.clip(gamma**t * div, 0.0, sigma_clip)


def decoupled_advantages(
    quality: ArrayLike,
    r_int: ArrayLike,
    lam: float = 0.5,
    eps: float = 1e-6,
) -> np.ndarray:
    """Eq. 14: ``A~ = A(Q) + lambda * A(R_int)``, each term Eq. 3 within the group.

    quality: (G,) Q; r_int: (G,) intrinsic rewards. Returns float64 (G,).
    """
    q = check_scores(quality, "quality")
    r = check_scores(r_int, "r_int")
    check_same_length(q, "quality", r, "r_int")
    lam = check_real(lam, "lam")
    return group_advantages(q, eps) + lam * group_advantages(r, eps)


def drift_rewards(
    quality: ArrayLike,
    embeddings: ArrayLike,
    config: DRIFTConfig | None = None,
    advantage: AdvantageConfig | None = None,
) -> DriftResult:
    """DRIFT for one group: diversity, clipped intrinsic reward, rewards, advantages.

    quality: (G,) quality scores Q; embeddings: (G, D) perceptual embeddings.
    """
    cfg = config if config is not None else DRIFTConfig()
    adv = advantage if advantage is not None else AdvantageConfig()
    q = check_scores(quality, "quality")
    x = check_embeddings(embeddings)
    check_same_length(q, "quality", x, "embeddings")
    d = intra_group_diversity(x)
    r_int = intrinsic_reward(d, cfg.gamma, cfg.num_steps, cfg.sigma_clip)
    rewards = q + cfg.lam * r_int
    if cfg.decoupled:
        advantages = decoupled_advantages(q, r_int, cfg.lam, adv.eps)
    else:
        advantages = group_advantages(rewards, adv.eps)
    return DriftResult(
        quality=q.copy(),
        diversity=d,
        intrinsic=r_int,
        rewards=rewards,
        advantages=advantages,
        lam=cfg.lam,
        decoupled=cfg.decoupled,
    )


# --------------------------------------------------------------------------- App. E


def _pool(rewards: ArrayLike, group_size: int) -> tuple[np.ndarray, int]:
    r = check_scores(rewards, "rewards")
    g = check_positive_int(group_size, "group_size")
    if g > r.size:
        raise ValueError(
            f"group_size: {g} is larger than the pool of {r.size} candidates in rewards"
        )
    return r, g


def reward_concentrated_subset(rewards: ArrayLike, group_size: int) -> np.ndarray:
    """DRIFT's reward-concentrated selection (Sec. 5.1, App. E, Eq. 32).

    From a pool of P candidates (2G in the paper) with scalar rewards r: D_ij = |r_i -
    r_j|; s_i = sum of the G-1 smallest D_ij over j != i; i* = argmin s_i (ties: the
    lowest index); keep i* and its G-1 nearest candidates by |r_j - r_i*| (ties: the
    lower index). Returns the G kept indices, sorted ascending (int64).
    """
    r, g = _pool(rewards, group_size)
    dist = np.abs(r[:, None] - r[None, :])  # (P, P)
    np.fill_diagonal(dist, np.inf)  # a candidate is not its own neighbour
    s = np.sort(dist, axis=1)[:, : g - 1].sum(axis=1)  # (P,)
    ref = int(np.argmin(s))
    nearest = np.argsort(dist[ref], kind="stable")[: g - 1]  # stable: lower index first
    return np.sort(np.append(nearest, ref)).astype(np.int64)


def reward_contrast_subset(rewards: ArrayLike, group_size: int) -> np.ndarray:
    """DRIFT's reward-contrasted selection, the ablation (App. E, Eq. 33).

    t_i = sum of the G-1 largest D_ij over j != i; i* = argmax t_i (ties: the lowest
    index); keep i* and its G-1 farthest candidates (ties: the lower index). Returns the
    G kept indices, sorted ascending (int64).
    """
    r, g = _pool(rewards, group_size)
    dist = np.abs(r[:, None] - r[None, :])
    np.fill_diagonal(dist, -np.inf)
    t = (-np.sort(-dist, axis=1))[:, : g - 1].sum(axis=1)
    ref = int(np.argmax(t))
    farthest = np.argsort(-dist[ref], kind="stable")[: g - 1]
    return np.sort(np.append(farthest, ref)).astype(np.int64)


def select_subset(
    rewards: ArrayLike, group_size: int, strategy: SubsetStrategy = "concentrated"
) -> np.ndarray:
    """Dispatch on ``SubsetConfig.strategy``; 'none' needs a pool of exactly group_size."""
    if strategy == "concentrated":
        return reward_concentrated_subset(rewards, group_size)
    if strategy == "contrast":
        return reward_contrast_subset(rewards, group_size)
    if strategy == "none":
        r, g = _pool(rewards, group_size)
        if r.size != g:
            raise ValueError(
                f"rewards: strategy 'none' keeps the whole pool, but the pool has {r.size} "
                f"candidates for group_size {g}"
            )
        return np.arange(g, dtype=np.int64)
    raise ValueError(
        f"strategy: unknown {strategy!r}; expected 'concentrated', 'contrast' or 'none'"
    )
