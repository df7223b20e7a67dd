"""Spectral clustering (DiverseGRPO Sec. 3.2): hand-computed pieces, the reference
check against scikit-learn, and recovery of the true number of modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from core_synth import isotropic, modes, same_partition

from divreward.core import (
    DiverseGRPOConfig,
    canonical_labels,
    cosine_distances,
    eigengap_k,
    gaussian_affinity,
    kmeans,
    normalized_affinity,
    select_sigma,
    silhouette_score_precomputed,
    spectral_cluster,
)

# ---------------------------------------------------------------- distances and sigma


def test_cosine_distances_hand_computed() -> None:
    e = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-5.0, 0.0]])
    d = cosine_distances(e)
    c = 1.0 - 1.0 / math.sqrt(2.0)
    expected = np.array(
        [
            [0.0, 1.0, c, 2.0],
            [1.0, 0.0, c, 1.0],
            [c, c, 0.0, 1.0 + 1.0 / math.sqrt(2.0)],
            [2.0, 1.0, 1.0 + 1.0 / math.sqrt(2.0), 0.0],
        ]
    )
    np.testing.assert_allclose(d, expected, atol=1e-15)
    assert d.dtype == np.float64
    assert (d == d.T).all()
    assert (np.diag(d) == 0.0).all()


def test_cosine_distances_float32_and_clipping() -> None:
    x = isotropic(5, dim=64, seed=3)
    d64 = cosine_distances(x)
    d32 = cosine_distances(x.astype(np.float32))
    np.testing.assert_allclose(d32, d64, atol=1e-6)
    dup = np.repeat(x[:1], 3, axis=0)  # identical rows: round-off must not go below 0
    d = cosine_distances(dup)
    assert (d >= 0).all() and d.max() < 1e-12


# 4 images; nearest-neighbour distances [1, 1, 2, 2]; pairs [1, 4, 5, 3, 4, 2]
_D = np.array([[0.0, 1, 4, 5], [1, 0, 3, 4], [4, 3, 0, 2], [5, 4, 2, 0]])


def test_select_sigma_modes_hand_computed() -> None:
    assert select_sigma(_D) == 1.5  # median of [1, 1, 2, 2]
    assert select_sigma(_D, "nn_median") == 1.5
    assert select_sigma(_D, "all_pairs_median") == 3.5  # median of [1, 2, 3, 4, 4, 5]
    assert select_sigma(_D, "fixed", sigma=0.3) == 0.3
    # floor(sqrt(4)) = 2nd nearest other image: rows [1,4,5], [1,3,4], [2,3,4], [2,4,5]
    np.testing.assert_array_equal(select_sigma(_D, "local_scaling"), [4.0, 3.0, 3.0, 4.0])


def test_select_sigma_floors_duplicates_and_single_image() -> None:
    assert select_sigma(np.zeros((3, 3))) == 1e-6
    assert select_sigma(np.zeros((3, 3)), "all_pairs_median", floor=1e-3) == 1e-3
    assert select_sigma(np.zeros((1, 1))) == 1e-6
    np.testing.assert_array_equal(select_sigma(np.zeros((1, 1)), "local_scaling"), [1e-6])


def test_select_sigma_errors() -> None:
    with pytest.raises(ValueError, match="sigma: required when mode='fixed'"):
        select_sigma(_D, "fixed")
    with pytest.raises(ValueError, match="mode: unknown sigma mode 'mean'"):
        select_sigma(_D, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"distances: expected a square"):
        select_sigma(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"distances: entry \(0, 1\) is negative"):
        select_sigma(np.array([[0.0, -1.0], [-1.0, 0.0]]))


def test_gaussian_affinity_eq8() -> None:
    d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [2.0, 0.5, 0.0]])
    a = gaussian_affinity(d, 1.0)
    expected = np.exp(-(d**2) / 2.0)
    np.testing.assert_allclose(a, expected, rtol=1e-15)
    assert a[0, 1] == pytest.approx(math.exp(-0.5))
    assert (np.diag(a) == 1.0).all()
    # per-image widths (local scaling): exp(-d^2 / (2 s_i s_j))
    a_ls = gaussian_affinity(d, np.array([1.0, 2.0, 0.5]))
    assert a_ls[0, 1] == pytest.approx(math.exp(-1.0 / 4.0))
    assert a_ls[1, 2] == pytest.approx(math.exp(-0.25 / 2.0))
    assert a_ls[0, 2] == pytest.approx(math.exp(-4.0 / 1.0))
    with pytest.raises(ValueError, match="sigma: must be a positive finite number"):
        gaussian_affinity(d, 0.0)
    with pytest.raises(ValueError, match=r"sigma: per-image widths must have shape \(3,\)"):
        gaussian_affinity(d, np.ones(2))


def test_normalized_affinity_two_images_closed_form() -> None:
    a = 0.3
    m = normalized_affinity(np.array([[1.0, a], [a, 1.0]]))
    np.testing.assert_allclose(m, np.array([[1.0, a], [a, 1.0]]) / (1.0 + a), rtol=1e-15)
    vals = np.sort(np.linalg.eigvalsh(m))[::-1]
    np.testing.assert_allclose(vals, [1.0, (1.0 - a) / (1.0 + a)], rtol=1e-14)


def test_normalized_affinity_is_d_half_a_d_half() -> None:
    d = cosine_distances(isotropic(6, dim=16, seed=1))
    a = gaussian_affinity(d, 0.7)
    deg = a.sum(axis=1)
    expected = np.diag(deg**-0.5) @ a @ np.diag(deg**-0.5)
    np.testing.assert_allclose(normalized_affinity(a), expected, rtol=1e-13)
    # the largest eigenvalue of M is exactly 1 (eigenvector D^1/2 1)
    assert np.linalg.eigvalsh(normalized_affinity(a)).max() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- choosing k


@pytest.mark.parametrize(
    ("vals", "k_max", "k"),
    [
        ([1.0, 0.9, 0.2, 0.1], 3, 2),  # gaps 0.1, 0.7, 0.1
        ([1.0, 1.0, 1.0, 0.1], 3, 3),  # three blocks
        ([0.1, 1.0, 0.9, 0.2], 3, 2),  # order of input does not matter
        ([1.0, 0.9, 0.2, 0.1], 1, 1),
        ([1.0, 0.5, 0.5, 0.5], 4, 1),  # ties: gap 0.5 at i = 1 and i = 4 -> smallest
        ([1.0, 1.0], 2, 2),  # two isolated images: lambda_3 := 0 -> gaps 0, 1
        ([1.0, 0.3], 8, 1),  # gaps 0.7, 0.3 (k_max capped at N = 2)
        ([1.0], 8, 1),
        ([1.0] * 12 + [0.1] * 12, 8, 8),  # 12 separated modes, k_max 8: saturates at 8
        ([1.0] * 12 + [0.1] * 12, 16, 12),
    ],
)
def test_eigengap_k(vals: list[float], k_max: int, k: int) -> None:
    assert eigengap_k(np.array(vals), k_max) == k


def test_eigengap_literal_rule_and_partial_spectra() -> None:
    twelve = np.array([1.0] * 12 + [0.1] * 12)
    # the literal argmax over i = 1..k_max sees only zero gaps: k = 1
    assert eigengap_k(twelve, 8, saturate=False) == 1
    assert eigengap_k(twelve, 16, saturate=False) == 12
    # a partial spectrum has no lambda_{N+1} := 0 to compare the last value with
    assert eigengap_k(np.array([1.0, 1.0]), 2, complete=False) == 1
    assert eigengap_k(np.array([1.0, 1.0]), 2, complete=True) == 2
    assert eigengap_k(np.array([1.0, 0.9, 0.2]), 1, complete=False) == 1  # argmax 2, cap 1
    assert eigengap_k(np.array([1.0]), 3, complete=False) == 1
    with pytest.raises(ValueError, match="eigenvalues: expected a non-empty 1-D array"):
        eigengap_k(np.array([]), 3)
    with pytest.raises(ValueError, match="k_max: must be >= 1"):
        eigengap_k(np.array([1.0]), 0)


def test_silhouette_hand_computed_and_vs_sklearn() -> None:
    from sklearn.metrics import silhouette_score

    p = np.array([0.0, 1.0, 10.0, 11.0])
    d = np.abs(p[:, None] - p[None, :])
    s = silhouette_score_precomputed(d, [0, 0, 1, 1])
    assert s == pytest.approx((9.5 / 10.5 + 8.5 / 9.5) / 2.0, rel=1e-15)
    rng = np.random.default_rng(0)
    for trial in range(5):
        x = rng.standard_normal((12, 5))
        dd = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        labels = rng.integers(0, 3, size=12)
        labels[:3] = [0, 1, 2]
        labels[3] = 2  # a cluster of >= 2 and possibly singletons
        ref = silhouette_score(dd, labels, metric="precomputed")
        assert silhouette_score_precomputed(dd, labels) == pytest.approx(ref, abs=1e-12), trial
    with pytest.raises(ValueError, match=r"labels: silhouette needs 2\.\.N-1 clusters"):
        silhouette_score_precomputed(d, [0, 0, 0, 0])


# ---------------------------------------------------------------- k-means


def test_canonical_labels() -> None:
    np.testing.assert_array_equal(canonical_labels([2, 2, 0, 1, 0]), [0, 0, 1, 2, 1])
    np.testing.assert_array_equal(canonical_labels([5]), [0])
    np.testing.assert_array_equal(canonical_labels([-1, 3, -1]), [0, 1, 0])


def test_kmeans_hand_computed() -> None:
    x = np.array([[0.0], [0.1], [10.0], [10.1]])
    labels, inertia = kmeans(x, 2)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    assert inertia == pytest.approx(4 * 0.05**2, rel=1e-12)
    labels1, inertia1 = kmeans(x, 1)
    np.testing.assert_array_equal(labels1, [0, 0, 0, 0])
    assert inertia1 == pytest.approx(2 * 5.05**2 + 2 * 4.95**2, rel=1e-12)


def test_kmeans_matches_sklearn_inertia_and_is_deterministic() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    for k in (2, 3, 5):
        centres = rng.standard_normal((k, 4)) * 6.0
        x = np.repeat(centres, 7, axis=0) + rng.standard_normal((7 * k, 4)) * 0.3
        labels, inertia = kmeans(x, k, seed=3)
        ref = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
        assert inertia == pytest.approx(ref.inertia_, rel=1e-9)
        assert same_partition(labels, ref.labels_)
        again, _ = kmeans(x, k, seed=3)
        np.testing.assert_array_equal(labels, again)


def test_kmeans_more_clusters_than_distinct_points() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    labels, inertia = kmeans(x, 3)
    assert inertia == 0.0
    assert same_partition(labels, [0, 0, 1, 1])


# ---------------------------------------------------------------- reference check


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_equal_sklearn_spectral_clustering(k: int, seed: int) -> None:
    """Same affinity matrix, same k: the same partition as scikit-learn's
    SpectralClustering(affinity='precomputed') on well-separated modes."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(100 * k + seed)
    sizes = tuple(int(s) for s in rng.integers(2, 7, size=k))
    x, truth = modes(sizes, noise=0.3, dim=256, seed=seed)
    cfg = DiverseGRPOConfig(k_mode="fixed", k=k, seed=seed)
    ours = spectral_cluster(x, cfg)
    d = cosine_distances(x)
    a = gaussian_affinity(d, select_sigma(d))
    ref = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed).fit(a)
    assert adjusted_rand_score(ours.labels, ref.labels_) == 1.0
    assert adjusted_rand_score(ours.labels, truth) == 1.0
    assert ours.k == k


