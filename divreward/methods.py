"""The diversity methods, as data: name -> request parameters, core function, result.

Every place that knows the methods reads this table: the API schema's unions
(:mod:`divreward.schema`), the per-group result model, the services' config literals,
their dispatch and error tags, the compatibility modes, and the Python client. The
gRPC ``.proto`` is static; ``tests/proto/test_proto_schema.py`` checks it against the
models built from this table, field by field.

Adding a method is: one module with its math (in :mod:`divreward.core`, a pure function
of the group's quality and embeddings), one entry in :data:`METHODS` (its parameters
model with a ``method`` literal, its result model, and the adapter below that runs it),
and its tests. The entry must come before :mod:`divreward.schema` is imported, since
the schema's models are built from the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from divreward.core.advantages import group_advantages
from divreward.core.config import AdvantageConfig, DiverseGRPOConfig, DRIFTConfig, GARDOConfig
from divreward.core.diversegrpo import diversegrpo_rewards
from divreward.core.drift import drift_rewards
from divreward.core.gardo import gardo_rewards

__all__ = [
    "METHODS",
    "DiverseGRPOFields",
    "DiverseGRPOParams",
    "DiversityMethod",
    "DriftFields",
    "DriftParams",
    "GARDOFields",
    "GARDOParams",
    "MethodOutput",
    "NoDiversityParams",
    "NoFields",
    "embedding_methods",
    "method_names",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _method_required(schema: dict[str, Any]) -> None:
    """In the JSON schema, ``method`` is required: it picks the union's member."""
    schema["required"] = [*schema.get("required", []), "method"]


#: The config of every parameters model: ``method`` is the discriminator.
_PARAMS = ConfigDict(json_schema_extra=_method_required)


# ------------------------------------------------------------------ parameters
class DiverseGRPOParams(DiverseGRPOConfig):
    """DiverseGRPO creativity bonus (spectral clustering); unset fields take the server's
    defaults (beta 0.7, nearest-neighbour sigma, eigengap k)."""

    model_config = _PARAMS
    method: Literal["diversegrpo"] = "diversegrpo"


class DriftParams(DRIFTConfig):
    """DRIFT intra-group diversity reward; unset fields take the server's defaults
    (lambda 0.5, gamma 1, sigma_clip 1, decoupled advantages)."""

    model_config = _PARAMS
    method: Literal["drift"] = "drift"


class GARDOParams(GARDOConfig):
    """GARDO diversity-aware advantage shaping: positive advantages scaled by each image's
    cosine distance to its nearest neighbour in the group; the rewards stay the quality.
    variant 'code' (default, the public code): A' = (r - mean r) * w, w = 1 below the group
    mean, else d / mean(d); variant 'paper' (Eq. 8): A' = A * d where A > 0. No std division
    unless std_normalize (GARDO Sec. 4.4). Unset fields take the server's defaults."""

    model_config = _PARAMS
    method: Literal["gardo"] = "gardo"


class NoDiversityParams(_Frozen):
    """Quality only: rewards = combined quality, advantages over the group."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_method_required)
    method: Literal["none"] = "none"


# ------------------------------------------------------------------ results
class DiverseGRPOFields(_Frozen):
    """What DiverseGRPO adds to a group's result."""

    bonus: list[float] = Field(description="DiverseGRPO creativity bonus E_i = sqrt(N / n_k).")
    labels: list[int] = Field(description="DiverseGRPO cluster labels.")
    k: int = Field(description="DiverseGRPO number of clusters.")
    sigma: float = Field(description="DiverseGRPO affinity scale.")


class DriftFields(_Frozen):
    """What DRIFT adds to a group's result."""

    diversity: list[float] = Field(description="DRIFT d_i: mean squared distance to the others.")
    intrinsic: list[float] = Field(
        description="DRIFT intrinsic reward gamma^T d_i clipped to sigma_clip."
    )


class GARDOFields(_Frozen):
    """What GARDO adds to a group's result."""

    nn_distance: list[float] = Field(
        description="GARDO d_i: cosine distance to the nearest other image of the group."
    )
    advantage_weight: list[float] = Field(
        description="GARDO w_i: the factor on the centred reward (1 below the group mean)."
    )


