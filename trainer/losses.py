"""The loss terms of one denoising step: PPO-clip, the KL baseline and SA-Reg.

Pure torch on tensors, no model (ALGORITHMS.md §3, TRAINER.md "Loss"). Every function
takes per-sample tensors of one timestep and returns per-sample values, shape (B,), so the
loop decides how to average; everything is computed in float32.

Squared norms of transition means are taken as a **mean over the latent's elements**,
the footing of the per-step log-probability (itself a mean over elements, TRAINER.md):
with a sum, the regulariser's scale would grow with the latent size (16x64x64 for
SD3.5 at 512 px) while the policy term does not, and no single weight would transfer
between resolutions. This is also how the reference implementation reduces its KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

KLForm = Literal["eq6", "reference"]

__all__ = [
    "KLForm",
    "PPOOut",
    "kl_penalty",
    "mean_sq_diff",
    "ppo_clip_loss",
    "sa_reg_w2",
]


@dataclass
class PPOOut:
    """loss: scalar to minimise (mean over the batch). ratio: (B,) exp(logp - logp_old).
    approx_kl: scalar 0.5 * mean((logp - logp_old)^2) (Flow-GRPO's estimate, detached).
    clipfrac: scalar share of samples with |ratio - 1| > clip_range (detached)."""

    loss: Tensor
    ratio: Tensor
    approx_kl: Tensor
    clipfrac: Tensor


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    *,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> PPOOut:
    """PPO's clipped surrogate (Flow-GRPO's form).

    log_prob, old_log_prob, advantages: (B,). Advantages are clamped to ±adv_clip_max;
    ``loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps)))``.
    """
    if not log_prob.shape == old_log_prob.shape == advantages.shape:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)} and "
            f"advantages {tuple(advantages.shape)} must have the same shape"
        )
    if clip_range <= 0 or adv_clip_max <= 0:
        raise ValueError(
            f"clip_range and adv_clip_max must be > 0, got {clip_range} and {adv_clip_max}"
        )
    adv = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    diff = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(diff)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * (diff**2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return PPOOut(loss=loss, ratio=ratio, approx_kl=approx_kl, clipfrac=clipfrac)


def mean_sq_diff(mean: Tensor, ref_mean: Tensor) -> Tensor:
    """(B,) mean over the non-batch dimensions of (mean - ref_mean)^2, in float32."""
    if mean.shape != ref_mean.shape:
        raise ValueError(
            f"mean {tuple(mean.shape)} and ref_mean {tuple(ref_mean.shape)} differ in shape"
        )
    d = (mean.float() - ref_mean.float()) ** 2
    return d.flatten(1).mean(dim=1)


def _per_sample(x: Tensor | float, batch: int, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name}: expected a scalar or shape ({batch},), got {tuple(t.shape)}")
    return t


def kl_penalty(
    mean: Tensor,
    ref_mean: Tensor,
    std_t: Tensor | float,
    dt: Tensor | float,
    *,
    form: KLForm = "eq6",
) -> Tensor:
    """KL between two Gaussian transitions with the same std, per sample (B,).

    'eq6' (default, DiverseGRPO Eq. 6): ``||mu - mu_ref||^2 / (2 sigma_t^2 |dt|)`` (the
    transition variance is sigma_t^2 |dt|). 'reference' (Flow-GRPO's code):
    ``mean((mu - mu_ref)^2) / (2 sigma_t^2)``, without the |dt|. The squared norm is a
    mean over the latent's elements (module docstring). std_t, dt: scalars or (B,).
    """
    msd = mean_sq_diff(mean, ref_mean)
    b = msd.shape[0]
    std = _per_sample(std_t, b, "std_t").to(msd.device)
    if (std <= 0).any():
        raise ValueError("std_t: the KL needs an SDE step (std_t > 0); this step is an ODE step")
    if form == "eq6":
        step = _per_sample(dt, b, "dt").to(msd.device).abs()
        return msd / (2.0 * std**2 * step)
    if form == "reference":
        return msd / (2.0 * std**2)
    raise ValueError(f"form: unknown KL form {form!r}; expected 'eq6' or 'reference'")


def sa_reg_w2(mean: Tensor, ref_mean: Tensor, step_index: int, k: int = 4) -> Tensor:
    """DiverseGRPO's structure-aware regulariser (Eqs. 13-14), per sample (B,).

    ``||mu - mu_ref||^2 / 2`` (a mean over elements) on the first ``k`` denoising steps,
    counted from pure noise (step_index 0 .. k-1), and 0 after.
    """
    if step_index < 0 or k < 0:
        raise ValueError(f"step_index and k must be >= 0, got {step_index} and {k}")
    w2 = mean_sq_diff(mean, ref_mean) / 2.0
    return w2 if step_index < k else torch.zeros_like(w2)
