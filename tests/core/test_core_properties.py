"""Hypothesis properties: permutation equivariance, finiteness, zero-mean advantages."""

from __future__ import annotations

import numpy as np
from core_synth import modes, same_partition
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from divreward.core import (
    diversegrpo_bonus,
    diversegrpo_rewards,
    drift_rewards,
    group_advantages,
    intra_group_diversity,
)

_FAST = settings(max_examples=40, deadline=None)

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def group_and_perm(draw, max_g: int = 12):
    g = draw(st.integers(1, max_g))
    q = draw(arrays(np.float64, g, elements=finite))
    x = draw(arrays(np.float64, (g, 6), elements=st.floats(-10, 10, allow_nan=False)))
    perm = np.array(draw(st.permutations(range(g))), dtype=np.int64)
    return q, x, perm


@_FAST
@given(arrays(np.float64, st.integers(1, 30), elements=finite))
def test_advantages_zero_mean_finite(r: np.ndarray) -> None:
    a = group_advantages(r)
    assert np.isfinite(a).all()
    assert abs(a.mean()) < 1e-9
    # population-std normalised: sum of squares is G * var / (std + eps)^2 <= G
    assert (a**2).sum() <= r.size + 1e-9


@_FAST
@given(group_and_perm())
def test_drift_permutation_equivariant(case) -> None:
    q, x, perm = case
    a, b = drift_rewards(q, x), drift_rewards(q[perm], x[perm])
    for name in ("diversity", "intrinsic", "rewards", "advantages"):
        va, vb = getattr(a, name), getattr(b, name)
        assert np.isfinite(va).all()
        np.testing.assert_allclose(vb, va[perm], rtol=1e-9, atol=1e-9, err_msg=name)
    assert abs(a.advantages.mean()) < 1e-9
    assert (a.intrinsic >= 0).all() and (a.intrinsic <= 1.0).all()
    np.testing.assert_allclose(a.diversity, intra_group_diversity(x), rtol=1e-12)


@_FAST
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    noise=st.sampled_from([0.05, 0.3, 0.6]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_diversegrpo_permutation_equivariant(sizes, noise, seed, data) -> None:
    """On well-separated modes the partition is unique, so permuting the group must
    permute every output (labels up to renaming)."""
    x, _ = modes(tuple(sizes), noise=noise, dim=128, seed=seed)
    g = x.shape[0]
    q = np.random.default_rng(seed).normal(size=g)
    perm = np.array(data.draw(st.permutations(range(g))), dtype=np.int64)
    a, b = diversegrpo_rewards(q, x), diversegrpo_rewards(q[perm], x[perm])
    assert a.k == b.k
    assert same_partition(b.labels, a.labels[perm])
    for name in ("bonus", "rewards", "advantages"):
        np.testing.assert_allclose(
            getattr(b, name), getattr(a, name)[perm], rtol=1e-12, err_msg=name
        )
    assert abs(a.advantages.mean()) < 1e-9


@_FAST
@given(group_and_perm(max_g=16))
def test_diversegrpo_outputs_consistent_on_arbitrary_groups(case) -> None:
    q, x, _ = case
    x = x + 1e-3  # no all-zero rows (cosine undefined; refused with its own error)
    x[np.linalg.norm(x, axis=1) == 0] = 1.0
    res = diversegrpo_rewards(q, x)
    g = q.size
    assert res.labels.shape == (g,) and 1 <= res.k <= min(g, 8)
    assert res.labels[0] == 0 and set(res.labels.tolist()) == set(range(res.k))  # canonical
    np.testing.assert_array_equal(res.bonus, diversegrpo_bonus(res.labels))
    counts = np.bincount(res.labels)[res.labels]
    np.testing.assert_allclose(res.bonus**2 * counts, g)  # E_i^2 n_k = N
    for v in (res.rewards, res.advantages, res.bonus):
        assert np.isfinite(v).all()
    assert np.isfinite(res.sigma) and res.sigma >= 1e-6
    assert abs(res.advantages.mean()) < 1e-9
