"""Diversity metrics of both papers' evaluations, over a set of groups.

A *group* is the (n_i, D) embeddings of the images generated for one prompt; a metric
takes a list of groups (one per prompt). Per-prompt metrics are computed within each
group and averaged over groups with equal weight per prompt, as both papers do.

- ``mean_pairwise_distance``: DiverseGRPO Table 1 "DreamSim": mean of 1 - cos over the
  pairs of a group.
- ``drift_diversity``: DRIFT Eq. 31: mean pairwise squared Euclidean distance.
- ``vendi_score``: Friedman & Dieng 2022, exp of the entropy of the eigenvalues of K/n,
  K the cosine-similarity kernel; per group (averaged) or pooled over all groups.
- ``generalized_recall`` / ``generalized_precision``: Kynkaenniemi et al. 2019, k-NN
  manifolds in the embedding space (Euclidean), on pooled sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from divreward.core.config import CoreConfig
from divreward.core.drift import intra_group_diversity
from divreward.core.spectral import cosine_distances
from divreward.core.validation import (
    ArrayLike,
    check_embeddings,
    check_groups,
    check_positive_int,
    check_unit_normalisable,
)

__all__ = [
    "drift_diversity",
    "evaluate_groups",
    "generalized_precision",
    "generalized_recall",
    "mean_pairwise_distance",
    "vendi_score",
]

# Reference rows per block in the k-NN manifold test: the (block, n) distance matrix
# stays small whatever the number of reference images.
_BLOCK = 2048


def _pairs_mean(d: np.ndarray) -> float:
    n = d.shape[0]
    return float(d[np.triu_indices(n, k=1)].mean())


def mean_pairwise_distance(groups: Sequence[ArrayLike]) -> float:
    """Mean over groups of the mean ``1 - cos(e_i, e_j)`` over pairs i < j of a group.

    DiverseGRPO's DreamSim (and CLIP) diversity. Every group needs >= 2 images.
    Range [0, 2]; identical images give 0.
    """
    gs = check_groups(groups, min_rows=2)
    per_group = []
    for i, g in enumerate(gs):
        check_unit_normalisable(g, "embeddings", where=f"groups[{i}]")
        per_group.append(_pairs_mean(cosine_distances(g)))
    return float(np.mean(per_group))


def drift_diversity(groups: Sequence[ArrayLike]) -> float:
    """DRIFT Eq. 31: mean over groups of ``2/(n(n-1)) sum_{i<j} ||e_i - e_j||^2``.

    Embeddings are used as given (DreamSim's are unit rows, so this is twice the mean
    cosine distance for them). Every group needs >= 2 images.
    """
    gs = check_groups(groups, min_rows=2)
    # The mean over i of Eq. 11's d_i is exactly the mean over pairs i < j.
    return float(np.mean([intra_group_diversity(g).mean() for g in gs]))


def _vendi(x: np.ndarray, label: str) -> float:
    check_unit_normalisable(x, "embeddings", where=label)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)  # (n, D)
    n, dim = u.shape
    # K/n = U U^T / n (n x n) has the non-zero eigenvalues of U^T U / n (D x D): use
    # the smaller one.
    gram = (u @ u.T if n <= dim else u.T @ u) / n
    lam = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    p = lam / lam.sum()  # trace(K/n) = 1 up to round-off
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def vendi_score(
    groups: Sequence[ArrayLike], mode: Literal["per_group", "pooled"] = "per_group"
) -> float:
    """Vendi score ``exp(-sum_i p_i ln p_i)``, p the eigenvalues of K/n, K_ij = cos(e_i, e_j).

    ``per_group``: within each prompt's group, averaged over groups (the effective
    number of modes per prompt, in [1, n]); ``pooled``: all images of all groups as one
    set. n identical images score 1; n orthogonal ones score n.
    """
    gs = check_groups(groups)
    if mode == "per_group":
        return float(np.mean([_vendi(g, f"groups[{i}]") for i, g in enumerate(gs)]))
    if mode == "pooled":
        return _vendi(np.concatenate(gs, axis=0), "groups")
    raise ValueError(f"mode: unknown {mode!r}; expected 'per_group' or 'pooled'")


def _sq_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def _coverage(points: np.ndarray, manifold: np.ndarray, k: int, manifold_name: str) -> float:
    """Fraction of ``points`` inside the union of the k-NN balls of ``manifold``.

    The ball of manifold point s has radius = distance to its k-th nearest other
    manifold point; a point on the sphere counts as inside (as in the reference code).
    """
    n = manifold.shape[0]
    if n <= k:
        raise ValueError(
            f"{manifold_name}: the k-NN manifold with k={k} needs at least {k + 1} images "
            f"(each needs k others), got {n}"
        )
    radii2 = np.empty(n)
    for start in range(0, n, _BLOCK):
        block = _sq_euclidean(manifold[start : start + _BLOCK], manifold)  # (B, n)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = 0.0  # the self-distance, exactly (no round-off)
        # Column k of the row sorted ascending skips the zero self-distance at column 0
        # (exact duplicates also sit at 0 and count as neighbours, as in the reference).
        radii2[start : start + _BLOCK] = np.partition(block, k, axis=1)[:, k]
    inside = np.empty(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], _BLOCK):
        block = _sq_euclidean(points[start : start + _BLOCK], manifold)  # (B, n)
        inside[start : start + _BLOCK] = (block <= radii2[None, :]).any(axis=1)
    return float(inside.mean())


def _pooled(x: ArrayLike | Sequence[ArrayLike], name: str) -> np.ndarray:
    if isinstance(x, np.ndarray) or hasattr(x, "detach"):
        return check_embeddings(x, name)
    return np.concatenate(check_groups(x, name), axis=0)


def _samples_and_reference(
    samples: ArrayLike | Sequence[ArrayLike], reference: ArrayLike | Sequence[ArrayLike]
) -> tuple[np.ndarray, np.ndarray]:
    """Both sets pooled to (n, D) arrays of the same D."""
    s = _pooled(samples, "samples")
    r = _pooled(reference, "reference")
    if s.shape[1] != r.shape[1]:
        raise ValueError(
            f"reference: embeddings have {r.shape[1]} dims but samples have {s.shape[1]}"
        )
    return s, r


def generalized_recall(
    samples: ArrayLike | Sequence[ArrayLike],
    reference: ArrayLike | Sequence[ArrayLike],
    k: int = 10,
) -> float:
    """Improved recall (Kynkaenniemi et al. 2019): the fraction of ``reference`` images
    that lie inside the k-NN manifold of ``samples``.

    In DRIFT's evaluation, ``samples`` are the fine-tuned model's images and
    ``reference`` the base model's: recall = how much of the base model's output
    distribution the fine-tuned model still covers. Each argument is an (n, D) array
    or a list of groups (pooled). Needs more than k samples.
    """
    s, r = _samples_and_reference(samples, reference)
    return _coverage(r, s, check_positive_int(k, "k"), "samples")


def generalized_precision(
    samples: ArrayLike | Sequence[ArrayLike],
    reference: ArrayLike | Sequence[ArrayLike],
    k: int = 10,
) -> float:
    """Improved precision (Kynkaenniemi et al. 2019): the fraction of ``samples`` inside
    the k-NN manifold of ``reference``. Needs more than k reference images."""
    s, r = _samples_and_reference(samples, reference)
    return _coverage(s, r, check_positive_int(k, "k"), "reference")


def evaluate_groups(
    groups: Sequence[ArrayLike],
    reference: ArrayLike | Sequence[ArrayLike] | None = None,
    config: CoreConfig | None = None,
) -> dict[str, Any]:
    """All metrics of one embedding space for one model's groups (one per prompt).

    Keys: ``num_groups``, ``num_images``, ``mean_pairwise_distance``,
    ``drift_diversity``, ``vendi_per_group``, ``vendi_pooled``; with ``reference``
    (the base model's images, an (n, D) array or a list of groups): also
    ``generalized_recall``, ``generalized_precision`` (pooled, k = ``recall_k``) and
    ``recall_k``. Callers prefix the keys with the embedding space
    (``diversity/dreamsim/...``).
    """
    cfg = config if config is not None else CoreConfig()
    gs = check_groups(groups, min_rows=2)
    out: dict[str, Any] = {
        "num_groups": len(gs),
        "num_images": int(sum(g.shape[0] for g in gs)),
        "mean_pairwise_distance": mean_pairwise_distance(gs),
        "drift_diversity": drift_diversity(gs),
        "vendi_per_group": vendi_score(gs, "per_group"),
        "vendi_pooled": vendi_score(gs, "pooled"),
    }
    if reference is not None:
        out["recall_k"] = cfg.recall_k
        out["generalized_recall"] = generalized_recall(gs, reference, cfg.recall_k)
        out["generalized_precision"] = generalized_precision(gs, reference, cfg.recall_k)
    return out
