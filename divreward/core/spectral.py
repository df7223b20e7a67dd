"""Spectral clustering of one group of image embeddings (DiverseGRPO Sec. 3.2).

Pipeline, shapes for a group of N images with D-dim embeddings:

1. ``cosine_distances``: (N, D) -> (N, N), ``d_ij = 1 - cos(e_i, e_j)`` (DreamSim's own
   distance), one matrix product.
2. ``select_sigma``: the kernel width of Eq. 8 (open in the paper; default: median
   nearest-neighbour distance, see ``docs/algorithms.md`` for why).
3. ``gaussian_affinity``: ``A_ij = exp(-d_ij^2 / (2 sigma^2))`` (Eq. 8), ``A_ii = 1``.
4. ``normalized_affinity``: ``M = D^-1/2 A D^-1/2`` (Eqs. 9-10).
5. Eigenvectors of the **largest** eigenvalues of M (the paper's "smallest" is a slip:
   those of ``I - M``), rows normalised (Ng, Jordan & Weiss 2001), seeded k-means.
6. k by the eigengap of M's eigenvalues (default), fixed, or silhouette.

For N in the thousands the ``approximate`` solver replaces 1-4 by a sparse
k-nearest-neighbour affinity and a partial eigensolver (scipy.sparse.linalg.eigsh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from divreward.core.config import DiverseGRPOConfig, SigmaMode
from divreward.core.validation import (
    ArrayLike,
    check_embeddings,
    check_positive_int,
    check_real,
    check_unit_normalisable,
    plain_dict,
)

__all__ = [
    "ClusterResult",
    "canonical_labels",
    "cosine_distances",
    "eigengap_k",
    "gaussian_affinity",
    "kmeans",
    "normalized_affinity",
    "select_sigma",
    "silhouette_score_precomputed",
    "spectral_cluster",
]

# A row of the spectral embedding whose norm is below this is left unnormalised: such a
# row belongs to an image that is (nearly) disconnected from every chosen eigenvector,
# and dividing by ~0 would blow round-off up into an arbitrary direction.
_ROW_NORM_GUARD = 1e-10

# Pairs sampled to estimate the all-pairs median distance in the approximate solver.
_APPROX_MEDIAN_PAIRS = 20_000

# Above this group size the exact solver computes only the leading eigenpairs.
_FULL_EIGH_MAX_N = 128

# Rows of the (rows, N) similarity block of the approximate solver's neighbour search;
# 1024 x 4096 float32 is 16 MiB.
_KNN_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class ClusterResult:
    """The clustering of one group.

    labels: (N,) int64 cluster index per image, canonical: relabelled in order of first
        appearance (image 0 is in cluster 0), so equal partitions give equal labels.
    k: number of clusters (distinct labels).
    sigma: the kernel width used (for 'local_scaling', the median of the per-image
        widths).
    eigenvalues: the leading eigenvalues of M, decreasing, that the k choice looked at
        (min(N, 2 k_max + 1) of them by default; see ``eigengap_k``).
    solver: 'exact' or 'approximate', the one that ran.
    """

    labels: np.ndarray
    k: int
    sigma: float
    eigenvalues: np.ndarray
    solver: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists of Python numbers and plain scalars."""
        return plain_dict(self)


# --------------------------------------------------------------------------- distances


def cosine_distances(embeddings: ArrayLike) -> np.ndarray:
    """``d_ij = 1 - cos(e_i, e_j)``: (N, D) -> float64 (N, N), symmetric, zero diagonal.

    One matrix product of the unit-normalised rows; round-off is clipped to [0, 2].
    """
    x = check_embeddings(embeddings)
    return _cosine(x, check_unit_normalisable(x))


