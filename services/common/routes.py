"""Routes both applications serve. Routes only: each calls the app's serving object
(``app.state.serving``), which is the diversity app's own serving layer in the
diversity app and the reward serving layer (delegating to the diversity app through
its deployment handle) in the reward app.

- ``ops_router``: /healthz, /readyz, /v1/models, /metrics;
- ``diversity_router``: /v1/embed, /v1/diversity, /v1/metrics.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from divreward.schema import (
    DiversityRequest,
    DiversityResponse,
    EmbedRequest,
    EmbedResponse,
    HealthResponse,
    MetricsRequest,
    MetricsResponse,
    ModelsResponse,
    ReadyResponse,
)
from divreward.services.common.api import Api
from divreward.services.common.app import COMMON_ERRORS, counts_images, error_responses, wire_router
from divreward.services.common.deployments import unavailable_deployments
from divreward.services.common.wire import encode, wants_binary

__all__ = [
    "BODY_ERRORS",
    "ServingLayer",
    "delegate",
    "diversity_router",
    "group_images",
    "ops_router",
    "serving",
]

#: Statuses every route with a request body may answer.
BODY_ERRORS = (400, *COMMON_ERRORS, 409, 413, 415, 422, 503, 504)


class ServingLayer(Protocol):
    """What the routes call. The body operations' annotations and docstrings are their
    routes' body and reply models and summaries (:func:`delegate`)."""

    async def ready(self) -> dict[str, str]: ...

    async def models(self) -> ModelsResponse: ...

    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        """Embed images (DreamSim by default): unit rows, one per image."""

    async def diversity(self, req: DiversityRequest) -> DiversityResponse:
        """Per group: DiverseGRPO bonus, labels, k, sigma, or DRIFT diversity values."""

    async def metrics(self, req: MetricsRequest) -> MetricsResponse:
        """Evaluation metrics over a set of groups (diversity, Vendi, recall)."""


def serving(request: Request) -> Any:
    """The serving layer of the app this request reached."""
    return request.app.state.serving


def delegate(
    router: APIRouter, path: str, op: Callable[..., Any], images: Callable[[Any], int]
) -> None:
    """``POST path``: the body goes to the serving layer's operation of ``op``'s name.
    ``op`` is a protocol method: its ``req`` and return annotations type the route's body
    and reply, its docstring is the route's summary; ``images`` counts the body's images
    (metrics)."""
    name, hints = op.__name__, typing.get_type_hints(op)

    async def endpoint(body: Any, request: Request) -> Any:
        return await getattr(serving(request), name)(body)

    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__annotations__ = {"body": hints["req"], "request": Request, "return": hints["return"]}
    route = router.post(path, summary=inspect.getdoc(op), responses=error_responses(*BODY_ERRORS))
    route(counts_images(images)(endpoint))


def group_images(req: Any) -> int:
    """Images sent inline in a request's groups (embeddings carry none)."""
    return sum(len(g.images or []) for g in req.groups)


# ------------------------------------------------------------------ diversity API
diversity_router = wire_router("diversity")


delegate(diversity_router, "/v1/embed", ServingLayer.embed, lambda r: len(r.images))
delegate(diversity_router, "/v1/diversity", ServingLayer.diversity, group_images)
delegate(
    diversity_router,
    "/v1/metrics",
    ServingLayer.metrics,
    lambda r: group_images(r) + sum(len(g.images or []) for g in r.reference or []),
)


# ------------------------------------------------------------------ operations
ops_router = wire_router("operations")
_plain_router = APIRouter(tags=["operations"])


@ops_router.get(
    "/healthz",
    summary="Liveness: the process answers (no token needed).",
    responses=error_responses(405),
)
async def healthz(request: Request) -> HealthResponse:
    return HealthResponse()


@ops_router.get(
    "/v1/models",
    summary="The models this service runs (id, revision, weights hash), its defaults and limits.",
    responses=error_responses(*COMMON_ERRORS, 503, 504),
)
async def models(request: Request) -> ModelsResponse:
    return await serving(request).models()  # type: ignore[no-any-return]


@_plain_router.get(
    "/readyz",
    summary="Readiness: every deployment answers a real call (no token needed).",
    response_model=ReadyResponse,
    responses={
        503: {
            "model": ReadyResponse,
            "description": "A deployment has no running replica, or failed its test call.",
        },
        **error_responses(405),
    },
)
async def readyz(request: Request) -> Response:
    # A deployment without a running replica: 503 naming it at once, no probe to wait out.
    down = await unavailable_deployments(request.app.state)
    states: dict[str, str] = down or await serving(request).ready()
    ok = all(v == "ok" for v in states.values())
    body = ReadyResponse(status="ready" if ok else "not_ready", deployments=states)
    return encode(body, wants_binary(request), status=200 if ok else 503)


@_plain_router.get(
    "/metrics",
    summary="This ingress replica's own metrics (Prometheus text), a debugging view: "
    "Prometheus scrapes Ray's metrics export, which covers every replica and node.",
    response_class=PlainTextResponse,
    responses=error_responses(*COMMON_ERRORS),
)
async def prometheus(request: Request) -> Response:
    api: Api = request.app.state.api
    content, media = api.metrics.render()
    return Response(content, media_type=media)


ops_router.include_router(_plain_router)
