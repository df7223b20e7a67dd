"""Routes both applications serve. Routes only: each calls the app's serving object
(``app.state.serving``), which is the diversity app's own serving layer in the
diversity app and the reward serving layer (delegating to the diversity app through
its deployment handle) in the reward app.

- ``ops_router``: /healthz, /readyz, /v1/models, /metrics;
- ``diversity_router``: /v1/embed, /v1/diversity, /v1/metrics.
"""

from __future__ import annotations

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
from divreward.services.common.wire import encode, wants_binary

__all__ = ["BODY_ERRORS", "ServingLayer", "diversity_router", "ops_router", "serving"]

#: Statuses every route with a request body may answer.
BODY_ERRORS = (400, *COMMON_ERRORS, 409, 413, 415, 422, 503, 504)


class ServingLayer(Protocol):
    async def ready(self) -> dict[str, str]: ...

    async def models(self) -> ModelsResponse: ...

    async def embed(self, req: EmbedRequest) -> EmbedResponse: ...

    async def diversity(self, req: DiversityRequest) -> DiversityResponse: ...

    async def metrics(self, req: MetricsRequest) -> MetricsResponse: ...


def serving(request: Request) -> Any:
    """The serving layer of the app this request reached."""
    return request.app.state.serving


# ------------------------------------------------------------------ diversity API
diversity_router = wire_router("diversity")


@diversity_router.post(
    "/v1/embed",
    summary="Embed images (DreamSim by default): unit rows, one per image.",
    responses=error_responses(*BODY_ERRORS),
)
@counts_images(lambda r: len(r.images))
async def embed(body: EmbedRequest, request: Request) -> EmbedResponse:
    return await serving(request).embed(body)  # type: ignore[no-any-return]


@diversity_router.post(
    "/v1/diversity",
    summary="Per group: DiverseGRPO bonus, labels, k, sigma, or DRIFT diversity values.",
    responses=error_responses(*BODY_ERRORS),
)
@counts_images(lambda r: sum(len(g.images or []) for g in r.groups))
async def diversity(body: DiversityRequest, request: Request) -> DiversityResponse:
    return await serving(request).diversity(body)  # type: ignore[no-any-return]


@diversity_router.post(
    "/v1/metrics",
    summary="Evaluation metrics over a set of groups (diversity, Vendi, recall).",
    responses=error_responses(*BODY_ERRORS),
)
@counts_images(lambda r: sum(len(g.images or []) for g in [*r.groups, *(r.reference or [])]))
async def metrics(body: MetricsRequest, request: Request) -> MetricsResponse:
    return await serving(request).metrics(body)  # type: ignore[no-any-return]


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
        503: {"model": ReadyResponse, "description": "A deployment failed its test call."},
        **error_responses(405),
    },
)
async def readyz(request: Request) -> Response:
    states: dict[str, str] = await serving(request).ready()
    ok = all(v == "ok" for v in states.values())
    body = ReadyResponse(status="ready" if ok else "not_ready", deployments=states)
    return encode(body, wants_binary(request), status=200 if ok else 503)


@_plain_router.get(
    "/metrics",
    summary="Prometheus metrics of this ingress replica (text exposition format).",
    response_class=PlainTextResponse,
    responses=error_responses(*COMMON_ERRORS),
)
async def prometheus(request: Request) -> Response:
    api: Api = request.app.state.api
    content, media = api.metrics.render()
    return Response(content, media_type=media)


ops_router.include_router(_plain_router)
