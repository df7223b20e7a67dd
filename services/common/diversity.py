"""A group's diversity term, computed in one way for both applications: the request's
parameters resolved over the server's config, then the method's entry of the method
table (:data:`divreward.methods.METHODS`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from divreward.core import AdvantageConfig, CoreConfig
from divreward.methods import METHODS
from divreward.schema import DiversityGroupResult
from divreward.services.common.serving import floats

__all__ = ["group_diversity", "resolve_advantage", "resolve_diversity"]


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
        rewards=floats(out.rewards) if quality is not None else None,
        advantages=floats(out.advantages) if quality is not None else None,
        embeddings=(
            [floats(row) for row in embeddings]
            if return_embeddings and embeddings is not None
            else None
        ),
    )
