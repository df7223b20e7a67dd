"""One group's rewards, computed in one way wherever they are computed.

The reward service (``services/reward_server``, ``services/diversity_server``) and the
trainer's in-process backend (``trainer/rewards.py``) both call these functions, driven
by the method table (:data:`divreward.methods.METHODS`) and the core config types:

- :func:`combine_quality`: the combined quality ``Q`` of a group from its scorers' scores
  (:func:`divreward.core.aggregate.aggregate_quality`: ``sum`` or ``gdpo``, per request);
- :func:`resolve_diversity` / :func:`resolve_advantage`: a request's parameters over a
  config's defaults;
- :func:`group_diversity`: the dispatch, one group through its method's entry of the
  table, as the API's per-group result model.

Pure: numpy, pydantic and the core math; no Ray, HTTP or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from divreward.core import AdvantageConfig, CoreConfig
from divreward.core.aggregate import aggregate_quality as combine_quality
from divreward.methods import METHODS
from divreward.schema import DiversityGroupResult

__all__ = [
    "combine_quality",
    "diversity_params",
    "group_diversity",
    "resolve_advantage",
    "resolve_diversity",
]


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in x]


def diversity_params(method: str, params: Mapping[str, Any] | None = None) -> BaseModel:
    """A method's request parameters model from its name and fields (what a client sends
    as ``{"method": ..., **params}``); only the given fields count as set."""
    entry = METHODS.get(method)
    if entry is None:
        raise ValueError(f"unknown diversity method {method!r}; known: {', '.join(METHODS)}")
    return entry.params.model_validate({**(params or {}), "method": method})


def resolve_diversity(requested: Any, core: CoreConfig, default_method: str) -> Any:
    """The full parameters of a request: the fields it set over the server's config.

    ``requested`` (a method's params model, or None) carries the pydantic
    ``model_fields_set`` of what the client wrote; every other field comes from
    ``core`` (whose defaults are the papers' values), not from the class defaults, so a
    server configured with beta=0.5 gives beta=0.5 to a request that only says
    ``{"method": "diversegrpo"}``.
    """
    name = requested.method if requested is not None else default_method
    method = METHODS[name]
    explicit: dict[str, Any] = {}
    if requested is not None:
        explicit = {f: getattr(requested, f) for f in requested.model_fields_set if f != "method"}
    base = getattr(core, method.defaults).model_dump() if method.defaults else {}
    return method.params.model_validate({**base, **explicit, "method": name})


def resolve_advantage(requested: AdvantageConfig | None, core: CoreConfig) -> AdvantageConfig:
    """The advantage parameters of a request: the fields it set over ``core.advantage``."""
    if requested is None:
        return core.advantage
    explicit = {f: getattr(requested, f) for f in requested.model_fields_set}
    return AdvantageConfig.model_validate({**core.advantage.model_dump(), **explicit})


def group_diversity(
    params: BaseModel,
    embeddings: np.ndarray | None,
    quality: np.ndarray | None,
    advantage: AdvantageConfig,
    group_id: str | None = None,
    return_embeddings: bool = False,
) -> Any:
    """One group's diversity term through its method (a DiversityGroupResult).

    embeddings: (G, D), or None for a method that needs none; quality: (G,) or None.
    Without quality the method still runs (on Q = 0) for the diversity values; rewards
    and advantages are then left out.
    """
    method = METHODS[params.method]  # type: ignore[attr-defined]
    if embeddings is not None:
        size = int(embeddings.shape[0])
    elif quality is not None:
        size = len(quality)
    else:
        raise ValueError("a group needs embeddings or quality scores")
    if method.needs_embeddings and embeddings is None:
        raise ValueError(f"method {method.name!r} needs the group's embeddings")
    q = quality if quality is not None else np.zeros(size, dtype=np.float64)
    out = method.run(q, embeddings, params, advantage)
    return DiversityGroupResult(
        group_id=group_id,
        size=size,
        method=method.name,
        **out.fields.model_dump(),
        rewards=_floats(out.rewards) if quality is not None else None,
        advantages=_floats(out.advantages) if quality is not None else None,
        embeddings=(
            [_floats(row) for row in embeddings]
            if return_embeddings and embeddings is not None
            else None
        ),
    )
