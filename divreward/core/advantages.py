"""Group-relative advantage (GRPO; Eq. 3 of both DiverseGRPO and DRIFT)."""

from __future__ import annotations

import numpy as np

from divreward.core.validation import ArrayLike, check_real, check_scores

__all__ = ["group_advantages"]


def group_advantages(rewards: ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """``A_i = (R_i - mean(R)) / (std(R) + eps)`` over one group; float64 (G,).

    ``std`` is the population standard deviation (ddof=0), as in Flow-GRPO. A group
    whose rewards are all equal (including G = 1) carries no preference and gets
    exactly 0 for every image, never NaN, whatever ``eps`` is.
    """
    r = check_scores(rewards, "rewards")
    eps = check_real(eps, "eps", minimum=0.0)
    # The mean of equal floats can differ from them in the last bit (24 x -3.3: the
    # formula gives -4.4e-10 with eps = 1e-6, -1 with eps = 0): exact zeros instead.
    if r.max() == r.min():
        return np.zeros_like(r)
    centred = r - r.mean()
    return centred / (r.std() + eps)
