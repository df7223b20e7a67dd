"""The pure reward math of divreward: plain functions on numpy arrays, no I/O.

Group-relative advantages (Eq. 3), multi-reward aggregation (sum, GDPO), DiverseGRPO's
spectral-clustering creativity bonus (Sec. 3.2), DRIFT's intra-group diversity reward,
decoupled advantages, reward-based subsets and noise-conditioned prompting (Sec. 5,
App. E-F), GARDO's diversity-aware advantage shaping, and the evaluation metrics of both
papers. ``docs/algorithms.md`` gives every equation and pinned choice.

Importing this package loads numpy and pydantic only (no torch, ray, fastapi or
scikit-learn); scipy.linalg / scipy.sparse are loaded by the solvers that use them
(exact above 128 images, approximate) when they run.
"""

from divreward.core import (
    advantages,
    aggregate,
    config,
    diversegrpo,
    drift,
    gardo,
    metrics,
    prompt_noise,
    spectral,
)
from divreward.core.advantages import *  # noqa: F403
from divreward.core.aggregate import *  # noqa: F403
from divreward.core.config import *  # noqa: F403
from divreward.core.diversegrpo import *  # noqa: F403
from divreward.core.drift import *  # noqa: F403
from divreward.core.gardo import *  # noqa: F403
from divreward.core.metrics import *  # noqa: F403
from divreward.core.prompt_noise import *  # noqa: F403
from divreward.core.spectral import *  # noqa: F403

__all__ = [
    *advantages.__all__,
    *aggregate.__all__,
    *config.__all__,
    *diversegrpo.__all__,
    *drift.__all__,
    *gardo.__all__,
    *metrics.__all__,
    *prompt_noise.__all__,
    *spectral.__all__,
]