# ---------------------------------------------------------------- the default k


@pytest.mark.parametrize(
    "sizes",
    [(5, 2, 1), (4, 4), (3, 3, 2), (10, 8, 4, 2), (4, 4, 4, 4, 4, 4)],
    ids=["5-2-1", "4-4", "3-3-2", "10-8-4-2", "6x4"],
)
@pytest.mark.parametrize("noise", [0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_recovers_true_modes(sizes: tuple[int, ...], noise: float, seed: int) -> None:
    x, truth = modes(sizes, noise=noise, seed=seed)
    res = spectral_cluster(x)
    assert res.k == len(sizes)
    assert same_partition(res.labels, truth)
    np.testing.assert_array_equal(res.labels, canonical_labels(truth))  # canonical form
    assert res.solver == "exact"
    assert res.eigenvalues.shape == (min(len(truth), 17),)  # 2 k_max + 1
    assert (np.diff(res.eigenvalues) <= 1e-12).all()  # decreasing
    assert res.eigenvalues[0] == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("n", [8, 24])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_cluster_for_structureless_and_near_identical(n: int, seed: int) -> None:
    assert spectral_cluster(isotropic(n, seed=seed)).k == 1
    near, _ = modes((n,), noise=0.01, seed=seed)
    assert spectral_cluster(near).k == 1
    ident = np.repeat(isotropic(1, seed=seed), n, axis=0)
    res = spectral_cluster(ident)
    assert res.k == 1 and res.sigma == 1e-6
    np.testing.assert_array_equal(res.labels, np.zeros(n))


def test_all_pairs_median_sigma_merges_modes() -> None:
    """Why nn_median is the default (ALGORITHMS.md 2.2): with the all-pairs median the
    eigengap picks k = 1 on clearly clustered groups."""
    for sizes in [(5, 2, 1), (4, 4), (10, 8, 4, 2)]:
        x, _ = modes(sizes, noise=0.3)
        assert spectral_cluster(x, DiverseGRPOConfig(sigma_mode="all_pairs_median")).k == 1
        assert spectral_cluster(x).k == len(sizes)


def test_silhouette_k_mode_recovers_modes() -> None:
    cfg = DiverseGRPOConfig(k_mode="silhouette")
    for sizes in [(5, 2, 1), (4, 4), (3, 3, 2), (10, 8, 4, 2), (4,) * 6]:
        x, truth = modes(sizes, noise=0.3)
        res = spectral_cluster(x, cfg)
        assert res.k == len(sizes) and same_partition(res.labels, truth)
    assert spectral_cluster(isotropic(8), cfg).k == 1


def test_fixed_sigma_and_fixed_k() -> None:
    x, truth = modes((3, 3, 2), noise=0.3)
    res = spectral_cluster(x, DiverseGRPOConfig(sigma_mode="fixed", sigma=0.2))
    assert res.sigma == 0.2 and res.k == 3 and same_partition(res.labels, truth)
    res2 = spectral_cluster(x, DiverseGRPOConfig(k_mode="fixed", k=2))
    assert res2.k == 2
    # k larger than the group is capped at N
    res3 = spectral_cluster(
        x[:3], DiverseGRPOConfig(k_mode="fixed", k=5, sigma_mode="fixed", sigma=0.01)
    )
    assert res3.k == 3


def test_single_image_and_pairs() -> None:
    one = spectral_cluster(isotropic(1))
    assert one.k == 1 and one.labels.tolist() == [0] and one.sigma == 1e-6
    two = isotropic(2)
    # nn-median sigma = d_12, so A_12 = e^-1/2 and the eigenvalues are 1, (1-a)/(1+a):
    # the gap at i = 1 wins, k = 1
    res = spectral_cluster(two)
    a = math.exp(-0.5)
    np.testing.assert_allclose(res.eigenvalues, [1.0, (1 - a) / (1 + a)], atol=1e-12)
    assert res.k == 1
    # a kernel much narrower than their distance isolates them: M = I, k = 2
    res2 = spectral_cluster(two, DiverseGRPOConfig(sigma_mode="fixed", sigma=0.01))
    assert res2.k == 2 and res2.labels.tolist() == [0, 1]
    assert spectral_cluster(np.repeat(two[:1], 2, axis=0)).k == 1


def test_deterministic_and_seeded() -> None:
    x, _ = modes((6, 5, 4, 3, 2), noise=0.5, seed=4)
    a = spectral_cluster(x, DiverseGRPOConfig(seed=7))
    b = spectral_cluster(x.copy(), DiverseGRPOConfig(seed=7))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.sigma == b.sigma
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)


def test_cluster_result_to_dict_is_json() -> None:
    import json

    x, _ = modes((3, 2), noise=0.3)
    d = spectral_cluster(x).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["labels"] == [0, 0, 0, 1, 1] and d["k"] == 2 and d["solver"] == "exact"


def test_local_scaling_option_runs_on_modes() -> None:
    x, truth = modes((6, 6, 6, 6), noise=0.3)
    res = spectral_cluster(x, DiverseGRPOConfig(sigma_mode="local_scaling"))
    # local scaling's sigma_i reaches across modes at floor(sqrt(24)) = 4 neighbours
    # only for modes smaller than 5: here every mode has 6 images
    assert res.k == 4 and same_partition(res.labels, truth)


def test_exact_subset_eigensolver_matches_full_decomposition() -> None:
    """Above 128 images the exact solver computes only the leading eigenpairs."""
    x, truth = modes((60, 50, 40, 30, 20), noise=0.5, dim=128, seed=9)  # N = 200
    res = spectral_cluster(x, DiverseGRPOConfig(solver="exact"))
    d = cosine_distances(x)
    m = normalized_affinity(gaussian_affinity(d, select_sigma(d)))
    full = np.sort(np.linalg.eigvalsh(m))[::-1]
    np.testing.assert_allclose(res.eigenvalues, full[:17], atol=1e-10)
    assert res.k == 5 and same_partition(res.labels, truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_modes_than_k_max(seed: int) -> None:
    """12 well-separated modes of 4 with k_max = 8: the saturated eigengap returns 8
    clusters, each a union of whole modes; the literal rule sees no real gap.

    lambda_1..lambda_12 are all 1 up to round-off, so the literal rule's argmax over the
    gaps 1..8 picks whichever round-off gap the BLAS kernel left largest (any k in 1..8):
    the test asserts on the gaps and on the rule with round-off removed, not on that k."""
    x, truth = modes((4,) * 12, noise=0.3, seed=seed)
    res = spectral_cluster(x)
    assert res.k == 8
    for mode in range(12):  # no true mode is split
        assert np.unique(res.labels[truth == mode]).size == 1
    lam = np.asarray(res.eigenvalues)
    np.testing.assert_allclose(lam[:12], 1.0, rtol=0, atol=1e-9)  # one per mode
    assert lam[11] - lam[12] > 0.5  # the real gap lies at i = 12, beyond k_max
    # the literal rule's window (gaps 1..k_max) holds round-off only...
    assert np.max(lam[:8] - lam[1:9]) < 1e-9
    # ...so without the round-off every gap in it ties at 0 and it collapses to k = 1
    assert eigengap_k(np.round(lam, 6), 8, saturate=False, complete=False) == 1
    # the saturated rule finds the gap at 12 and caps it at k_max, whatever the round-off
    assert eigengap_k(lam, 8, saturate=True, complete=False) == 8
    wide = spectral_cluster(x, DiverseGRPOConfig(k_max=16))
    assert wide.k == 12 and same_partition(wide.labels, truth)
    # ALGORITHMS.md's literal rule stays selectable as a named option: it applies the
    # literal rule to its eigenvalues (a k of round-off, 1..8) and splits no mode
    literal = spectral_cluster(x, DiverseGRPOConfig(k_mode="eigengap_literal"))
    lit_lam = np.asarray(literal.eigenvalues)
    assert literal.k == eigengap_k(lit_lam, 8, saturate=False, complete=lit_lam.size == 48)
    assert 1 <= literal.k <= 8
    for mode in range(12):
        assert np.unique(literal.labels[truth == mode]).size == 1
