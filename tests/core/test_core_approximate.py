"""The approximate solver (sparse kNN affinity + eigsh) for large groups."""

from __future__ import annotations

import numpy as np
import pytest
from core_synth import modes

from divreward.core import DiverseGRPOConfig, spectral_cluster


@pytest.fixture(scope="module")
def big_group() -> tuple[np.ndarray, np.ndarray]:
    sizes = (120, 100, 80, 60, 50, 40, 30)  # 480 images, 7 modes
    return modes(sizes, noise=0.5, dim=256, seed=11)


def test_approximate_agrees_with_exact(big_group) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, truth = big_group
    exact = spectral_cluster(x, DiverseGRPOConfig(solver="exact"))
    approx = spectral_cluster(x, DiverseGRPOConfig(solver="approximate"))
    assert exact.solver == "exact" and approx.solver == "approximate"
    assert approx.k == exact.k == 7
    assert adjusted_rand_score(approx.labels, exact.labels) >= 0.95
    assert adjusted_rand_score(approx.labels, truth) >= 0.95
    # both see the same leading spectrum: 7 eigenvalues ~1 (7 nearly disconnected modes)
    np.testing.assert_allclose(approx.eigenvalues[:7], 1.0, atol=1e-3)
    assert approx.eigenvalues[7] < 0.9
    assert approx.sigma == pytest.approx(exact.sigma, rel=1e-5)  # same nn-median


@pytest.mark.parametrize("sigma_mode", ["fixed", "all_pairs_median", "local_scaling"])
def test_approximate_sigma_modes(big_group, sigma_mode: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, truth = big_group
    cfg = DiverseGRPOConfig(
        solver="approximate", sigma_mode=sigma_mode, sigma=0.15, k_mode="fixed", k=7
    )
    res = spectral_cluster(x, cfg)
    assert adjusted_rand_score(res.labels, truth) >= 0.95
    if sigma_mode == "fixed":
        assert res.sigma == 0.15


def test_auto_switches_at_approx_min_n(big_group) -> None:
    x, _ = big_group
    assert spectral_cluster(x, DiverseGRPOConfig(approx_min_n=480)).solver == "approximate"
    assert spectral_cluster(x[:100], DiverseGRPOConfig(approx_min_n=480)).solver == "exact"


def test_approximate_refuses_silhouette_and_is_deterministic(big_group) -> None:
    x, _ = big_group
    with pytest.raises(ValueError, match="k_mode: 'silhouette' needs all pairwise distances"):
        spectral_cluster(x, DiverseGRPOConfig(solver="approximate", k_mode="silhouette"))
    cfg = DiverseGRPOConfig(solver="approximate", seed=3)
    np.testing.assert_array_equal(spectral_cluster(x, cfg).labels, spectral_cluster(x, cfg).labels)


def test_approximate_on_tiny_groups_falls_back_or_works() -> None:
    x, _ = modes((2,), noise=0.1, dim=16)
    assert spectral_cluster(x, DiverseGRPOConfig(solver="approximate")).solver == "exact"
    x, _ = modes((5, 5, 5), noise=0.1, dim=16)
    res = spectral_cluster(x, DiverseGRPOConfig(solver="approximate", approx_neighbors=4))
    assert res.k == 3
