"""Flow-GRPO's SDE sampling step with its log-probability, and the plain ODE (Euler) step.

Pure torch on tensors, no model. Rectified-flow convention: ``x_sigma = (1 - sigma) x_0 +
sigma * noise``, the denoiser predicts the velocity ``v = noise - x_0``, and sampling runs
``sigma`` from 1 (noise) to 0 with ``dt = sigma_next - sigma < 0``.

The SDE step (ALGORITHMS.md §3, TRAINER.md; Flow-GRPO Eq. 5)::

    std_t = a * sqrt(sigma / (1 - sigma'))      sigma' = sigma, or sigma_max_next at sigma == 1
    mean  = x * (1 + std_t² / (2 sigma) * dt) + v * (1 + std_t² (1 - sigma) / (2 sigma)) * dt
    x'    = mean + std_t * sqrt(-dt) * eps

and its log-probability is the Gaussian log-density of ``x'`` around ``mean`` with std
``std_t * sqrt(-dt)``, **averaged** over the latent's elements (the scale the PPO clip range
1e-4 refers to). Everything is computed in float32, autocast off: bf16 overflows here, and
the trainer must recompute exactly the rollout's numbers (ratio 1 on the first inner epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["StepOut", "ode_step", "sde_step_with_logprob"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class StepOut:
    """One denoising transition, all float32.

    ``std``, ``std_t`` and ``dt`` have the shape the sigmas came in: ``()`` for scalars,
    ``(B,)`` for per-sample sigmas.
    """

    prev_sample: Tensor  # (B, *latent): x at sigma_next
    log_prob: Tensor  # (B,): Gaussian log-density per element, mean over non-batch dims
    mean: Tensor  # (B, *latent): the transition mean x̄
    std: Tensor  # () or (B,): std_t * sqrt(-dt), the transition std
    std_t: Tensor  # () or (B,): a * sqrt(sigma / (1 - sigma')); 0 for the ODE
    dt: Tensor  # () or (B,): sigma_next - sigma (negative)


def _as_sigma(value: Tensor | float, name: str, batch: int, device: torch.device) -> Tensor:
    """A sigma as a float32 tensor of shape () or (B,) on ``device``."""
    t = torch.as_tensor(value, device=device).detach().float()
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(
            f"{name} must be a scalar or of shape ({batch},) (one per sample); "
            f"got shape {tuple(t.shape)}"
        )
    return t.reshape(()) if t.ndim == 1 and batch != 1 and t.shape[0] == 1 else t


def _bcast(t: Tensor, ref: Tensor) -> Tensor:
    """(B,) or () -> broadcastable against ``ref`` of shape (B, *latent)."""
    return t.reshape(t.shape + (1,) * (ref.ndim - t.ndim)) if t.ndim == 1 else t


def _check_sigmas(sigma: Tensor, sigma_next: Tensor) -> None:
    # One host sync per step; negligible next to a denoiser forward, and a wrong schedule
    # otherwise turns into NaNs (sqrt of a positive dt) far from its cause.
    if bool(((sigma_next >= sigma) | (sigma > 1) | (sigma_next < 0)).any()):
        raise ValueError(
            "sigmas must satisfy 1 >= sigma > sigma_next >= 0 (sampling runs from noise "
            f"towards data); got sigma={sigma.tolist()}, sigma_next={sigma_next.tolist()}"
        )


def _noise(
    shape: torch.Size,
    device: torch.device,
    generator: torch.Generator | Sequence[torch.Generator] | None,
) -> Tensor:
    """Standard normal float32 noise; a list of generators draws one row each (so that a
    sample's noise does not depend on the batch it is in)."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        eps = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        return eps.to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in gens]
    return torch.stack([r.to(device) for r in rows])


def ode_step(
    velocity: Tensor, sample: Tensor, sigma: Tensor | float, sigma_next: Tensor | float
) -> Tensor:
    """The Euler step ``x + v * (sigma_next - sigma)`` in float32 (what
    ``FlowMatchEulerDiscreteScheduler.step`` computes). Returns (B, *latent) float32."""
    with torch.autocast(device_type=sample.device.type, enabled=False):
        x = sample.float()
        v = velocity.float()
        s = _as_sigma(sigma, "sigma", x.shape[0], x.device)
        s_next = _as_sigma(sigma_next, "sigma_next", x.shape[0], x.device)
        return x + v * _bcast(s_next - s, x)


def sde_step_with_logprob(
    velocity: Tensor,
    sample: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    noise_level: float,
    *,
    sigma_max_next: Tensor | float | None = None,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> StepOut:
    """One Flow-GRPO SDE transition from ``sample`` (x at ``sigma``) to ``sigma_next``.

    Args:
        velocity: (B, *latent) the denoiser's velocity at (sample, sigma); any dtype.
        sample: (B, *latent) x at ``sigma``; any dtype (computed in float32).
        sigma, sigma_next: scalars or (B,) tensors, ``1 >= sigma > sigma_next >= 0``.
        noise_level: ``a``; 0 gives the ODE step (log_prob 0, std 0).
        sigma_max_next: the schedule's second sigma, used as sigma' where ``sigma == 1``
            (avoids the division by zero at the first step). None: ``sigma_next``, which is
            the schedule's second sigma exactly when ``sigma`` is the first sigma.
        prev_sample: if given, the log-probability of this x' (detached) instead of sampling.
        generator: noise for sampling; one generator, or one per batch row.
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if velocity.shape != sample.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)} and sample {tuple(sample.shape)} differ in shape"
        )
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(
            f"prev_sample {tuple(prev_sample.shape)} and sample {tuple(sample.shape)} "
            "differ in shape"
        )
    with torch.autocast(device_type=sample.device.type, enabled=False):
        x = sample.float()
        v = velocity.float()
        batch = x.shape[0]
        s = _as_sigma(sigma, "sigma", batch, x.device)
        s_next = _as_sigma(sigma_next, "sigma_next", batch, x.device)
        _check_sigmas(s, s_next)
        dt = s_next - s

        if noise_level == 0:
            mean = x + v * _bcast(dt, x)
            zero = torch.zeros_like(dt)
            prev = mean if prev_sample is None else prev_sample.detach().float()
            return StepOut(
                prev_sample=prev,
                log_prob=torch.zeros(batch, device=x.device, dtype=torch.float32),
                mean=mean,
                std=zero,
                std_t=zero,
                dt=dt,
            )

        s_max = (
            s_next
            if sigma_max_next is None
            else _as_sigma(sigma_max_next, "sigma_max_next", batch, x.device)
        )
        s_prime = torch.where(s == 1, s_max, s)
        std_t = noise_level * torch.sqrt(s / (1 - s_prime))
        std = std_t * torch.sqrt(-dt)

        sb, dtb, std_tb, stdb = (_bcast(t, x) for t in (s, dt, std_t, std))
        mean = (
            x * (1 + std_tb**2 / (2 * sb) * dtb) + v * (1 + std_tb**2 * (1 - sb) / (2 * sb)) * dtb
        )

        if prev_sample is None:
            prev = mean + stdb * _noise(x.shape, x.device, generator)
        else:
            prev = prev_sample.detach().float()
        # Gaussian log-density per element, then the mean over all non-batch dims.
        log_prob = -((prev.detach() - mean) ** 2) / (2 * stdb**2) - torch.log(stdb) - _LOG_SQRT_2PI
        log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
        return StepOut(prev_sample=prev, log_prob=log_prob, mean=mean, std=std, std_t=std_t, dt=dt)
