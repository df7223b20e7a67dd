"""Eq. 3: group-relative advantage, hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from divreward.core import group_advantages


def test_hand_computed_population_std() -> None:
    # mean 2.5, population std sqrt(1.25) (not the sample std sqrt(5/3))
    a = group_advantages([1.0, 2.0, 3.0, 4.0], eps=0.0)
    s = math.sqrt(1.25)
    np.testing.assert_allclose(a, [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-15)


def test_default_eps_is_added_to_std() -> None:
    a = group_advantages([1.0, 2.0, 3.0, 4.0])
    s = math.sqrt(1.25) + 1e-6
    np.testing.assert_allclose(a, [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-15)


def test_large_eps() -> None:
    # std of [0, 2] is 1; with eps = 1 the denominator is 2
    np.testing.assert_allclose(group_advantages([0.0, 2.0], eps=1.0), [-0.5, 0.5])


@pytest.mark.parametrize("rewards", [[0.1, 0.1, 0.1], [7.0], [-3.3] * 24])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_equal_rewards_give_exact_zeros(rewards: list[float], eps: float) -> None:
    a = group_advantages(rewards, eps=eps)
    assert a.dtype == np.float64
    assert a.shape == (len(rewards),)
    assert (a == 0.0).all()


def test_int_and_float32_input() -> None:
    ref = group_advantages([1.0, 5.0, 2.0])
    np.testing.assert_allclose(group_advantages([1, 5, 2]), ref)
    np.testing.assert_allclose(group_advantages(np.array([1, 5, 2], dtype=np.float32)), ref)


def test_bad_input_names_argument() -> None:
    with pytest.raises(ValueError, match=r"rewards: expected a 1-D array.*\(2, 2\)"):
        group_advantages(np.ones((2, 2)))
    with pytest.raises(ValueError, match="rewards: image 1 has a non-finite value"):
        group_advantages([1.0, float("nan")])
    with pytest.raises(ValueError, match="rewards: needs at least 1 value"):
        group_advantages([])
    with pytest.raises(ValueError, match="eps: must be >= 0"):
        group_advantages([1.0, 2.0], eps=-1.0)
