"""DRIFT noise-conditioned prompting: Eq. 35 schedule, Eqs. 34/36/37."""

from __future__ import annotations

import math

import numpy as np
import pytest

from divreward.core import NoisePromptConfig, annealing_gamma, noisy_prompt_embedding


def test_annealing_gamma_piecewise_linear() -> None:
    t = np.array([0.0, 0.2, 0.4, 0.55, 0.7, 0.85, 1.0])
    np.testing.assert_allclose(annealing_gamma(t), [1, 1, 1, 0.75, 0.5, 0.25, 0], atol=1e-15)
    assert float(annealing_gamma(0.5, tau1=0.2, tau2=0.6)) == pytest.approx(0.25)
    assert float(annealing_gamma(0.7, tau1=0.2, tau2=0.6)) == 0.0
    with pytest.raises(ValueError, match="tau1: need 0 <= tau1 < tau2 <= 1"):
        annealing_gamma(0.5, tau1=0.6, tau2=0.6)
    with pytest.raises(ValueError, match=r"t: normalised times must lie in \[0, 1\]"):
        annealing_gamma(1.5)


_E = np.array([1.0, 2.0, 3.0, 4.0])
_N = np.array([1.0, -1.0, 1.0, -1.0])


def test_clean_phase_returns_the_embedding() -> None:
    for t in (0.0, 0.4):
        np.testing.assert_allclose(noisy_prompt_embedding(_E, t, _N), _E, rtol=1e-15)


def test_hand_computed_mid_phase() -> None:
    # t = 0.7 -> gamma = 0.5: e~ = sqrt(.5) e + 0.05 sqrt(.5) n = sqrt(.5) v
    v = np.array([1.05, 1.95, 3.05, 3.95])
    raw = noisy_prompt_embedding(_E, 0.7, _N, NoisePromptConfig(psi=0.0))
    np.testing.assert_allclose(raw, math.sqrt(0.5) * v, rtol=1e-14)
    # rescaled to the clean mean 2.5 and std sqrt(1.25) (Eq. 36); v has std sqrt(1.2025)
    rescaled = noisy_prompt_embedding(_E, 0.7, _N)
    expected = 2.5 + (v - 2.5) * math.sqrt(1.25) / math.sqrt(1.2025)
    np.testing.assert_allclose(rescaled, expected, rtol=1e-14)
    assert rescaled.mean() == pytest.approx(2.5) and rescaled.std() == pytest.approx(
        math.sqrt(1.25)
    )
    half = noisy_prompt_embedding(_E, 0.7, _N, NoisePromptConfig(psi=0.5))
    np.testing.assert_allclose(half, 0.5 * expected + 0.5 * math.sqrt(0.5) * v, rtol=1e-14)


def test_pure_noise_phase_and_batch_axes() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(0.3, 2.0, size=(2, 5, 8))  # (batch, tokens, dims)
    n = rng.standard_normal(e.shape)
    out = noisy_prompt_embedding(e, 1.0, n, axis=(1, 2))
    for b in range(2):  # gamma = 0: standardised noise with each prompt's mean and std
        z = (n[b] - n[b].mean()) / n[b].std()
        np.testing.assert_allclose(out[b], z * e[b].std() + e[b].mean(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"noise: shape \(3,\) differs"):
        noisy_prompt_embedding(_E, 0.5, np.ones(3))
    with pytest.raises(ValueError, match="embedding: has non-finite values"):
        noisy_prompt_embedding(np.array([1.0, np.nan]), 0.5, np.ones(2))


def test_constant_embedding_is_only_shifted() -> None:
    out = noisy_prompt_embedding(np.full(4, 3.0), 0.2, np.ones(4))
    np.testing.assert_allclose(out, np.full(4, 3.0))
