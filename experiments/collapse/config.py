"""The experiment's settings: the methods, the sweep of their strengths, and every knob.

**The sweep** (:data:`SWEEP`, fixed before any result of the final run was seen; every value
is a ``--set sweep.<method>=[...]`` away): each method is run at every strength, for every
seed of a world's budget, and its *front* is its final checkpoints over the strengths.
GRPO has no strength: its front is its own training curve (an evaluation every
``budget.curve_every`` steps). The strengths, weakest to strongest:

- ``kl`` (GRPO + KL, Flow-GRPO's Eq. 6 at every trained step): weight 0.003, 0.01 (Flow-GRPO's),
  0.03;
- ``sa_reg`` (SA-Reg only, W2 on the first K = 4 steps): weight 0.3, 1.0, 3.0 (0.01 left the
  toy policy unchanged and 10 froze it in the first report);
- ``diversegrpo`` (DiverseGRPO: the spectral-clustering bonus R = Q + beta E, with SA-Reg at its
  fixed default weight 1.0): beta 0.05, 0.2, 0.7 (the paper's 0.7 outweighed a quality gap of
  1.0 in the first report; the weaker two let quality move);
- ``drift`` (DRIFT, all three parts: reward-concentrated subset 2G -> G, prompt noise,
  decoupled advantages A(Q) + lambda A(R_int)): lambda 0.1, 0.3, 1.0;
- ``gardo`` (GARDO: its advantage shaping, the service method 'gardo', plus the trainer's gated
  KL with the world's auxiliary scorers and the reference reset): the gated KL's beta 0.01,
  0.04 (the paper's), 0.16.

A method whose service method or trainer block this divreward does not have (``gardo``
before it is merged), or that the world cannot run (GARDO without auxiliary scorers), is
skipped and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["METHODS", "SWEEP", "CollapseConfig", "Method", "run_id"]


@dataclass(frozen=True)
class Method:
    """One compared method: its label, its fixed TrainConfig settings, and the knob its
    strength sets (None: no strength; GRPO)."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    knob: str | None = None
    knob_label: str = ""
    #: The service-side diversity method it needs (checked against divreward's table).
    service_method: str = "none"
    #: The TrainConfig field it needs (GARDO's trainer block).
    train_field: str | None = None
    #: It needs the world's auxiliary scorers (GARDO's gate).
    needs_aux: bool = False

    def train_overrides(self, strength: float | None, cfg: CollapseConfig) -> dict[str, Any]:
        """TrainConfig fields of this method at ``strength``."""
        over = dict(self.settings)
        if over.get("regulariser") == "sa_reg" and "reg_weight" not in over:
            over["reg_weight"] = cfg.sa_reg_weight  # DiverseGRPO's fixed SA-Reg
        if self.knob is None or strength is None:
            return over
        if self.knob in ("kl_weight", "sa_reg_weight"):
            over["reg_weight"] = strength
        elif self.knob == "beta":
            over["diversity_params"] = {"beta": strength}
        elif self.knob == "lam":
            over["diversity_params"] = {"lam": strength}
        elif self.knob == "gardo.beta":
            over["gardo"] = {"beta": strength}
        else:  # pragma: no cover - the table below only uses the knobs above
            raise ValueError(f"unknown knob {self.knob!r}")
        return over


#: method -> how it runs. Order = the report's.
METHODS: dict[str, Method] = {
    "grpo": Method("GRPO (no reg.)"),
    "kl": Method("GRPO + KL", {"regulariser": "kl"}, "kl_weight", "KL weight"),
    "sa_reg": Method("SA-Reg only", {"regulariser": "sa_reg"}, "sa_reg_weight", "SA-Reg weight"),
    "diversegrpo": Method(
        "DiverseGRPO (bonus + SA-Reg)",
        {"diversity": "diversegrpo", "regulariser": "sa_reg"},
        "beta",
        "beta",
        service_method="diversegrpo",
    ),
    "drift": Method(
        "DRIFT (all three)",
        {"diversity": "drift", "subset": "concentrated", "prompt_noise": True},
        "lam",
        "lambda",
        service_method="drift",
    ),
    "gardo": Method(
        "GARDO (shaping + gated KL + reset)",
        {"diversity": "gardo"},
        "gardo.beta",
        "gated-KL beta",
        service_method="gardo",
        train_field="gardo",
        needs_aux=True,
    ),
}

#: The strengths of the final run, weakest to strongest (see the module's docstring).
SWEEP: dict[str, list[float]] = {
    "kl": [0.003, 0.01, 0.03],
    "sa_reg": [0.3, 1.0, 3.0],
    "diversegrpo": [0.05, 0.2, 0.7],
    "drift": [0.1, 0.3, 1.0],
    "gardo": [0.01, 0.04, 0.16],
}


def run_id(method: str, strength: float | None, seed: int) -> str:
    """``grpo-s0``, ``kl-0.01-s3``: a run's file name stem."""
    return f"{method}-s{seed}" if strength is None else f"{method}-{strength:g}-s{seed}"


class CollapseConfig(BaseModel):
    """Everything the experiment varies. Defaults: the final run of docs/collapse.md."""

    model_config = ConfigDict(extra="forbid")

    worlds: list[str] = Field(
        default_factory=lambda: ["shapes-within-mode", "shapes-quality-is-mode", "digits"],
        description="Worlds, in order (the within-mode world first: the question of issue 19).",
    )
    world: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-world options (the world's fields), e.g. "
        "world.shapes-quality-is-mode.budget.seeds=[0,1].",
    )
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    sweep: dict[str, list[float]] = Field(
        default_factory=lambda: {k: list(v) for k, v in SWEEP.items()}
    )
    # Shared training knobs (a world's ``train`` overrides them).
    group_size: int = Field(default=16, ge=2)
    num_steps: int = Field(default=8, ge=2, description="Denoising steps.")
    noise_level: float = Field(default=0.7, gt=0.0)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    clip_range: float = Field(default=1e-4, gt=0.0)
    lora_rank: int = Field(default=8, ge=1)
    sa_reg_weight: float = Field(
        default=1.0, gt=0.0, description="SA-Reg's weight where it is not the swept strength."
    )
    backend: str = Field(default="service", pattern="^(service|inprocess)$")
    transport: str = Field(default="http", pattern="^(http|grpc)$")
    workers: int = Field(
        default=2, ge=1, description="Training runs at a time (processes; one service)."
    )
    threads: int = Field(default=1, ge=1, description="torch threads per training process.")
    out_dir: str = "bench/results/collapse"
    cache_dir: str = ".cache/toy-collapse"
    grid_samples: int = Field(default=32, ge=1)
    resume: bool = Field(default=True, description="Skip runs whose record is already there.")

    @model_validator(mode="after")
    def _known(self) -> CollapseConfig:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; valid: {list(METHODS)}")
        for m in self.methods:
            if METHODS[m].knob is not None and len(self.sweep.get(m, [])) == 0:
                raise ValueError(f"sweep.{m}: no strengths for a swept method")
        bad = [m for m in self.sweep if m not in METHODS or METHODS[m].knob is None]
        if bad:
            raise ValueError(f"sweep: {bad} have no strength; swept: {list(SWEEP)}")
        return self

    def strengths(self, method: str) -> list[float | None]:
        if METHODS[method].knob is None:
            return [None]
        return list(self.sweep[method])
