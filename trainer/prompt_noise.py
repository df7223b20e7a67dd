"""DRIFT's noise-conditioned prompting (Eqs. 34-37) in torch, for training rollouts.

The same formulas as :mod:`divreward.core.prompt_noise` (the numpy reference these are
tested equal to), on the trainer's device. The noise ``n`` of each (sample, denoising
step) comes from its own generator seeded by ``(seed, sample_id, step_index)``, so the
loss recomputes exactly the embeddings the rollout used, and the PPO ratio is 1 on the
first inner epoch.

Which tensors are perturbed: those of a ``PromptEmbeds`` whose key contains ``"embed"``
(SD3's ``prompt_embeds`` and ``pooled_prompt_embeds``, Flux's likewise), never ids or
masks. The mean / std of Eq. 36 are taken per row (one prompt) over the non-batch axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from divreward.core.config import NoisePromptConfig

__all__ = ["PromptNoiser", "annealing_gamma", "noisy_prompt_embedding"]

_MASK64 = (1 << 63) - 1


def annealing_gamma(t: float, tau1: float = 0.4, tau2: float = 1.0) -> float:
    """Eq. 35: 1 for t <= tau1, (tau2 - t) / (tau2 - tau1) between, 0 for t >= tau2."""
    if not 0.0 <= tau1 < tau2 <= 1.0:
        raise ValueError(f"tau1: need 0 <= tau1 < tau2 <= 1, got tau1={tau1}, tau2={tau2}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t: a normalised time must lie in [0, 1], got {t}")
    return min(max((tau2 - t) / (tau2 - tau1), 0.0), 1.0)


def noisy_prompt_embedding(
    embedding: Tensor, t: float, noise: Tensor, config: NoisePromptConfig | None = None
) -> Tensor:
    """Eqs. 34, 36, 37 for a batch of prompts at one time step.

    embedding: (B, ...) clean embeddings, one prompt per row; noise: standard normal of
    the same shape; t in [0, 1] (1 = noise). Statistics of Eq. 36 per row. Computed in
    float32 (float64 inputs stay float64); returns the embedding's dtype. Where a noisy
    row is constant (std 0) the std ratio is taken as 1, as in the reference.
    """
    cfg = config if config is not None else NoisePromptConfig()
    if noise.shape != embedding.shape:
        raise ValueError(
            f"noise: shape {tuple(noise.shape)} differs from embedding shape "
            f"{tuple(embedding.shape)}"
        )
    work = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    e = embedding.to(work)
    n = noise.to(device=e.device, dtype=work)
    gamma = annealing_gamma(float(t), cfg.tau1, cfg.tau2)
    noisy = gamma**0.5 * e + cfg.s * (1.0 - gamma) ** 0.5 * n  # Eq. 34
    dims = tuple(range(1, e.dim())) if e.dim() > 1 else (0,)
    mu_e = e.mean(dim=dims, keepdim=True)
    sd_e = e.std(dim=dims, keepdim=True, unbiased=False)
    mu_n = noisy.mean(dim=dims, keepdim=True)
    sd_n = noisy.std(dim=dims, keepdim=True, unbiased=False)
    ratio = torch.where(sd_n > 0, sd_e / torch.where(sd_n > 0, sd_n, 1.0), 1.0)
    rescaled = (noisy - mu_n) * ratio + mu_e  # Eq. 36
    out = cfg.psi * rescaled + (1.0 - cfg.psi) * noisy  # Eq. 37
    return out.to(embedding.dtype)


def _mix(*keys: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), the same on every platform."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK64


class PromptNoiser:
    """Per-(sample, step) deterministic prompt noise for one run.

    ``apply(embeds, sample_ids, step_index, t)`` returns a copy of ``embeds`` (a
    ``PromptEmbeds``, or anything with a ``tensors`` dict) whose embedding tensors are
    perturbed; row r uses the noise seeded by ``(seed, sample_ids[r], step_index)``.
    """

    def __init__(self, config: NoisePromptConfig, seed: int) -> None:
        self.config = config
        self.seed = int(seed)

    def noise(self, shape: Sequence[int], sample_id: int, step_index: int, key: str) -> Tensor:
        """Standard normal noise (float32, CPU) of one row, fixed by its identifiers."""
        g = torch.Generator().manual_seed(
            _mix(self.seed, sample_id, step_index, sum(map(ord, key)))
        )
        return torch.randn(tuple(shape), generator=g, dtype=torch.float32)

    def perturb(
        self, name: str, x: Tensor, sample_ids: Sequence[int], step_index: int, t: float
    ) -> Tensor:
        if len(sample_ids) != x.shape[0]:
            raise ValueError(f"sample_ids: {len(sample_ids)} ids for {x.shape[0]} rows of {name!r}")
        n = torch.stack([self.noise(x.shape[1:], int(s), step_index, name) for s in sample_ids])
        return noisy_prompt_embedding(x, t, n.to(x.device), self.config)

    def apply(self, embeds: Any, sample_ids: Sequence[int], step_index: int, t: float) -> Any:
        tensors = {
            k: self.perturb(k, v, sample_ids, step_index, t)
            if "embed" in k and v.is_floating_point()
            else v
            for k, v in embeds.tensors.items()
        }
        return dataclasses.replace(embeds, tensors=tensors)
