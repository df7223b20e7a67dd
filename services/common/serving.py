"""Pieces both serving layers use: response metadata, core errors, BLAS threads and the
model-call observer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from divreward.models.weights import TINY_WARNING
from divreward.schema import ModelCard
from divreward.services.common.errors import ServiceError
from divreward.services.config import ServiceArgs

__all__ = [
    "Observer",
    "core_error",
    "floats",
    "limit_blas_threads",
    "no_observer",
    "response_meta",
]

#: Called as observe(model_name, n_images, batch_sizes, model_seconds) after every model
#: call; the ingress points it at its metrics (images by route, tenant and scorer).
Observer = Callable[[str, int, list[int], float], None]


def no_observer(name: str, n: int, batches: list[int], seconds: float) -> None:
    return None


def floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in x]


def response_meta(
    args: ServiceArgs, cards: Sequence[ModelCard], request_id: str | None
) -> dict[str, Any]:
    """request_id, profile and warnings of a response; 'tiny' whenever the server runs
    the tiny profile or any model that answered reports tiny weights."""
    tiny = args.profile == "tiny" or any(c.profile == "tiny" for c in cards)
    return {
        "request_id": request_id,
        "profile": "tiny" if tiny else "real",
        "warnings": [f"profile 'tiny': {TINY_WARNING}"] if tiny else [],
    }


def core_error(exc: ValueError, group_index: int | None) -> ServiceError:
    """A ValueError from the core math on a request's data: a 422 naming the group."""
    where = f"groups[{group_index}]: " if group_index is not None else ""
    return ServiceError(422, "invalid_request", f"{where}{exc}", group_index=group_index)


def limit_blas_threads(n: int | None) -> None:
    """Cap BLAS threads for this whole process (an ingress replica); None leaves them."""
    if n is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
