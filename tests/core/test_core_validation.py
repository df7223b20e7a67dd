"""Bad input raises ValueError naming the argument, the image and why; float32,
float64, ints and torch tensors are accepted."""

from __future__ import annotations

import numpy as np
import pytest
from core_synth import modes

from divreward.core import (
    cosine_distances,
    diversegrpo_rewards,
    drift_rewards,
    gardo_rewards,
    intra_group_diversity,
    spectral_cluster,
)

_X, _ = modes((3, 2), noise=0.3, dim=32)
_Q = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize("fn", [diversegrpo_rewards, drift_rewards, gardo_rewards])
def test_group_functions_reject_bad_input(fn) -> None:
    with pytest.raises(
        ValueError, match=r"embeddings: expected a 2-D array .*got 1-D shape \(5,\)"
    ):
        fn(_Q, _X[:, 0])
    with pytest.raises(ValueError, match=r"quality: expected a 1-D array .*got 2-D shape \(5, 1\)"):
        fn(_Q[:, None], _X)
    with pytest.raises(ValueError, match="quality: has 5 values but embeddings has 4 rows"):
        fn(_Q, _X[:4])
    bad = _X.copy()
    bad[3, 7] = np.nan
    with pytest.raises(
        ValueError, match=r"embeddings: image 3 has a non-finite value \(nan\) at dim 7"
    ):
        fn(_Q, bad)
    bad[3, 7] = np.inf
    with pytest.raises(ValueError, match=r"embeddings: image 3 has a non-finite value \(inf\)"):
        fn(_Q, bad)
    with pytest.raises(ValueError, match=r"quality: image 2 has a non-finite value \(nan\)"):
        fn(np.array([1.0, 2.0, np.nan, 4.0, 5.0]), _X)
    with pytest.raises(ValueError, match="quality: needs at least 1 value"):
        fn([], np.zeros((0, 4)))
    with pytest.raises(ValueError, match="embeddings: needs at least 1 image"):
        fn([1.0], np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"embeddings: expected real numbers.*dtype <U1"):
        fn([1.0], [["a"]])
    with pytest.raises(ValueError, match=r"quality: expected real numbers.*dtype bool"):
        fn([True, False], _X[:2])
    with pytest.raises(ValueError, match="embeddings: not a numeric array"):
        fn([1.0, 2.0], [[1.0, 2.0], [1.0]])


def test_zero_norm_embedding_is_refused_where_cosine_is_used() -> None:
    x = _X.copy()
    x[2] = 0.0
    with pytest.raises(ValueError, match="embeddings: image 2 has zero norm"):
        diversegrpo_rewards(_Q, x)
    with pytest.raises(ValueError, match="embeddings: image 2 has zero norm"):
        cosine_distances(x)
    # DRIFT's squared Euclidean distance is defined for a zero vector
    assert np.isfinite(intra_group_diversity(x)).all()


def test_float32_and_int_inputs() -> None:
    ref = diversegrpo_rewards(_Q, _X)
    got = diversegrpo_rewards(_Q.astype(np.float32), _X.astype(np.float32))
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.rewards, ref.rewards, rtol=1e-6)
    ints = drift_rewards([1, 2, 3], [[1, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(ints.diversity, [1.5, 1.5, 1.0])


def test_torch_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    q = torch.tensor(_Q, dtype=torch.float32, requires_grad=True)
    x = torch.tensor(_X, dtype=torch.bfloat16)
    res = diversegrpo_rewards(q, x)
    assert res.k == 2
    np.testing.assert_allclose(res.quality, _Q)
    d = drift_rewards(q, torch.tensor(_X))
    np.testing.assert_allclose(d.diversity, intra_group_diversity(_X), rtol=1e-6)
    assert spectral_cluster(torch.tensor(_X)).k == 2
