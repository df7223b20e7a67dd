"""Multi-reward aggregation: the quality Q of each image of one group from its scores.

- ``sum`` (Flow-GRPO's ``multi_score``, this project's default): ``Q = sum_k w_k s_k``.
- ``gdpo`` (GDPO, arXiv 2601.05242, as Flow-Factory's ``advantage_aggregation: gdpo``
  computes it): each reward is first normalised within the group,
  ``s'_k = (s_k - mean_g(s_k)) / max(std_g(s_k), 1e-6)`` (population std), then
  ``Q = sum_k w_k s'_k``. A reward that is constant over the group contributes 0.

Q then goes to the diversity methods and the group advantage exactly as the ``sum`` Q
does (Flow-Factory standardises C = Q once more over the batch: with this project's
group advantage that step is the advantage itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np

__all__ = ["AGGREGATIONS", "GDPO_EPS", "Aggregation", "aggregate_quality"]

Aggregation = Literal["sum", "gdpo"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
#: The floor of the per-reward group std in ``gdpo`` (Flow-Factory's).
GDPO_EPS = 1e-6


def aggregate_quality(
    weights: Mapping[str, float],
    scores: Mapping[str, np.ndarray],
    n: int,
    aggregation: str = "sum",
) -> np.ndarray:
    """Q (float64, ``(n,)``) of one group's ``n`` images, accumulated in the order of
    ``weights``; ``scores[name]`` holds the group's ``n`` scores of each weighted reward."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
    total = np.zeros(n, dtype=np.float64)
    for name, w in weights.items():
        s = np.asarray(scores[name], dtype=np.float64)
        if s.shape != (n,):
            raise ValueError(f"scores[{name!r}] has shape {s.shape}, expected ({n},)")
        if aggregation == "gdpo" and n:
            s = (s - s.mean()) / max(float(s.std()), GDPO_EPS)
        total += w * s
    return total
