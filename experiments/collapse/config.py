"""The experiment's settings: the methods compared and every knob (``--set KEY=VALUE``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from experiments.collapse.pretrain import ToySettings

__all__ = ["METHODS", "CollapseConfig"]

#: method -> (label, TrainConfig overrides). Regulariser weights are set by the config.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("GRPO (no reg.)", {}),
    "grpo_kl": ("GRPO + KL", {"regulariser": "kl"}),
    "bonus": ("DiverseGRPO bonus only", {"diversity": "diversegrpo"}),
    "sa_reg": ("SA-Reg only", {"regulariser": "sa_reg"}),
    "diversegrpo": (
        "DiverseGRPO (bonus + SA-Reg)",
        {"diversity": "diversegrpo", "regulariser": "sa_reg"},
    ),
    "drift": (
        "DRIFT (all three)",
        {"diversity": "drift", "subset": "concentrated", "prompt_noise": True},
    ),
}


class CollapseConfig(BaseModel):
    """Everything the experiment varies. Defaults: the setting of docs/collapse.md."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=8, ge=2, le=24, description="Number of modes K.")
    toy_seed: int = Field(default=0, ge=0, description="Seed of the pre-trained toy world.")
    toy: dict[str, Any] = Field(default_factory=dict, description="ToySettings overrides.")
    preferred: list[int] = Field(default_factory=lambda: [0, 1], description="Preferred modes.")
    margin: float = Field(default=0.2, ge=0.0, lt=1.0, description="Quality of others: 1-margin.")
    crisp_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight of the plugin's crispness term in Q (quality within every mode); "
        "0 in the reported setting (docs/collapse.md says what 1 and 3 did).",
    )
    quality_scale: float = Field(
        default=5.0,
        gt=0.0,
        description="Q is scaled by this: 5 makes the preferred-vs-other gap 1.0, the order "
        "of PickScore differences, so the papers' beta = 0.7 weighs the bonus as they do.",
    )
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    steps: int = Field(default=80, ge=1, description="Training steps per run (the budget).")
    group_size: int = Field(default=16, ge=2)
    prompts_per_step: int = Field(default=1, ge=1)
    num_steps: int = Field(default=8, ge=2, description="Denoising steps.")
    noise_level: float = Field(default=0.7, gt=0.0)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    clip_range: float = Field(default=1e-4, gt=0.0)
    lora_rank: int = Field(default=8, ge=1)
    kl_weight: float = Field(default=0.01, gt=0.0)
    sa_reg_weight: float = Field(
        default=1.0,
        gt=0.0,
        description="SA-Reg's weight. The presets' 0.01 left the toy policy unchanged (the "
        "W2 term is ~1e-4 there); 10 froze it; 1.0 binds without freezing (1-seed check).",
    )
    beta: float = Field(default=0.7, ge=0.0, description="DiverseGRPO's bonus weight.")
    drift_lam: float = Field(default=0.5, ge=0.0, description="DRIFT's lambda.")
    eval_every: int = Field(default=5, ge=1)
    eval_samples: int = Field(default=128, ge=8)
    ideal_temperature: float | None = Field(default=None, gt=0.0)
    backend: str = Field(default="service", pattern="^(service|inprocess)$")
    transport: str = Field(default="http", pattern="^(http|grpc)$")
    reward_url: str | None = Field(
        default=None, description="Use a running service instead of starting one."
    )
    out_dir: str = "bench/results/collapse"
    cache_dir: str = ".cache/toy-collapse"
    grid_samples: int = Field(default=32, ge=1)
    threads: int = Field(default=1, ge=1, description="torch threads in this process.")

    def toy_settings(self) -> ToySettings:
        return ToySettings(**{"k": self.k, "seed": self.toy_seed, **self.toy})

    def tau(self) -> float:
        if self.ideal_temperature is not None:
            return self.ideal_temperature
        return max(self.margin, 1e-6) / math.log(2.0)
