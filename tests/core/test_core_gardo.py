"""GARDO's diversity-aware advantage shaping (divreward.core.gardo) against hand numbers.

The four embeddings below are (2,0), (0,3), (-1,0), (3,4): unit rows (1,0), (0,1), (-1,0),
(0.6,0.8), so the cosine distances are D01 = 1, D02 = 2, D03 = 0.4, D12 = 1, D13 = 0.2,
D23 = 1.6 and the nearest-neighbour distances d = (0.4, 0.2, 1, 0.2), mean 0.45.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from divreward.core import (
    AdvantageConfig,
    CoreConfig,
    GARDOConfig,
    gardo_advantages,
    gardo_rewards,
    nearest_neighbour_distance,
)
from divreward.methods import METHODS, GARDOParams
from divreward.rewards import diversity_params, group_diversity, resolve_diversity

EMB = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [3.0, 4.0]])
D = np.array([0.4, 0.2, 1.0, 0.2])
Q = np.array([1.0, 2.0, 4.0, 5.0])  # mean 3: centred (-2, -1, 1, 2), population std sqrt(2.5)


def test_nearest_neighbour_distance_by_hand() -> None:
    np.testing.assert_allclose(nearest_neighbour_distance(EMB), D, atol=1e-15)
    assert nearest_neighbour_distance([[1.0, 2.0]]).tolist() == [0.0]  # G = 1: no neighbour
    # duplicates are each other's neighbour at distance 0; opposite rows at 2 (clipped cos)
    np.testing.assert_allclose(
        nearest_neighbour_distance([[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]]), [0, 0, 2], atol=1e-15
    )
    with pytest.raises(ValueError, match="embeddings: image 1 has zero norm"):
        nearest_neighbour_distance([[1.0, 0.0], [0.0, 0.0]])


def test_code_variant_by_hand() -> None:
    res = gardo_rewards(Q, EMB)
    assert res.variant == "code" and res.std_normalize is False
    # w = 1 below the mean; d / mean(d) = d / 0.45 at or above it
    np.testing.assert_allclose(res.weight, [1.0, 1.0, 1.0 / 0.45, 0.2 / 0.45], atol=1e-14)
    np.testing.assert_allclose(res.advantages, [-2.0, -1.0, 20 / 9, 8 / 9], atol=1e-14)
    np.testing.assert_array_equal(res.rewards, Q)  # the shaping changes advantages only
    np.testing.assert_array_equal(res.quality, Q)
    np.testing.assert_allclose(res.nn_distance, D, atol=1e-15)
    # the ratio d / mean(d) averages exactly 1 over the group (mean over all G)
    assert np.mean(res.nn_distance / res.nn_distance.mean()) == pytest.approx(1.0, abs=1e-15)


def test_paper_variant_by_hand() -> None:
    res = gardo_rewards(Q, EMB, GARDOConfig(variant="paper"))
    np.testing.assert_allclose(res.weight, [1.0, 1.0, 1.0, 0.2], atol=1e-15)
    np.testing.assert_allclose(res.advantages, [-2.0, -1.0, 1.0, 0.4], atol=1e-14)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_std_normalize_divides_the_centred_reward_first(variant: str) -> None:
    eps = 1e-3
    plain = gardo_rewards(Q, EMB, GARDOConfig(variant=variant))  # type: ignore[arg-type]
    std = gardo_rewards(
        Q,
        EMB,
        GARDOConfig(variant=variant, std_normalize=True),  # type: ignore[arg-type]
        AdvantageConfig(eps=eps),
    )
    np.testing.assert_allclose(std.advantages, plain.advantages / (np.sqrt(2.5) + eps), atol=1e-14)
    np.testing.assert_array_equal(std.weight, plain.weight)


def test_group_of_two() -> None:
    q = [0.0, 1.0]  # centred (-0.5, 0.5)
    apart = [[1.0, 0.0], [0.0, 1.0]]  # d = (1, 1)
    close = [[1.0, 0.0], [0.6, 0.8]]  # d = (0.4, 0.4)
    # code: both d equal the mean, so w = 1 whatever the distance
    np.testing.assert_allclose(gardo_rewards(q, apart).advantages, [-0.5, 0.5], atol=1e-15)
    np.testing.assert_allclose(gardo_rewards(q, close).advantages, [-0.5, 0.5], atol=1e-15)
    # paper: the positive one is scaled by its d
    paper = GARDOConfig(variant="paper")
    np.testing.assert_allclose(gardo_rewards(q, apart, paper).advantages, [-0.5, 0.5], atol=1e-15)
    np.testing.assert_allclose(gardo_rewards(q, close, paper).advantages, [-0.5, 0.2], atol=1e-15)


def test_ties() -> None:
    # a reward equal to the group mean: centred 0, so advantage 0 whatever w is
    res = gardo_rewards([1.0, 2.0, 3.0], [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert res.advantages[1] == 0.0 and res.advantages[0] == -1.0
    # duplicate images above the mean: d = 0, so their positive advantage is cancelled
    dup = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    res = gardo_rewards([3.0, 3.0, 1.0, 1.0], dup)  # d = (0, 0, 1, 1), mean 0.5
    np.testing.assert_allclose(res.nn_distance, [0, 0, 1, 1], atol=1e-15)
    np.testing.assert_allclose(res.advantages, [0.0, 0.0, -1.0, -1.0], atol=1e-15)
    # every image the same (every d = 0, d / mean(d) is 0/0): no diversity signal, w = 1
    same = np.ones((3, 4))
    res = gardo_rewards([0.0, 1.0, 2.0], same)
    np.testing.assert_array_equal(res.weight, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(res.advantages, [-1.0, 0.0, 1.0], atol=1e-15)
    # the paper's variant multiplies by d = 0 there
    res = gardo_rewards([0.0, 1.0, 2.0], same, GARDOConfig(variant="paper"))
    np.testing.assert_allclose(res.advantages, [-1.0, 0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize("cfg", [GARDOConfig(), GARDOConfig(variant="paper", std_normalize=True)])
def test_equal_rewards_give_exact_zeros(cfg: GARDOConfig) -> None:
    res = gardo_rewards([-3.3] * 24, np.random.default_rng(0).normal(size=(24, 5)), cfg)
    assert res.advantages.tolist() == [0.0] * 24
    assert gardo_rewards([7.0], [[1.0, 0.0]], cfg).advantages.tolist() == [0.0]  # G = 1


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("seed", range(5))
def test_the_sign_is_never_flipped_and_negatives_are_untouched(variant: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, emb = rng.normal(size=12), rng.normal(size=(12, 6))
    res = gardo_rewards(q, emb, GARDOConfig(variant=variant))  # type: ignore[arg-type]
    c = q - q.mean()
    assert np.all(res.weight >= 0)
    assert np.all(res.advantages * c >= 0)  # never the opposite sign
    np.testing.assert_array_equal(res.advantages[c < 0], c[c < 0])  # below the mean: as is
    pos = c > 0
    expected = res.nn_distance / res.nn_distance.mean() if variant == "code" else res.nn_distance
    np.testing.assert_allclose(res.weight[pos], expected[pos], rtol=1e-15)


def test_advantages_from_given_distances_and_bad_input() -> None:
    a, w = gardo_advantages(Q, D)
    np.testing.assert_allclose(a, [-2.0, -1.0, 20 / 9, 8 / 9], atol=1e-14)
    np.testing.assert_allclose(w, [1.0, 1.0, 1 / 0.45, 0.2 / 0.45], atol=1e-14)
    with pytest.raises(ValueError, match="nn_distance: must be >= 0"):
        gardo_advantages(Q, -D)
    with pytest.raises(ValueError, match="quality"):
        gardo_rewards(Q[:3], EMB)
    with pytest.raises(ValidationError, match="variant"):
        GARDOConfig(variant="both")  # type: ignore[arg-type]


def test_served_through_the_method_table() -> None:
    """The table's entry: embeddings needed, rewards = quality, its own result fields,
    the server's defaults under CoreConfig.gardo, and the same numbers as the core."""
    m = METHODS["gardo"]
    assert m.needs_embeddings and not m.in_rewards and m.params is GARDOParams
    params = diversity_params("gardo", {"variant": "paper"})
    out = group_diversity(params, EMB, Q, AdvantageConfig())
    assert out.method == "gardo"
    np.testing.assert_allclose(out.advantages, [-2.0, -1.0, 1.0, 0.4], atol=1e-14)
    np.testing.assert_allclose(out.nn_distance, D, atol=1e-15)
    assert out.advantage_weight == pytest.approx([1.0, 1.0, 1.0, 0.2], abs=1e-15)
    assert out.rewards == Q.tolist() and out.bonus is None
    # a request that names only the method takes the server's configured defaults
    core = CoreConfig(gardo=GARDOConfig(std_normalize=True))
    resolved = resolve_diversity(GARDOParams(), core, "none")
    assert resolved.std_normalize is True and resolved.variant == "code"
    assert CoreConfig().gardo == GARDOConfig(variant="code", std_normalize=False)
