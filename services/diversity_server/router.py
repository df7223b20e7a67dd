"""Routes of the diversity API (/v1/embed, /v1/diversity, /v1/metrics) and the routes
both applications share (/healthz, /readyz, /metrics). Routes only: each names its
request model and calls the serving object of the app (``app.state.serving``), which is
a :class:`~divreward.services.diversity_server.serving.DiversityServing` in the
diversity app and the delegating reward serving in the reward app."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

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
from divreward.services.http import Api, body_doc, encode, error_responses, wants_binary

__all__ = ["BODY_MODELS", "common_router", "diversity_router"]

BODY_MODELS = (EmbedRequest, DiversityRequest, MetricsRequest)
_ERRORS = error_responses(400, 401, 409, 413, 415, 422, 503, 504)

diversity_router = APIRouter(tags=["diversity"])
common_router = APIRouter(tags=["operations"])


def _api(request: Request) -> Api:
    return request.app.state.api  # type: ignore[no-any-return]


@diversity_router.post(
    "/v1/embed",
    summary="Embed images (DreamSim by default): unit rows, one per image.",
    openapi_extra=body_doc(EmbedRequest),
    responses={200: {"model": EmbedResponse}, **_ERRORS},
)
async def embed(request: Request) -> Response:
    serving = request.app.state.serving
    return await _api(request).handle(
        request, "/v1/embed", EmbedRequest, serving.embed, lambda r: len(r.images)
    )


@diversity_router.post(
    "/v1/diversity",
    summary="Per group: DiverseGRPO bonus, labels, k, sigma, or DRIFT diversity values.",
    openapi_extra=body_doc(DiversityRequest),
    responses={200: {"model": DiversityResponse}, **_ERRORS},
)
async def diversity(request: Request) -> Response:
    serving = request.app.state.serving
    return await _api(request).handle(
        request,
        "/v1/diversity",
        DiversityRequest,
        serving.diversity,
        lambda r: sum(len(g.images or []) for g in r.groups),
    )


@diversity_router.post(
    "/v1/metrics",
    summary="Evaluation metrics over a set of groups (diversity, Vendi, recall).",
    openapi_extra=body_doc(MetricsRequest),
    responses={200: {"model": MetricsResponse}, **_ERRORS},
)
async def metrics(request: Request) -> Response:
    serving = request.app.state.serving
    return await _api(request).handle(
        request,
        "/v1/metrics",
        MetricsRequest,
        serving.metrics,
        lambda r: sum(len(g.images or []) for g in [*r.groups, *(r.reference or [])]),
    )


@common_router.get("/healthz", summary="Liveness: the process answers.")
async def healthz() -> HealthResponse:
    return HealthResponse()


@common_router.get(
    "/readyz",
    summary="Readiness: every deployment answers a real call.",
    responses={200: {"model": ReadyResponse}, 503: {"model": ReadyResponse}},
)
async def readyz(request: Request) -> Response:
    states: dict[str, str] = await request.app.state.serving.ready()
    ok = all(v == "ok" for v in states.values())
    body = ReadyResponse(status="ready" if ok else "not_ready", deployments=states)
    return encode(body, wants_binary(request), status=200 if ok else 503)


@common_router.get(
    "/v1/models",
    summary="The models this service runs (id, revision, weights hash), its defaults and limits.",
    responses={200: {"model": ModelsResponse}, **error_responses(401, 503, 504)},
)
async def models(request: Request) -> Response:
    return await _api(request).handle_get(request, "/v1/models", request.app.state.serving.models)


@common_router.get("/metrics", summary="Prometheus metrics of this ingress replica.")
async def prometheus(request: Request) -> Response:
    return _api(request).metrics.render()
