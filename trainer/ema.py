"""An exponential moving average of the LoRA parameters (Flow-GRPO's EMA).

Updated every ``update_every`` optimiser steps with the warm-up decay
``min((1 + s) / (10 + s), decay)`` (s = the number of EMA updates so far), decay 0.9
and every 8 steps in the reference. ``swapped_in(params)`` puts the averages into the
live parameters for evaluation and saving and restores the trained values after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["EMA"]


class EMA:
    def __init__(
        self, params: Sequence[torch.nn.Parameter], decay: float = 0.9, update_every: int = 8
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must lie in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"ema update_every must be >= 1, got {update_every}")
        self.params = list(params)
        self.decay = decay
        self.update_every = update_every
        self.shadow: list[Tensor] = [p.detach().clone().float() for p in self.params]
        self.num_updates = 0

    def current_decay(self) -> float:
        s = self.num_updates
        return min((1.0 + s) / (10.0 + s), self.decay)

    @torch.no_grad()
    def step(self, global_step: int) -> bool:
        """Call after each optimiser step (global_step counts from 1); updates on
        multiples of update_every. Returns whether it updated."""
        if global_step % self.update_every != 0:
            return False
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.num_updates += 1
        return True

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the live parameters inside the block."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {
            "shadow": [s.clone() for s in self.shadow],
            "num_updates": self.num_updates,
            "decay": self.decay,
            "update_every": self.update_every,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(
                f"EMA state has {len(shadow)} tensors but the model has {len(self.shadow)} "
                "trainable parameters (different LoRA rank or targets?)"
            )
        for s, v in zip(self.shadow, shadow, strict=True):
            if s.shape != v.shape:
                raise ValueError(f"EMA state shape {tuple(v.shape)} != {tuple(s.shape)}")
            s.copy_(v)
        self.num_updates = int(state["num_updates"])
