"""Evaluation metrics on tiny inputs with closed-form values, and reference checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from core_synth import isotropic, modes

from divreward.core import (
    CoreConfig,
    drift_diversity,
    evaluate_groups,
    generalized_precision,
    generalized_recall,
    mean_pairwise_distance,
    vendi_score,
)

_G1 = np.array([[1.0, 0.0], [0.0, 1.0]])  # one pair: 1 - cos = 1, ||a-b||^2 = 2
_G2 = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # 1 - cos: 0, 2, 2
_G3 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # squared distances 1, 4, 5


def test_mean_pairwise_distance() -> None:
    assert mean_pairwise_distance([_G1]) == pytest.approx(1.0)
    assert mean_pairwise_distance([_G1, _G2]) == pytest.approx((1.0 + 4.0 / 3.0) / 2.0)
    assert mean_pairwise_distance([np.ones((5, 3))]) == pytest.approx(0.0, abs=1e-15)


def test_drift_diversity_eq31() -> None:
    assert drift_diversity([_G3]) == pytest.approx(10.0 / 3.0)
    assert drift_diversity([_G3, _G1]) == pytest.approx((10.0 / 3.0 + 2.0) / 2.0)
    # Eq. 31 literally, for a random group: 2 / (n (n-1)) sum_{i<j} ||e_i - e_j||^2
    x = isotropic(7, dim=12, seed=3)
    lit = sum(((x[i] - x[j]) ** 2).sum() for i in range(7) for j in range(i + 1, 7)) * 2 / 42
    assert drift_diversity([x]) == pytest.approx(lit, rel=1e-12)
    # unit rows: twice the mean cosine distance
    assert drift_diversity([x]) == pytest.approx(2 * mean_pairwise_distance([x]), rel=1e-12)


def test_vendi_closed_forms() -> None:
    eye = np.eye(3)
    assert vendi_score([eye]) == pytest.approx(3.0)
    assert vendi_score([np.ones((4, 5))]) == pytest.approx(1.0)
    # K/3 = [[1,1,0],[1,1,0],[0,0,1]] / 3 -> eigenvalues 2/3, 1/3
    two_one = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert vendi_score([two_one]) == pytest.approx(math.exp(h))
    # per group: each group is one mode (1); pooled: two orthogonal modes (2)
    groups = [np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 3.0]])]
    assert vendi_score(groups, "per_group") == pytest.approx(1.0)
    assert vendi_score(groups, "pooled") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="mode: unknown 'both'"):
        vendi_score(groups, "both")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "dim"), [(6, 40), (40, 6)])  # both Gram branches
def test_vendi_equals_definition(n: int, dim: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, dim))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / n), 0, None)
    lam = lam[lam > 1e-15]
    assert vendi_score([x]) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-9)


def test_generalized_recall_hand_computed() -> None:
    samples = np.array([[0.0], [1.0], [3.0]])  # k = 1 radii: 1, 1, 2
    reference = np.array([[0.5], [2.5], [5.5], [-1.2]])  # in, in, out, out
    assert generalized_recall(samples, reference, k=1) == 0.5
    # reference radii (k = 1): 1.7, 1.7, 2.0, 3.0: every sample lies in that manifold
    assert generalized_precision(samples, reference, k=1) == 1.0
    # a point exactly on a ball's sphere counts as inside
    assert generalized_recall(np.array([[0.0], [2.0]]), np.array([[4.0]]), k=1) == 1.0


def _recall_loop(samples: np.ndarray, reference: np.ndarray, k: int) -> float:
    radii = []
    for i, s in enumerate(samples):
        ds = sorted(float(np.linalg.norm(s - t)) for j, t in enumerate(samples) if j != i)
        radii.append(ds[k - 1])
    inside = [
        any(np.linalg.norm(r - s) <= rad for s, rad in zip(samples, radii, strict=True))
        for r in reference
    ]
    return float(np.mean(inside))


def test_generalized_recall_equals_plain_loop_and_direction() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 5))  # the base model: spread out
    collapsed = 0.2 * rng.standard_normal((40, 5)) + 1.0  # a collapsed fine-tuned model
    r = generalized_recall(collapsed, base, k=10)
    assert r == pytest.approx(_recall_loop(collapsed, base, 10))
    # the collapsed model covers little of the base distribution; the base covers it
    assert r < 0.2
    assert generalized_recall(base, collapsed, k=10) > 0.9
    assert generalized_precision(collapsed, base, k=10) > 0.9
    # lists of groups are pooled
    assert generalized_recall([collapsed[:20], collapsed[20:]], [base], k=10) == r


def test_generalized_recall_needs_more_than_k_samples() -> None:
    with pytest.raises(ValueError, match="samples: the k-NN manifold with k=10 needs at least 11"):
        generalized_recall(np.zeros((10, 3)), np.zeros((50, 3)))
    with pytest.raises(ValueError, match="reference: embeddings have 4 dims but samples have 3"):
        generalized_recall(np.zeros((20, 3)), np.zeros((50, 4)))


def test_evaluate_groups() -> None:
    groups = [modes((4, 4), noise=0.05, dim=64, seed=s)[0] for s in range(3)]
    reference = [modes((2, 2, 2, 2), noise=0.3, dim=64, seed=10 + s)[0] for s in range(3)]
    out = evaluate_groups(groups, reference, CoreConfig(recall_k=3))
    assert out["num_groups"] == 3 and out["num_images"] == 24
    assert out["mean_pairwise_distance"] == mean_pairwise_distance(groups)
    assert out["drift_diversity"] == drift_diversity(groups)
    assert out["vendi_per_group"] == vendi_score(groups)
    assert out["vendi_pooled"] == vendi_score(groups, "pooled")
    assert out["recall_k"] == 3
    assert out["generalized_recall"] == generalized_recall(groups, reference, 3)
    assert out["generalized_precision"] == generalized_precision(groups, reference, 3)
    # two tight modes per group: ~2 effective modes per prompt; 6 pooled, a little less
    # because random centres in 64-D are only nearly orthogonal (|cos| ~ 0.1)
    assert 2.0 < out["vendi_per_group"] < 2.1 and 5.5 < out["vendi_pooled"] < 6.0
    assert set(evaluate_groups(groups)) == {
        "num_groups",
        "num_images",
        "mean_pairwise_distance",
        "drift_diversity",
        "vendi_per_group",
        "vendi_pooled",
    }


def test_metric_errors_name_group_and_image() -> None:
    bad = np.ones((3, 2))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"groups\[1\]\.embeddings: image 1 has a non-finite"):
        evaluate_groups([np.ones((2, 2)), bad])
    with pytest.raises(ValueError, match=r"groups\[0\]\.embeddings: needs at least 2 image"):
        mean_pairwise_distance([np.ones((1, 2))])
    with pytest.raises(ValueError, match="groups: is empty"):
        drift_diversity([])
    with pytest.raises(
        ValueError, match=r"groups\[1\]: embeddings have 3 dims but groups\[0\] has 2"
    ):
        vendi_score([np.ones((2, 2)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="groups: expected a list of"):
        vendi_score(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"groups\[0\]\.embeddings: image 1 has zero norm"):
        mean_pairwise_distance([np.array([[1.0, 0.0], [0.0, 0.0]])])
