"""Multi-reward aggregation against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from divreward.core import aggregate_quality

A = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3, population std sqrt(3.5)
B = np.array([0.5, 0.5, 0.9, 0.1])  # mean 0.5, population std sqrt(0.08)
W = {"a": 0.5, "b": 2.0}


def test_sum_is_the_weighted_sum() -> None:
    q = aggregate_quality(W, {"a": A, "b": B}, 4)
    np.testing.assert_allclose(q, [1.5, 2.0, 3.3, 3.2], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(q, aggregate_quality(W, {"a": A, "b": B}, 4, "sum"))


def test_gdpo_normalises_each_reward_in_the_group_first() -> None:
    q = aggregate_quality(W, {"a": A, "b": B}, 4, "gdpo")
    za = np.array([-2.0, -1.0, 0.0, 3.0]) / np.sqrt(3.5)
    zb = np.array([0.0, 0.0, 0.4, -0.4]) / np.sqrt(0.08)
    np.testing.assert_allclose(q, 0.5 * za + 2.0 * zb, rtol=1e-12, atol=1e-12)
    # by hand, image 2: 0.5 * 0/sqrt(3.5) + 2 * 0.4/sqrt(0.08) = 0.8/0.28284...
    assert q[2] == pytest.approx(0.8 / np.sqrt(0.08))
    # a reward's scale no longer matters, only its ranking within the group
    q10 = aggregate_quality(W, {"a": 10 * A + 7, "b": B}, 4, "gdpo")
    np.testing.assert_allclose(q10, q, rtol=1e-12, atol=1e-12)


def test_gdpo_floors_the_std() -> None:
    const = np.full(3, 0.7)
    q = aggregate_quality({"c": 1.0}, {"c": const}, 3, "gdpo")
    np.testing.assert_allclose(q, [0.0, 0.0, 0.0], atol=1e-9)  # (0.7 - mean) / 1e-6
    tiny = np.array([0.0, 0.0, 3e-7])  # std 1.41e-7 < 1e-6: divided by 1e-6
    q = aggregate_quality({"c": 1.0}, {"c": tiny}, 3, "gdpo")
    np.testing.assert_allclose(q, (tiny - 1e-7) / 1e-6, rtol=1e-9)
    assert aggregate_quality({"c": 1.0}, {"c": np.array([5.0])}, 1, "gdpo").tolist() == [0.0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="aggregation must be one of \\['sum', 'gdpo'\\]"):
        aggregate_quality(W, {"a": A, "b": B}, 4, "mean")
    with pytest.raises(ValueError, match=r"scores\['b'\] has shape \(3,\), expected \(4,\)"):
        aggregate_quality(W, {"a": A, "b": B[:3]}, 4)
