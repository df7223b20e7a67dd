"""DRIFT's noise-conditioned prompting (Sec. 5.2, App. F, Eqs. 34-37), on numpy arrays.

At normalised time t (1 = pure noise, 0 = clean image), the prompt embedding e becomes
``e~_t = sqrt(gamma(t)) e + s sqrt(1 - gamma(t)) n`` (Eq. 34, n ~ N(0, I)), rescaled to
the clean embedding's mean and std (Eq. 36, as in CADS) and mixed with weight psi
(Eq. 37). The trainer draws ``n`` (in torch, on its device) and may port these few
lines; this module is the reference they are tested against.
"""

from __future__ import annotations

import numpy as np

from divreward.core.config import NoisePromptConfig
from divreward.core.validation import ArrayLike, check_real, to_numpy

__all__ = ["annealing_gamma", "noisy_prompt_embedding"]


def annealing_gamma(t: ArrayLike, tau1: float = 0.4, tau2: float = 1.0) -> np.ndarray:
    """Eq. 35: 1 for t <= tau1, (tau2 - t) / (tau2 - tau1) between, 0 for t >= tau2.

    t: normalised time(s) in [0, 1], any shape; returns float64 of the same shape.
    """
    tau1 = check_real(tau1, "tau1")
    tau2 = check_real(tau2, "tau2")
    if not 0.0 <= tau1 < tau2 <= 1.0:
        raise ValueError(f"tau1: need 0 <= tau1 < tau2 <= 1, got tau1={tau1}, tau2={tau2}")
    tt = np.asarray(to_numpy(t), dtype=np.float64)
    if not np.isfinite(tt).all() or (tt < 0).any() or (tt > 1).any():
        raise ValueError("t: normalised times must lie in [0, 1]")
    return np.clip((tau2 - tt) / (tau2 - tau1), 0.0, 1.0)


def noisy_prompt_embedding(
    embedding: ArrayLike,
    t: float,
    noise: ArrayLike,
    config: NoisePromptConfig | None = None,
    *,
    axis: int | tuple[int, ...] | None = None,
) -> np.ndarray:
    """Eqs. 34, 36, 37 for one time step: the final perturbed prompt embedding.

    embedding: the clean prompt embedding, any shape (e.g. (L, D) tokens x dims, or
        (B, L, D) with ``axis=(1, 2)`` for per-prompt statistics).
    t: normalised time in [0, 1] (1 = noise). noise: standard normal, same shape.
    axis: axes of the mean / std of Eq. 36 (None: all elements, one prompt).
    Returns float64 of the embedding's shape. Where the noisy embedding is constant
    (std 0) the std ratio of Eq. 36 is undefined and taken as 1 (a shift only).
    """
    cfg = config if config is not None else NoisePromptConfig()
    e = np.asarray(to_numpy(embedding), dtype=np.float64)
    n = np.asarray(to_numpy(noise), dtype=np.float64)
    if n.shape != e.shape:
        raise ValueError(f"noise: shape {n.shape} differs from embedding shape {e.shape}")
    for name, arr in (("embedding", e), ("noise", n)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: has non-finite values")
    gamma = float(annealing_gamma(check_real(t, "t"), cfg.tau1, cfg.tau2))
    noisy = np.sqrt(gamma) * e + cfg.s * np.sqrt(1.0 - gamma) * n  # Eq. 34
    mu_e, sd_e = e.mean(axis=axis, keepdims=True), e.std(axis=axis, keepdims=True)
    mu_n, sd_n = noisy.mean(axis=axis, keepdims=True), noisy.std(axis=axis, keepdims=True)
    ratio = np.divide(sd_e, sd_n, out=np.ones_like(sd_n), where=sd_n > 0)
    rescaled = (noisy - mu_n) * ratio + mu_e  # Eq. 36
    return cfg.psi * rescaled + (1.0 - cfg.psi) * noisy  # Eq. 37
