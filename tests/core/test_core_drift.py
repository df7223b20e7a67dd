"""DRIFT: Eq. 11 diversity, Eqs. 9/13 intrinsic reward, Eq. 12/14 advantages, App. E subsets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from core_synth import isotropic

from divreward.core import (
    AdvantageConfig,
    DRIFTConfig,
    decoupled_advantages,
    drift_rewards,
    group_advantages,
    intra_group_diversity,
    intrinsic_reward,
    reward_concentrated_subset,
    reward_contrast_subset,
    select_subset,
)

_E = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # squared distances 1, 4, 5


def test_diversity_hand_computed() -> None:
    np.testing.assert_allclose(intra_group_diversity(_E), [2.5, 3.0, 4.5], rtol=1e-15)
    np.testing.assert_array_equal(intra_group_diversity([[0.3, 0.4]]), [0.0])
    np.testing.assert_array_equal(intra_group_diversity(np.ones((4, 3))), np.zeros(4))


def test_diversity_equals_plain_loop() -> None:
    x = isotropic(9, dim=32, seed=1) * np.linspace(0.5, 2.0, 9)[:, None]
    loop = [
        sum(float(((x[i] - x[j]) ** 2).sum()) for j in range(9) if j != i) / 8 for i in range(9)
    ]
    np.testing.assert_allclose(intra_group_diversity(x), loop, rtol=1e-12)
    # unit rows: ||a - b||^2 = 2 (1 - cos)
    u = isotropic(5, dim=16, seed=2)
    cos = u @ u.T
    np.testing.assert_allclose(
        intra_group_diversity(u), [(2 * (1 - cos[i])).sum() / 4 for i in range(5)], rtol=1e-12
    )


def test_intrinsic_reward_discount_and_clip() -> None:
    d = np.array([0.5, 2.0, 0.0])
    np.testing.assert_allclose(
        intrinsic_reward(d, gamma=0.9, num_steps=2, sigma_clip=1.0), [0.405, 1.0, 0.0]
    )
    np.testing.assert_array_equal(intrinsic_reward(d), [0.5, 1.0, 0.0])  # gamma^50 = 1
    np.testing.assert_allclose(
        intrinsic_reward(d, gamma=0.99, num_steps=50, sigma_clip=5.0), 0.99**50 * d
    )
    np.testing.assert_array_equal(intrinsic_reward([-0.2], sigma_clip=1.0), [0.0])
    np.testing.assert_array_equal(intrinsic_reward(d, gamma=0.5, num_steps=0), [0.5, 1.0, 0.0])


def test_intrinsic_reward_errors() -> None:
    with pytest.raises(ValueError, match=r"gamma: must be in \(0, 1\]"):
        intrinsic_reward([1.0], gamma=1.5)
    with pytest.raises(ValueError, match="num_steps: must be >= 0"):
        intrinsic_reward([1.0], num_steps=-1)
    with pytest.raises(ValueError, match="sigma_clip: must be > 0"):
        intrinsic_reward([1.0], sigma_clip=0.0)
    with pytest.raises(ValueError, match="num_steps: expected an int"):
        intrinsic_reward([1.0], num_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"d: expected a 1-D array .*shape \(1, 1\)"):
        intrinsic_reward([[1.0]])


def test_keyword_names_of_the_contract() -> None:
    """Other areas call these with keywords: the names are part of the contract."""
    np.testing.assert_array_equal(
        intrinsic_reward(d=[0.5], gamma=1.0, num_steps=50, sigma_clip=1.0), [0.5]
    )
    np.testing.assert_allclose(
        decoupled_advantages(quality=[0.0, 1.0], r_int=[0.0, 0.0], lam=0.5, eps=0.0), [-1, 1]
    )


def test_decoupled_advantages_hand_computed() -> None:
    q, r = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]
    aq = np.array([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3)
    ar = np.array([-1 / 3, -1 / 3, 2 / 3]) / (math.sqrt(2) / 3)
    np.testing.assert_allclose(decoupled_advantages(q, r, lam=0.5, eps=0.0), aq + 0.5 * ar)
    np.testing.assert_allclose(decoupled_advantages(q, r, lam=0.0, eps=0.0), aq)
    # an all-equal intrinsic reward (everything clipped) adds nothing
    np.testing.assert_allclose(
        decoupled_advantages(q, [1.0, 1.0, 1.0], lam=0.5), group_advantages(q)
    )
    with pytest.raises(ValueError, match="quality: has 3 values but r_int has 2 rows"):
        decoupled_advantages(q, [1.0, 2.0])


def test_drift_rewards_decoupled_and_not() -> None:
    q = np.array([0.2, 0.5, 0.1])
    res = drift_rewards(q, _E, DRIFTConfig(sigma_clip=4.0))
    d = np.array([2.5, 3.0, 4.5])
    r_int = np.array([2.5, 3.0, 4.0])
    np.testing.assert_allclose(res.diversity, d)
    np.testing.assert_allclose(res.intrinsic, r_int)
    np.testing.assert_allclose(res.rewards, q + 0.5 * r_int)
    np.testing.assert_allclose(res.advantages, group_advantages(q) + 0.5 * group_advantages(r_int))
    assert res.decoupled and res.lam == 0.5
    coupled = drift_rewards(q, _E, DRIFTConfig(sigma_clip=4.0, decoupled=False, lam=2.0))
    np.testing.assert_allclose(coupled.rewards, q + 2.0 * r_int)
    np.testing.assert_allclose(coupled.advantages, group_advantages(q + 2.0 * r_int))
    eps = drift_rewards(q, _E, DRIFTConfig(decoupled=False), AdvantageConfig(eps=1.0))
    rr = q + 0.5 * np.minimum(d, 1.0)
    np.testing.assert_allclose(eps.advantages, (rr - rr.mean()) / (rr.std() + 1.0))
    out = res.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["intrinsic"] == pytest.approx([2.5, 3.0, 4.0])


def test_drift_group_of_one() -> None:
    res = drift_rewards([0.7], [[1.0, 0.0]])
    np.testing.assert_array_equal(res.diversity, [0.0])
    np.testing.assert_array_equal(res.advantages, [0.0])
    np.testing.assert_allclose(res.rewards, [0.7])


# ---------------------------------------------------------------- App. E subsets

# exactly representable in binary, so that hand-computed ties are ties in float64
_POOL = [0.0, 0.25, 0.375, 5.0, 5.125, 9.0]


def test_concentrated_subset_hand_computed() -> None:
    # s = [0.625, 0.375, 0.5, 4.125, 4.0, 7.875] -> i* = 1; nearest to 0.25: 0.375, 0.0
    np.testing.assert_array_equal(reward_concentrated_subset(_POOL, 3), [0, 1, 2])
    # G = 2: s = [0.25, 0.125, 0.125, 0.125, 0.125, 3.875] -> i* = 1 (lowest tie), with 2
    np.testing.assert_array_equal(reward_concentrated_subset(_POOL, 2), [1, 2])
    np.testing.assert_array_equal(reward_concentrated_subset(_POOL, 6), np.arange(6))
    np.testing.assert_array_equal(reward_concentrated_subset(_POOL, 1), [0])


def test_contrast_subset_hand_computed() -> None:
    # t = [14.125, 13.625, 13.375, 9.75, 10.0, 17.75] -> i* = 5; farthest: 0.0, 0.25
    np.testing.assert_array_equal(reward_contrast_subset(_POOL, 3), [0, 1, 5])
    # G = 2: t = [9, 8.75, 8.625, 5, 5.125, 9] -> i* = 0 (lowest tie), farthest 9.0
    np.testing.assert_array_equal(reward_contrast_subset(_POOL, 2), [0, 5])


def test_subset_tie_breaks() -> None:
    # all s_i = 1: i* = 0, its nearest is 1
    np.testing.assert_array_equal(reward_concentrated_subset([0.0, 1.0, 2.0, 3.0], 2), [0, 1])
    # i* = 0 (r = 1); candidates 1 (r = 0) and 2 (r = 2) tie at distance 1: lower index
    np.testing.assert_array_equal(reward_concentrated_subset([1.0, 0.0, 2.0], 2), [0, 1])
    # t = [3, 2, 2, 3] -> i* = 0, farthest 3
    np.testing.assert_array_equal(reward_contrast_subset([0.0, 1.0, 2.0, 3.0], 2), [0, 3])


def _plain_loop(r: list[float], g: int, contrast: bool) -> list[int]:
    p = len(r)
    best, ref = None, -1
    for i in range(p):
        row = sorted(abs(r[i] - r[j]) for j in range(p) if j != i)
        s = sum(row[-(g - 1) :]) if contrast and g > 1 else sum(row[: g - 1])
        if best is None or (s > best if contrast else s < best):
            best, ref = s, i
    others = sorted(
        (j for j in range(p) if j != ref),
        key=lambda j: (-abs(r[j] - r[ref]) if contrast else abs(r[j] - r[ref]), j),
    )
    return sorted([ref, *others[: g - 1]])


@pytest.mark.parametrize("seed", range(8))
def test_subsets_equal_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = int(rng.integers(1, 9))
    # rewards on a coarse grid so that ties happen and exact sums compare equal
    r = (rng.integers(0, 12, size=2 * g) / 4.0).tolist()
    assert reward_concentrated_subset(r, g).tolist() == _plain_loop(r, g, contrast=False)
    assert reward_contrast_subset(r, g).tolist() == _plain_loop(r, g, contrast=True)


def test_subset_errors_and_dispatch() -> None:
    with pytest.raises(ValueError, match="group_size: 7 is larger than the pool of 6"):
        reward_concentrated_subset(_POOL, 7)
    with pytest.raises(ValueError, match="group_size: must be >= 1"):
        reward_contrast_subset(_POOL, 0)
    with pytest.raises(ValueError, match="rewards: image 1 has a non-finite value"):
        reward_concentrated_subset([0.0, float("inf")], 1)
    np.testing.assert_array_equal(select_subset(_POOL, 3), [0, 1, 2])
    np.testing.assert_array_equal(select_subset(_POOL, 3, "contrast"), [0, 1, 5])
    np.testing.assert_array_equal(select_subset(_POOL, 6, "none"), np.arange(6))
    with pytest.raises(ValueError, match="rewards: strategy 'none' keeps the whole pool"):
        select_subset(_POOL, 3, "none")
    with pytest.raises(ValueError, match="strategy: unknown 'random'"):
        select_subset(_POOL, 3, "random")  # type: ignore[arg-type]
