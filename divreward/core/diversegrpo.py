"""DiverseGRPO's distributional creativity bonus and combined reward (Sec. 3.2).

``E_i = sqrt(N / n_k)`` (Eq. 11) for image i in cluster k of size n_k, then
``R_i = Q_i + beta * E_i`` (Eq. 12) and the group-relative advantage of R (Eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from divreward.core.advantages import group_advantages
from divreward.core.config import AdvantageConfig, DiverseGRPOConfig
from divreward.core.spectral import spectral_cluster
from divreward.core.validation import (
    ArrayLike,
    check_embeddings,
    check_same_length,
    check_scores,
    plain_dict,
    to_numpy,
)

__all__ = [
    "DiverseGRPOResult",
    "diversegrpo_bonus",
    "diversegrpo_rewards",
]


@dataclass(frozen=True)
class DiverseGRPOResult:
    """Everything a trainer logs for one group; arrays are (N,).

    quality: Q, the quality scores as given (float64).
    bonus: E = sqrt(N / n_k) (Eq. 11).
    rewards: R = Q + beta * E (Eq. 12).
    advantages: A(R) (Eq. 3).
    labels: canonical cluster labels (int64); k: number of clusters; sigma: kernel width.
    beta: the bonus weight used; solver: 'exact' or 'approximate'.
    """

    quality: np.ndarray
    bonus: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    labels: np.ndarray
    k: int
    sigma: float
    beta: float
    solver: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists of Python numbers and plain scalars."""
        return plain_dict(self)


def diversegrpo_bonus(labels: ArrayLike) -> np.ndarray:
    """Eq. 11: ``E_i = sqrt(N / n_k)``, N the group size, n_k the size of i's cluster.

    labels: (N,) integer cluster labels (any integers; only equality matters).
    Returns float64 (N,). One cluster gives all ones; all singletons give sqrt(N).
    """
    lab = to_numpy(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array, got shape {tuple(lab.shape)}")
    if lab.size == 0:
        raise ValueError("labels: is empty; a group needs at least 1 image")
    if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels: expected integer cluster labels, got dtype {lab.dtype}")
    _, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    return np.sqrt(lab.size / counts[inv.reshape(-1)].astype(np.float64))


def diversegrpo_rewards(
    quality: ArrayLike,
    embeddings: ArrayLike,
    config: DiverseGRPOConfig | None = None,
    advantage: AdvantageConfig | None = None,
) -> DiverseGRPOResult:
    """DiverseGRPO for one group: cluster, bonus, ``R = Q + beta E``, advantages.

    quality: (N,) quality scores Q; embeddings: (N, D) perceptual embeddings (DreamSim
    by default; normalised here, so any positive scale works).
    """
    cfg = config if config is not None else DiverseGRPOConfig()
    adv = advantage if advantage is not None else AdvantageConfig()
    q = check_scores(quality, "quality")
    x = check_embeddings(embeddings)
    check_same_length(q, "quality", x, "embeddings")
    clusters = spectral_cluster(x, cfg)
    bonus = diversegrpo_bonus(clusters.labels)
    rewards = q + cfg.beta * bonus
    return DiverseGRPOResult(
        quality=q.copy(),
        bonus=bonus,
        rewards=rewards,
        advantages=group_advantages(rewards, eps=adv.eps),
        labels=clusters.labels,
        k=clusters.k,
        sigma=clusters.sigma,
        beta=cfg.beta,
        solver=clusters.solver,
    )
