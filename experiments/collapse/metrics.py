"""The experiment's mode metrics (the embedding metrics, Vendi and the mean pairwise
distance, are :mod:`divreward.core`'s)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ideal_distribution", "mode_metrics"]


def ideal_distribution(base_hist: np.ndarray, cfg: Any) -> np.ndarray:
    """p*(m) ∝ p_base(m) exp(w_m / tau): the KL-regularised optimum of the quality reward."""
    w = np.full(cfg.k, 1.0 - cfg.margin)
    w[list(cfg.preferred)] = 1.0  # tau is in units of the unscaled quality
    p = np.maximum(base_hist, 1e-12) * np.exp((w - w.max()) / cfg.tau())
    return p / p.sum()


def mode_metrics(labels: np.ndarray, k: int, ideal: np.ndarray | None) -> dict[str, Any]:
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