def _cosine(x: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """cosine_distances on checked float64 (N, D) rows with their (N,) non-zero norms."""
    u = x / norms[:, None]  # (N, D) unit rows
    d = 1.0 - u @ u.T  # (N, N)
    d = 0.5 * (d + d.T)  # exact symmetry despite BLAS summation order
    np.clip(d, 0.0, 2.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def _check_distances(distances: ArrayLike) -> np.ndarray:
    d = check_embeddings(distances, "distances")
    if d.shape[0] != d.shape[1]:
        raise ValueError(f"distances: expected a square (N, N) matrix, got {d.shape}")
    if (d < 0).any():
        i, j = np.argwhere(d < 0)[0]
        raise ValueError(f"distances: entry ({i}, {j}) is negative ({d[i, j]})")
    return d


def _off_diagonal_sorted(d: np.ndarray) -> np.ndarray:
    """Each row's distances to the other images, ascending: (N, N-1)."""
    n = d.shape[0]
    off = d[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return np.sort(off, axis=1)


def local_scaling_neighbor(n: int) -> int:
    """Which neighbour sets image i's width in local scaling: floor(sqrt(N)), in [1, N-1]."""
    return max(1, min(n - 1, math.isqrt(n)))


def select_sigma(
    distances: ArrayLike,
    mode: SigmaMode = "nn_median",
    *,
    sigma: float | None = None,
    floor: float = 1e-6,
) -> float | np.ndarray:
    """Kernel width for Eq. 8 from an (N, N) distance matrix.

    - ``nn_median`` (default): median over images of the distance to the nearest
      other image, i.e. the within-mode scale.
    - ``all_pairs_median``: median of the N(N-1)/2 pairwise distances.
    - ``fixed``: ``sigma`` as given.
    - ``local_scaling``: (N,) array, sigma_i = distance from i to its
      floor(sqrt(N))-th nearest other image (Zelnik-Manor & Perona 2004).

    Every width is floored at ``floor`` so that duplicates never divide by zero. With a
    single image there is no other image: the data-driven modes return ``floor``.
    """
    d = _check_distances(distances)
    floor = check_real(floor, "floor", minimum=0.0)
    if floor <= 0:
        raise ValueError(f"floor: must be > 0, got {floor}")
    if mode == "fixed":
        if sigma is None:
            raise ValueError("sigma: required when mode='fixed'")
        s = check_real(sigma, "sigma")
        if s <= 0:
            raise ValueError(f"sigma: must be > 0, got {s}")
    elif mode not in ("nn_median", "all_pairs_median", "local_scaling"):
        raise ValueError(
            f"mode: unknown sigma mode {mode!r}; expected one of 'nn_median', 'fixed', "
            "'all_pairs_median', 'local_scaling'"
        )
    return _select_sigma(d, mode, sigma, floor)


def _select_sigma(
    d: np.ndarray, mode: SigmaMode, sigma: float | None, floor: float
) -> float | np.ndarray:
    """select_sigma on a checked (N, N) matrix and validated arguments."""
    n = d.shape[0]
    if mode == "fixed":
        assert sigma is not None
        return max(float(sigma), floor)
    if n == 1:
        return np.full(1, floor) if mode == "local_scaling" else floor
    neighbours = _off_diagonal_sorted(d)  # (N, N-1)
    if mode == "nn_median":
        return max(float(np.median(neighbours[:, 0])), floor)
    if mode == "all_pairs_median":
        return max(float(np.median(d[np.triu_indices(n, k=1)])), floor)
    m = local_scaling_neighbor(n)
    return np.maximum(neighbours[:, m - 1], floor)


def gaussian_affinity(distances: ArrayLike, sigma: float | ArrayLike) -> np.ndarray:
    """Eq. 8: ``A_ij = exp(-d_ij^2 / (2 sigma^2))``, (N, N), ``A_ii = 1``.

    ``sigma`` may be an (N,) array of per-image widths (local scaling), giving
    ``A_ij = exp(-d_ij^2 / (2 sigma_i sigma_j))``, which is Eq. 8 when all are equal.
    """
    d = _check_distances(distances)
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim == 0:
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"sigma: must be a positive finite number, got {float(s)}")
    else:
        if s.shape != (d.shape[0],):
            raise ValueError(
                f"sigma: per-image widths must have shape ({d.shape[0]},), got {s.shape}"
            )
        if not (np.isfinite(s).all() and (s > 0).all()):
            i = int(np.flatnonzero(~(np.isfinite(s) & (s > 0)))[0])
            raise ValueError(f"sigma: image {i} has width {s[i]}; widths must be > 0")
    return _gaussian(d, s)


def _gaussian(d: np.ndarray, s: float | np.ndarray) -> np.ndarray:
    """gaussian_affinity on a checked (N, N) matrix and positive width(s)."""
    s = np.asarray(s, dtype=np.float64)
    denom = 2.0 * float(s) ** 2 if s.ndim == 0 else 2.0 * np.outer(s, s)
    a = np.exp(-(d**2) / denom)
    np.fill_diagonal(a, 1.0)
    return a


def normalized_affinity(affinity: ArrayLike) -> np.ndarray:
    """Eqs. 9-10: ``M = D^-1/2 A D^-1/2`` with ``D_ii = sum_j A_ij``; (N, N) -> (N, N).

    With ``A_ii = 1`` every degree is >= 1, so this never divides by zero.
    """
    a = _check_distances(affinity)  # same checks: square, finite, non-negative
    deg = a.sum(axis=1)
    if (deg <= 0).any():
        i = int(np.flatnonzero(deg <= 0)[0])
        raise ValueError(f"affinity: image {i} has zero degree")
    return _normalize(a, deg)


def _normalize(a: np.ndarray, deg: np.ndarray | None = None) -> np.ndarray:
    """normalized_affinity of a checked (N, N) affinity with positive degrees."""
    if deg is None:
        deg = a.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(deg)
    m = a * inv_sqrt[:, None] * inv_sqrt[None, :]
    return 0.5 * (m + m.T)


# --------------------------------------------------------------------------- choosing k


def eigengap_k(
    eigenvalues: ArrayLike,
    k_max: int,
    *,
    saturate: bool = True,
    complete: bool = True,
) -> int:
    """The eigengap choice of k over eigenvalues of M sorted decreasing.

    Literal rule (``saturate=False``): ``k = argmax_{i=1..k_max} (lambda_i -
    lambda_{i+1})``, ties to the smallest k. With ``saturate=True`` (default) the argmax
    runs over i = 1..2*k_max and k is then capped at k_max: the two agree whenever the
    largest gap lies at i <= k_max; when it lies beyond (more well-separated modes than
    k_max, so lambda_1..lambda_{k_max+1} are all ~1), the literal rule picks a gap of
    round-off and returns k ~ 1, while the saturated one returns k_max.

    ``complete``: ``eigenvalues`` is the whole spectrum (N values); then lambda_{N+1} is
    taken as 0, so that N isolated images (M = I, all eigenvalues 1) give k = N (capped
    at k_max) rather than 1. False: only the leading eigenvalues were computed.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    k_max = check_positive_int(k_max, "k_max")
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError("eigenvalues: expected a non-empty 1-D array")
    lam = np.sort(lam)[::-1]
    if complete:
        lam = np.append(lam, 0.0)  # lambda_{N+1} := 0
    window = min(lam.size - 1, 2 * k_max if saturate else k_max)
    if window < 1:  # a single leading eigenvalue and no more: nothing to compare
        return 1
    gaps = lam[:window] - lam[1 : window + 1]
    return min(int(np.argmax(gaps)) + 1, k_max)


def silhouette_score_precomputed(distances: ArrayLike, labels: ArrayLike) -> float:
    """Mean silhouette (Rousseeuw 1987) of ``labels`` on an (N, N) distance matrix.

    ``s_i = (b_i - a_i) / max(a_i, b_i)``, a_i the mean distance to the rest of i's
    cluster, b_i the smallest mean distance to another cluster; s_i = 0 for an image
    alone in its cluster (scikit-learn's convention). Needs 2 <= #clusters <= N - 1.
    """
    d = _check_distances(distances)
    lab = np.asarray(labels)
    _, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    n, kc = d.shape[0], counts.size
    if lab.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {lab.shape}")
    if not 2 <= kc <= n - 1:
        raise ValueError(f"labels: silhouette needs 2..N-1 clusters, got {kc} for N={n}")
    onehot = np.zeros((n, kc))
    onehot[np.arange(n), inv] = 1.0
    sums = d @ onehot  # (N, K): summed distance from i to each cluster
    own = counts[inv]
    a = sums[np.arange(n), inv] / np.maximum(own - 1, 1)
    mean_other = sums / counts[None, :]
    mean_other[np.arange(n), inv] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where((own > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(s.mean())


# --------------------------------------------------------------------------- k-means


def canonical_labels(labels: ArrayLike) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first appearance: int64 (N,)."""
    lab = np.asarray(labels)
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv.reshape(-1)]


def _sq_dists(x: np.ndarray, x2: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances from points x (N, P) to centres c (R, K, P): (R, N, K)."""
    c2 = np.einsum("rkp,rkp->rk", c, c)
    d2 = x2[None, :, None] - 2.0 * np.einsum("np,rkp->rnk", x, c) + c2[:, None, :]
    return np.maximum(d2, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, n_init: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) for n_init restarts at once:
    (N, P) -> centres (R, K, P)."""
    n = x.shape[0]
    x2 = np.einsum("np,np->n", x, x)
    centres = np.empty((n_init, k, x.shape[1]))
    first = rng.integers(n, size=n_init)
    centres[:, 0] = x[first]
    closest = _sq_dists(x, x2, centres[:, :1])[:, :, 0]  # (R, N)
    for j in range(1, k):
        cum = np.cumsum(closest, axis=1)
        target = rng.random(n_init) * cum[:, -1]
        # First index whose cumulative weight exceeds the target: a point at squared
        # distance w is drawn with probability w / total; zero-weight points never are.
        idx = np.minimum((cum <= target[:, None]).sum(axis=1), n - 1)
        centres[:, j] = x[idx]
        closest = np.minimum(closest, _sq_dists(x, x2, centres[:, j : j + 1])[:, :, 0])
    return centres


def kmeans(
    x: ArrayLike,
    k: int,
    *,
    n_init: int = 10,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding, ``n_init`` restarts run side by side.

    Returns (labels (N,) int64 canonicalised, inertia of the best restart). The lowest
    inertia wins (ties: the first restart), so a seed fixes the result. An empty
    cluster is re-seeded at the point farthest from its centre, as scikit-learn does.
    """
    pts = check_embeddings(x, "x")
    n = pts.shape[0]
    k = min(check_positive_int(k, "k"), n)
    n_init = check_positive_int(n_init, "n_init")
    max_iter = check_positive_int(max_iter, "max_iter")
    if k == 1:
        centre = pts.mean(axis=0)
        return np.zeros(n, dtype=np.int64), float(((pts - centre) ** 2).sum())
    rng = np.random.default_rng(seed)
    x2 = np.einsum("np,np->n", pts, pts)
    centres = _kmeans_pp(pts, k, n_init, rng)  # (R, K, P)
    arange_k = np.arange(k)
    prev: np.ndarray | None = None
    for _ in range(max_iter):
        d2 = _sq_dists(pts, x2, centres)  # (R, N, K)
        labels = d2.argmin(axis=2)  # (R, N)
        if prev is not None and np.array_equal(labels, prev):
            break
        prev = labels
        onehot = (labels[:, :, None] == arange_k).astype(np.float64)  # (R, N, K)
        counts = onehot.sum(axis=1)  # (R, K)
        sums = np.einsum("rnk,np->rkp", onehot, pts)
        centres = np.where(
            counts[:, :, None] > 0, sums / np.maximum(counts, 1.0)[:, :, None], centres
        )
        for r, j in np.argwhere(counts == 0):
            own = d2[r, np.arange(n), labels[r]]
            far = int(np.argmax(own))
            centres[r, j] = pts[far]
            d2[r, far, labels[r, far]] = 0.0  # do not give one point to two empty clusters
    d2 = _sq_dists(pts, x2, centres)
    labels = d2.argmin(axis=2)
    inertia = d2.min(axis=2).sum(axis=1)  # (R,)
    best = int(np.argmin(inertia))
    return canonical_labels(labels[best]), float(inertia[best])


# --------------------------------------------------------------------------- clustering


def _row_normalise(v: np.ndarray) -> np.ndarray:
    """Ng-Jordan-Weiss row normalisation of (N, k) eigenvectors, guarding ~0 rows."""
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > _ROW_NORM_GUARD, norms, 1.0)


def _choose_k_and_labels(
    vecs: np.ndarray,
    vals: np.ndarray,
    cfg: DiverseGRPOConfig,
    distances: np.ndarray | None,
) -> np.ndarray:
    """Labels from the leading eigenvectors vecs (N, m) / eigenvalues vals (m,), decreasing."""
    n = vecs.shape[0]
    k_max = min(n, cfg.k_max)

    def cluster(k: int) -> np.ndarray:
        if k == 1:
            return np.zeros(n, dtype=np.int64)
        emb = _row_normalise(vecs[:, :k])
        labels, _ = kmeans(
            emb, k, n_init=cfg.kmeans_n_init, max_iter=cfg.kmeans_max_iter, seed=cfg.seed
        )
        return labels

    if cfg.k_mode == "fixed":
        assert cfg.k is not None  # enforced by DiverseGRPOConfig
        return cluster(min(cfg.k, n))
    if cfg.k_mode in ("eigengap", "eigengap_literal"):
        # vals holds the leading _n_eigen(n, cfg) eigenvalues: all of them when that is N
        saturate = cfg.k_mode == "eigengap"
        return cluster(eigengap_k(vals, k_max, saturate=saturate, complete=vals.size == n))
    # silhouette: best mean silhouette on the cosine distances over k = 2..min(k_max, N-1)
    assert distances is not None
    best_k, best_s, best_labels = 1, -np.inf, np.zeros(n, dtype=np.int64)
    for k in range(2, min(k_max, n - 1) + 1):
        labels = cluster(k)
        if not 2 <= np.unique(labels).size <= n - 1:
            continue
        s = silhouette_score_precomputed(distances, labels)
        if s > best_s:
            best_k, best_s, best_labels = k, s, labels
    if best_k == 1 or best_s < cfg.silhouette_min:
        return np.zeros(n, dtype=np.int64)
    return best_labels


def _n_eigen(n: int, cfg: DiverseGRPOConfig) -> int:
    """How many leading eigenpairs the k choice and the clustering need."""
    window = 2 * cfg.k_max  # the saturated eigengap's search window
    k_need = cfg.k if cfg.k_mode == "fixed" and cfg.k is not None else 0
    return min(n, max(window, k_need) + 1)


def _spectral_exact(x: np.ndarray, norms: np.ndarray, cfg: DiverseGRPOConfig) -> ClusterResult:
    # x: checked float64 (N, D) rows with non-zero norms (N,); the config is validated,
    # so the unchecked helpers run (the public ones re-check every argument).
    n = x.shape[0]
    d = _cosine(x, norms)  # (N, N)
    sig = _select_sigma(d, cfg.sigma_mode, cfg.sigma, cfg.sigma_floor)
    m = _normalize(_gaussian(d, sig))  # (N, N)
    nev = _n_eigen(n, cfg)
    if n > _FULL_EIGH_MAX_N:
        # Only the leading nev eigenpairs are used: a subset solve is ~3-4x cheaper than
        # the full one at N = 256-1024 (measured, one BLAS thread).
        from scipy.linalg import eigh

        vals, vecs = eigh(m, subset_by_index=[n - nev, n - 1], driver="evr")
    else:
        vals, vecs = np.linalg.eigh(m)  # ascending
    # decreasing (clusters are the largest), the leading nev only
    vals, vecs = vals[::-1][:nev], vecs[:, ::-1][:, :nev]
    silhouette_d = d if cfg.k_mode == "silhouette" else None
    return _clustered(vecs, vals, cfg, silhouette_d, sig, "exact")


def _clustered(
    vecs: np.ndarray,
    vals: np.ndarray,
    cfg: DiverseGRPOConfig,
    d: np.ndarray | None,
    sig: np.ndarray | float,
    solver: Literal["exact", "approximate"],
) -> ClusterResult:
    """The result from the leading eigenpairs (decreasing): k chosen by ``cfg`` (``d``:
    the distances, for the silhouette choice), labels numbered canonically."""
    labels = canonical_labels(_choose_k_and_labels(vecs, vals, cfg, d))
    return ClusterResult(
        labels=labels,
        k=int(np.unique(labels).size),
        sigma=float(np.median(sig)),
        eigenvalues=vals.copy(),
        solver=solver,
    )


def _knn_cosine(x: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n_neighbors`` nearest other rows by cosine distance.

    x: (N, D) float; returns (indices (N, m) int64, distances (N, m) float64), ascending
    per row, m = min(n_neighbors, N - 1). Exact search in float32 blocks of rows, so the
    memory is O(block * N), not O(N^2).
    """
    n = x.shape[0]
    m = min(n_neighbors, n - 1)
    u = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # (N, D)
    idx = np.empty((n, m), dtype=np.int64)
    dist = np.empty((n, m), dtype=np.float64)
    for start in range(0, n, _KNN_BLOCK_ROWS):
        stop = min(start + _KNN_BLOCK_ROWS, n)
        sim = u[start:stop] @ u.T  # (B, N)
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        part = np.argpartition(-sim, m - 1, axis=1)[:, :m]  # (B, m), unordered
        psim = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-psim, axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        dist[start:stop] = 1.0 - np.take_along_axis(psim, order, axis=1)
    np.clip(dist, 0.0, 2.0, out=dist)
    return idx, dist


# Components up to this size get a dense eigendecomposition in the approximate solver.
_DENSE_COMPONENT_MAX = 256


def _sparse_leading_eigen(mat: Any, nev: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``nev`` largest eigenpairs of a sparse symmetric M (N, N), decreasing.

    A kNN graph of well-separated modes falls apart into connected components, and
    then eigenvalue 1 has one copy per component. A single-vector Lanczos run (eigsh)
    finds one vector per eigenvalue and misses such copies (seen: 5 of 7). So M, which
    is block-diagonal over the components, is decomposed per component (dense when
    small, eigsh otherwise; within a connected component eigenvalue 1 is simple) and the
    spectra are merged. Ties (the 1s) keep component order, so the result is
    deterministic.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import eigsh

    n = mat.shape[0]
    n_comp, comp = connected_components(mat, directed=False)
    all_vals: list[np.ndarray] = []
    all_vecs: list[np.ndarray] = []  # (N, m_c) each, zero outside the component
    rng = np.random.default_rng(seed)
    for c in range(n_comp):
        members = np.flatnonzero(comp == c)
        sub = mat[members][:, members]
        m_c = min(nev, members.size)
        if members.size <= _DENSE_COMPONENT_MAX or m_c >= members.size - 1:
            v, u = np.linalg.eigh(sub.toarray())
            v, u = v[::-1][:m_c], u[:, ::-1][:, :m_c]
        else:
            v0 = rng.standard_normal(members.size)
            v, u = eigsh(sub, k=m_c, which="LA", v0=v0, tol=1e-10)
        full = np.zeros((n, v.size))
        full[members] = u
        all_vals.append(v)
        all_vecs.append(full)
    vals = np.concatenate(all_vals)
    vecs = np.concatenate(all_vecs, axis=1)
    order = np.argsort(-vals, kind="stable")[:nev]
    return vals[order], vecs[:, order]


def _spectral_approximate(x: np.ndarray, cfg: DiverseGRPOConfig) -> ClusterResult:
    # scipy.sparse is imported here: the exact path (training group sizes) never needs it.
    from scipy import sparse

    n = x.shape[0]
    if cfg.k_mode == "silhouette":
        raise ValueError(
            "k_mode: 'silhouette' needs all pairwise distances and is only available with "
            f"the exact solver; this group of {n} images uses the approximate one (set "
            "solver='exact' or k_mode='eigengap')"
        )
    idx, dist = _knn_cosine(x, cfg.approx_neighbors)  # (N, m)
    m = idx.shape[1]
    floor = cfg.sigma_floor
    rows = np.repeat(np.arange(n), m)
    if cfg.sigma_mode == "fixed":
        assert cfg.sigma is not None
        sig: float | np.ndarray = max(cfg.sigma, floor)
    elif cfg.sigma_mode == "nn_median":
        sig = max(float(np.median(dist[:, 0])), floor)
    elif cfg.sigma_mode == "all_pairs_median":
        # Estimated on a seeded sample of pairs: the exact median needs all N^2 distances.
        rng = np.random.default_rng(cfg.seed)
        i = rng.integers(n, size=_APPROX_MEDIAN_PAIRS)
        j = (i + rng.integers(1, n, size=_APPROX_MEDIAN_PAIRS)) % n  # j != i
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        pair_d = 1.0 - np.einsum("nd,nd->n", u[i], u[j])
        sig = max(float(np.median(pair_d)), floor)
    else:  # local_scaling on the kNN graph
        sig = np.maximum(dist[:, min(local_scaling_neighbor(n), m) - 1], floor)
    if isinstance(sig, np.ndarray):
        w = np.exp(-(dist.ravel() ** 2) / (2.0 * sig[rows] * sig[idx.ravel()]))
    else:
        w = np.exp(-(dist.ravel() ** 2) / (2.0 * sig**2))
    a = sparse.csr_matrix((w, (rows, idx.ravel())), shape=(n, n))
    a = a.maximum(a.T) + sparse.identity(n, format="csr")  # union kNN graph, A_ii = 1
    deg = np.asarray(a.sum(axis=1)).ravel()
    scale = sparse.diags(1.0 / np.sqrt(deg))
    mat = (scale @ a @ scale).tocsr()  # (N, N) sparse M
    vals, vecs = _sparse_leading_eigen(mat, _n_eigen(n, cfg), cfg.seed)
    return _clustered(vecs, vals, cfg, None, sig, "approximate")


def resolve_solver(n: int, cfg: DiverseGRPOConfig) -> Literal["exact", "approximate"]:
    """The solver that ``spectral_cluster`` uses for a group of ``n`` images."""
    if cfg.solver == "auto":
        return "approximate" if n >= cfg.approx_min_n else "exact"
    if cfg.solver == "approximate" and n < 3:
        return "exact"  # a partial eigensolver needs more eigenvalues than it computes
    return cfg.solver


def spectral_cluster(
    embeddings: ArrayLike, config: DiverseGRPOConfig | None = None
) -> ClusterResult:
    """Cluster one group of (N, D) embeddings as DiverseGRPO Sec. 3.2 (see module doc).

    Deterministic for a given input and ``config.seed``; labels are canonical.
    """
    cfg = config if config is not None else DiverseGRPOConfig()
    x = check_embeddings(embeddings)
    norms = check_unit_normalisable(x)
    n = x.shape[0]
    if n == 1:
        sigma = cfg.sigma if cfg.sigma_mode == "fixed" and cfg.sigma else cfg.sigma_floor
        return ClusterResult(
            labels=np.zeros(1, dtype=np.int64),
            k=1,
            sigma=float(max(sigma, cfg.sigma_floor)),
            eigenvalues=np.ones(1),
            solver="exact",
        )
    if resolve_solver(n, cfg) == "approximate":
        return _spectral_approximate(x, cfg)
    return _spectral_exact(x, norms, cfg)
