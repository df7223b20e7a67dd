"""GARDO's trainer-side parts: the uncertainty gate of the KL and the reference reset.

arXiv 2512.24138 (Sec. 4.1-4.2, Eq. 7, Alg. 1) and its code (tinnerhrhe/GARDO,
``scripts/train_sd3_grpo_gardo.py``); ``docs/algorithms.md`` gives the choices. Per step:

1. **uncertainty** over the step's batch of B samples (this process's): the win rate
   ``w(y)_i = (1/B) sum_{j != i} 1[y_i > y_j]`` of the proxy reward Q and of each
   auxiliary scorer, ``U_i = w(Q)_i - mean_n w(aux_n)_i`` (Eq. 7; ``-U`` with
   ``uncertainty_sign='code'``);
2. **adaptive k** (the code's ``RiskCompensator``): on the non-negative U values, whose
   mean m is compared with a window of past means: k starts at k0; ``k *= 1 + k_rate``
   when m > max(window), ``k *= 1 - k_rate`` when m < min(window); k clipped to
   [k_min, k_max]; m joins the window (the last ``window`` kept);
3. **gate**: ``U > percentile(non-negative U, 100 (1 - k))`` (numpy's linear
   interpolation), about a fraction k of the non-negative ones; no sample when no U >= 0;
4. **KL** (the loop): the closed-form KL to the reference on the gated samples only,
   averaged over them; ``loss = PPO + beta * KL``;
5. **reset**: an optimiser step whose mean gated KL (over processes) exceeds
   ``kl_threshold``, or ``reset_every`` optimiser steps since the last reset, makes the
   reference the current policy after the training step.

The reference starts as the base model (the LoRA disabled, which is the initial LoRA:
its B is zero); after a reset it is a copy of the LoRA's tensors, swapped into the LoRA
for the reference forward pass. :meth:`GARDOState.state_dict` keeps k, the window, the
reference and the reset bookkeeping in checkpoints (tensors and plain scalars).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from divreward.trainer.config import GARDOTrainConfig

__all__ = ["GARDOState", "GateResult", "uncertainty", "update_k", "win_rate"]


def win_rate(y: np.ndarray) -> np.ndarray:
    """``w_i = (1/B) sum_{j != i} 1[y_i > y_j]`` over a batch (B,); ties win nothing."""
    v = np.asarray(y, dtype=np.float64)
    return (v[:, None] > v[None, :]).sum(axis=1) / len(v)


def uncertainty(proxy: np.ndarray, aux: Sequence[np.ndarray], sign: str = "paper") -> np.ndarray:
    """Eq. 7: ``U = w(proxy) - mean_n w(aux_n)`` (B,); ``sign='code'`` gives ``-U``."""
    if not aux:
        raise ValueError("uncertainty: needs at least one auxiliary reward")
    u = win_rate(proxy) - np.mean([win_rate(a) for a in aux], axis=0)
    return -u if sign == "code" else u


def update_k(k: float, window: list[float], mean_u: float, cfg: GARDOTrainConfig) -> float:
    """One step of the adaptive k (the code's ``RiskCompensator.update``); appends
    ``mean_u`` to ``window`` (in place, the last ``cfg.window`` kept) and returns k."""
    if not window:
        k = cfg.k0
    elif mean_u > max(window):
        k = k * (1.0 + cfg.k_rate)
    elif mean_u < min(window):
        k = k * (1.0 - cfg.k_rate)
    k = float(np.clip(k, cfg.k_min, cfg.k_max))
    window.append(float(mean_u))
    del window[: -cfg.window]
    return k


@dataclass(frozen=True)
class GateResult:
    """One step's gate: U (B,), the gated samples (B,) bool, k used, the threshold."""

    u: np.ndarray
    gated: np.ndarray
    k: float
    threshold: float | None


@dataclass
class GARDOState:
    """The state GARDO carries across steps (and checkpoints)."""

    cfg: GARDOTrainConfig
    k: float = 0.0
    window: list[float] = field(default_factory=list)
    reference: list[torch.Tensor] | None = None  # None: the base model (LoRA disabled)
    last_reset: int = 0  # optimiser step count at the last reset
    reset_pending: bool = False  # an optimiser step's KL exceeded kl_threshold
    resets: int = 0

    def __post_init__(self) -> None:
        if self.k == 0.0:
            self.k = self.cfg.k0

    # ---------------------------------------------------------------- gate
    def gate(self, proxy: np.ndarray, aux: Sequence[np.ndarray]) -> GateResult:
        """The step's uncertainty and gate (updates k and the window)."""
        u = uncertainty(proxy, aux, self.cfg.uncertainty_sign)
        nonneg = u[u >= 0]
        if nonneg.size == 0:  # nothing the proxy over-rates: no KL this step, k unchanged
            return GateResult(u, np.zeros(len(u), dtype=bool), self.k, None)
        self.k = update_k(self.k, self.window, float(nonneg.mean()), self.cfg)
        threshold = float(np.percentile(nonneg, 100.0 - 100.0 * self.k))
        return GateResult(u, u > threshold, self.k, threshold)

    # ---------------------------------------------------------------- reset
    def after_optimizer_step(self, kl: float) -> None:
        """``kl``: that optimiser step's mean gated KL, averaged over processes."""
        if kl > self.cfg.kl_threshold:
            self.reset_pending = True

    def maybe_reset(self, params: Sequence[torch.nn.Parameter], opt_steps: int) -> bool:
        """After a training step: make the reference the current LoRA when a KL exceeded
        the threshold or ``reset_every`` optimiser steps have passed since the last one."""
        due = self.cfg.reset_every > 0 and opt_steps - self.last_reset >= self.cfg.reset_every
        if not (self.reset_pending or due):
            return False
        self.reference = [p.detach().clone() for p in params]
        self.last_reset, self.reset_pending = opt_steps, False
        self.resets += 1
        return True

    @contextlib.contextmanager
    def reference_policy(
        self, adapter: Any, params: Sequence[torch.nn.Parameter]
    ) -> Iterator[None]:
        """The reference for a forward pass under no_grad: the base model until the first
        reset, then the LoRA with the reference tensors swapped in (and swapped back).
        Run it before the policy's own forward pass of the same backward: the swap writes
        the LoRA's tensors in place."""
        if self.reference is None:
            with adapter.reference():
                yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, r in zip(params, self.reference, strict=True):
                p.copy_(r)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "window": list(self.window),
            "reference": None if self.reference is None else [r.cpu() for r in self.reference],
            "last_reset": self.last_reset,
            "reset_pending": self.reset_pending,
            "resets": self.resets,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        self.k = float(state["k"])
        self.window = [float(v) for v in state["window"]]
        ref = state["reference"]
        self.reference = None if ref is None else [r.to(device) for r in ref]
        self.last_reset = int(state["last_reset"])
        self.reset_pending = bool(state["reset_pending"])
        self.resets = int(state["resets"])