class NoFields(_Frozen):
    """Nothing beyond rewards and advantages."""


@dataclass(frozen=True)
class MethodOutput:
    """One group through a method: (G,) rewards and advantages, and its own fields."""

    rewards: np.ndarray
    advantages: np.ndarray
    fields: BaseModel


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in x]


def _config(params: BaseModel, cls: type[BaseModel]) -> BaseModel:
    return cls.model_validate(params.model_dump(exclude={"method"}))


def _diversegrpo(
    quality: np.ndarray, embeddings: np.ndarray | None, params: BaseModel, adv: AdvantageConfig
) -> MethodOutput:
    res = diversegrpo_rewards(quality, embeddings, _config(params, DiverseGRPOConfig), adv)  # type: ignore[arg-type]
    fields = DiverseGRPOFields(
        bonus=_floats(res.bonus),
        labels=[int(v) for v in res.labels],
        k=int(res.k),
        sigma=float(res.sigma),
    )
    return MethodOutput(res.rewards, res.advantages, fields)


def _drift(
    quality: np.ndarray, embeddings: np.ndarray | None, params: BaseModel, adv: AdvantageConfig
) -> MethodOutput:
    res = drift_rewards(quality, embeddings, _config(params, DRIFTConfig), adv)  # type: ignore[arg-type]
    fields = DriftFields(diversity=_floats(res.diversity), intrinsic=_floats(res.intrinsic))
    return MethodOutput(res.rewards, res.advantages, fields)


def _gardo(
    quality: np.ndarray, embeddings: np.ndarray | None, params: BaseModel, adv: AdvantageConfig
) -> MethodOutput:
    res = gardo_rewards(quality, embeddings, _config(params, GARDOConfig), adv)  # type: ignore[arg-type]
    fields = GARDOFields(nn_distance=_floats(res.nn_distance), advantage_weight=_floats(res.weight))
    return MethodOutput(res.rewards, res.advantages, fields)


def _none(
    quality: np.ndarray, embeddings: np.ndarray | None, params: BaseModel, adv: AdvantageConfig
) -> MethodOutput:
    return MethodOutput(quality, group_advantages(quality, adv.eps), NoFields())


# ------------------------------------------------------------------ the table
Run = Callable[[np.ndarray, np.ndarray | None, BaseModel, AdvantageConfig], MethodOutput]


@dataclass(frozen=True)
class DiversityMethod:
    """One diversity method.

    name: its ``method`` value on the wire (and the proto ``oneof`` member).
    params: the request's parameters model (a ``method: Literal[name]`` field).
    result: the fields it adds to a group's result (all optional in the flat result).
    run: ``run(quality (G,), embeddings (G, D) or None, params, advantage)``.
    needs_embeddings: whether the group's images are embedded for it.
    defaults: the :class:`~divreward.core.CoreConfig` field holding the server's
        defaults of its parameters (None: the params model's own defaults).
    in_rewards: whether its diversity term changes the rewards. False for a method that
        shapes the advantages only (GARDO): a client that computes its own advantages
        from the rewards (the Flow-Factory dialect) would silently lose it, so such a
        client is refused it.
    """

    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    run: Run
    needs_embeddings: bool = True
    defaults: str | None = None
    in_rewards: bool = True


METHODS: dict[str, DiversityMethod] = {
    m.name: m
    for m in (
        DiversityMethod(
            "diversegrpo", DiverseGRPOParams, DiverseGRPOFields, _diversegrpo, True, "diversegrpo"
        ),
        DiversityMethod("drift", DriftParams, DriftFields, _drift, True, "drift"),
        DiversityMethod("gardo", GARDOParams, GARDOFields, _gardo, True, "gardo", in_rewards=False),
        DiversityMethod("none", NoDiversityParams, NoFields, _none, needs_embeddings=False),
    )
}


def method_names() -> tuple[str, ...]:
    """Every method's name, in table order."""
    return tuple(METHODS)


def embedding_methods() -> tuple[DiversityMethod, ...]:
    """The methods that compute a diversity term from embeddings (/v1/diversity's)."""
    return tuple(m for m in METHODS.values() if m.needs_embeddings)
