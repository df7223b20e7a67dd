"""DiverseGRPO bonus (Eq. 11) and reward (Eq. 12) then Eq. 3."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from core_synth import isotropic, modes

from divreward.core import (
    AdvantageConfig,
    DiverseGRPOConfig,
    diversegrpo_bonus,
    diversegrpo_rewards,
    group_advantages,
)


def test_bonus_hand_computed() -> None:
    e = diversegrpo_bonus([0, 0, 0, 0, 0, 1, 1, 2])
    np.testing.assert_allclose(
        e, [math.sqrt(8 / 5)] * 5 + [2.0, 2.0] + [math.sqrt(8.0)], rtol=1e-15
    )
    np.testing.assert_array_equal(diversegrpo_bonus([3, 3, 3]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(diversegrpo_bonus([4, 1, 9, 2]), [2.0] * 4)  # singletons: sqrt(N)
    np.testing.assert_array_equal(diversegrpo_bonus([0]), [1.0])


def test_bonus_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels: expected integer cluster labels"):
        diversegrpo_bonus([0.5, 1.0])
    with pytest.raises(ValueError, match="labels: is empty"):
        diversegrpo_bonus(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="labels: expected a 1-D array"):
        diversegrpo_bonus(np.zeros((2, 2), dtype=np.int64))


def test_rewards_on_5_2_1_modes() -> None:
    x, truth = modes((5, 2, 1), noise=0.3, seed=2)
    q = np.array([21.0, 21.5, 20.5, 22.0, 21.2, 20.0, 20.8, 19.0])
    res = diversegrpo_rewards(q, x)
    np.testing.assert_array_equal(res.labels, truth)  # already canonical
    assert res.k == 3
    e = np.array([math.sqrt(8 / 5)] * 5 + [2.0, 2.0, math.sqrt(8.0)])
    np.testing.assert_allclose(res.bonus, e, rtol=1e-15)
    np.testing.assert_allclose(res.rewards, q + 0.7 * e, rtol=1e-15)
    np.testing.assert_allclose(res.advantages, group_advantages(q + 0.7 * e), rtol=1e-15)
    np.testing.assert_array_equal(res.quality, q)
    assert res.beta == 0.7 and res.solver == "exact"
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["labels"] == truth.tolist() and d["k"] == 3


def test_beta_and_eps_are_used() -> None:
    x, _ = modes((3, 1), noise=0.3)
    q = np.array([1.0, 2.0, 3.0, 4.0])
    res = diversegrpo_rewards(q, x, DiverseGRPOConfig(beta=2.0), AdvantageConfig(eps=0.5))
    e = np.array([math.sqrt(4 / 3)] * 3 + [2.0])
    np.testing.assert_allclose(res.rewards, q + 2.0 * e)
    r = q + 2.0 * e
    np.testing.assert_allclose(res.advantages, (r - r.mean()) / (r.std() + 0.5))
    zero = diversegrpo_rewards(q, x, DiverseGRPOConfig(beta=0.0))
    np.testing.assert_allclose(zero.rewards, q)


def test_one_mode_gives_no_diversity_preference() -> None:
    x = isotropic(8, seed=5)
    q = np.linspace(0, 1, 8)
    res = diversegrpo_rewards(q, x)
    assert res.k == 1
    np.testing.assert_array_equal(res.bonus, np.ones(8))
    # a constant bonus shifts every reward equally: advantages are A(Q)
    np.testing.assert_allclose(res.advantages, group_advantages(q), rtol=1e-12)


def test_group_of_one_and_two() -> None:
    res = diversegrpo_rewards([3.0], isotropic(1))
    assert res.k == 1
    np.testing.assert_array_equal(res.bonus, [1.0])
    np.testing.assert_allclose(res.rewards, [3.7])
    np.testing.assert_array_equal(res.advantages, [0.0])
    res2 = diversegrpo_rewards([1.0, 2.0], isotropic(2))
    np.testing.assert_array_equal(res2.bonus, [1.0, 1.0])
    np.testing.assert_allclose(res2.advantages, group_advantages([1.7, 2.7]))


def test_mismatched_lengths_name_both() -> None:
    with pytest.raises(ValueError, match="quality: has 3 values but embeddings has 4 rows"):
        diversegrpo_rewards([1.0, 2.0, 3.0], isotropic(4))
