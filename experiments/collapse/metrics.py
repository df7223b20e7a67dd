"""The experiment's mode metrics (the embedding metrics, Vendi and the mean pairwise
distance, are :mod:`divreward.core`'s)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mode_metrics"]


def mode_metrics(labels: np.ndarray, k: int, ideal: np.ndarray | None) -> dict[str, Any]:
    """The mode histogram of ``labels`` (K modes), ``coverage`` (modes holding >= 5% of the
    samples), ``entropy`` (nats) and ``kl_ideal`` = KL(histogram || ideal)."""
    hist = np.bincount(labels, minlength=k) / max(len(labels), 1)
    nz = hist[hist > 0]
    out: dict[str, Any] = {
        "histogram": hist.tolist(),
        "coverage": int((hist >= 0.05).sum()),
        "entropy": float(-(nz * np.log(nz)).sum()) + 0.0,
    }
    if ideal is not None:
        out["kl_ideal"] = float((nz * np.log(nz / ideal[hist > 0])).sum())
    return out
