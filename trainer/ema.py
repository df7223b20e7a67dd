"""An exponential moving average of the LoRA parameters (Flow-GRPO's EMA), kept by
diffusers' :class:`~diffusers.training_utils.EMAModel`.

Updated every ``update_every`` optimiser steps with the warm-up decay
``min((1 + s) / (10 + s), decay)`` (s = the number of EMA updates so far), decay 0.9
and every 8 steps in the reference. ``swapped_in()`` puts the averages into the live
parameters for evaluation and saving (EMAModel's ``store``/``copy_to``/``restore``) and
restores the trained values after.

EMAModel's own warm-up, ``(1 + n) / (10 + n)`` with n = its update count minus one and
0 at its first update (the shadow starts as a copy), is one update behind Flow-GRPO's,
whose first update already uses 1/10: :class:`_FlowGRPOEMAModel` overrides only
``get_decay`` to give the reference's numbers (tests/trainer/test_trainer_ema.py compares
it with the plain loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import Tensor

__all__ = ["EMA"]


class _FlowGRPOEMAModel(EMAModel):
    def get_decay(self, optimization_step: int) -> float:
        s = optimization_step - 1  # the updates before this one (step() counts first)
        return min((1.0 + s) / (10.0 + s), self.decay)


class EMA:
    def __init__(
        self, params: Sequence[torch.nn.Parameter], decay: float = 0.9, update_every: int = 8
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must lie in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"ema update_every must be >= 1, got {update_every}")
        self.params = list(params)
        self.update_every = update_every
        self.model = _FlowGRPOEMAModel(self.params, decay=decay)
        self.model.to(dtype=torch.float32)  # the averages in fp32 whatever the parameters' dtype

    @property
    def decay(self) -> float:
        return float(self.model.decay)

    @property
    def shadow(self) -> list[Tensor]:
        """The averaged tensors, one per parameter."""
        return self.model.shadow_params

    @property
    def num_updates(self) -> int:
        return int(self.model.optimization_step)

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self.model.optimization_step = int(value)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return self.model.get_decay(self.num_updates + 1)

    @torch.no_grad()
    def step(self, global_step: int) -> bool:
        """Call after each optimiser step (global_step counts from 1); updates on
        multiples of update_every. Returns whether it updated."""
        if global_step % self.update_every != 0:
            return False
        self.model.step(self.params)
        return True

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the live parameters inside the block."""
        self.model.store(self.params)
        self.model.copy_to(self.params)
        try:
            yield
        finally:
            self.model.restore(self.params)

    def state_dict(self) -> dict[str, Any]:
        """EMAModel's state (the averages under ``shadow_params``) and the update period."""
        state = self.model.state_dict()
        state["shadow_params"] = [s.clone() for s in state["shadow_params"]]
        return {**state, "update_every": self.update_every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow):
            raise ValueError(
                f"EMA state has {len(shadow)} tensors but the model has {len(self.shadow)} "
                "trainable parameters (different LoRA rank or targets?)"
            )
        for s, v in zip(self.shadow, shadow, strict=True):
            if s.shape != v.shape:
                raise ValueError(f"EMA state shape {tuple(v.shape)} != {tuple(s.shape)}")
        state = {k: v for k, v in state.items() if k != "update_every"}
        self.model.load_state_dict(
            {**state, "shadow_params": [v.to(s) for s, v in zip(self.shadow, shadow, strict=True)]}
        )
