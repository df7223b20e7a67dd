"""HTTP plumbing shared by the two routers: body reading with a size limit, the JSON and
msgpack forms, error responses, bearer-token auth, Prometheus metrics, idempotent
retries by ``request_id``, and the FastAPI app with its OpenAPI document.

The routers stay thin: a route names its request model and the serving method, and
:meth:`Api.handle` does the rest the same way for every route.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from divreward.schema import BINARY_MEDIA_TYPE, BINARY_MEDIA_TYPES, ErrorResponse
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs
from divreward.services.errors import ServiceError, from_validation_error

__all__ = [
    "JSON_MEDIA_TYPE",
    "Api",
    "ServiceMetrics",
    "body_doc",
    "error_responses",
    "make_app",
    "to_service_error",
]

log = logging.getLogger("ray.serve")

JSON_MEDIA_TYPE = "application/json"
M = TypeVar("M", bound=BaseModel)

#: Routes that answer without a token (liveness and readiness probes).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


# ---------------------------------------------------------------------- errors
def to_service_error(exc: BaseException) -> ServiceError:
    """Map anything a serving call can raise to a ServiceError with the right status."""
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    # An error raised in another deployment arrives wrapped; its cause is the original.
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, BackPressureError):
        return ServiceError(
            exc.status_code,
            "overloaded",
            f"a model deployment's queue is full ({exc.message}); retry later",
            retry_after_s=exc.retry_after_s if exc.retry_after_s is not None else 1.0,
        )
    if isinstance(exc, DeploymentUnavailableError):
        return ServiceError(503, "overloaded", f"a deployment is unavailable: {exc.message}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ServiceError(504, "timeout", "the models did not answer in time; retry later")
    return ServiceError(500, "internal", f"internal error: {type(exc).__name__}: {exc}")


def error_body(err: ServiceError, request_id: str | None, binary: bool) -> Response:
    body = err.to_response(request_id)
    headers: dict[str, str] = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(0, round(err.retry_after_s + 0.4999)))
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return encode(body, binary, status=err.status, headers=headers)


def encode(
    model: BaseModel, binary: bool, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if binary:
        content = msgpack.packb(model.model_dump(mode="python"), use_bin_type=True)
        return Response(content, status_code=status, media_type=BINARY_MEDIA_TYPE, headers=headers)
    return Response(
        model.model_dump_json(), status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers
    )


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def wants_binary(request: Request) -> bool:
    """msgpack replies when the Accept header asks for them, or when the request was
    msgpack and the client accepts anything."""
    accept = request.headers.get("accept", "")
    if any(t in accept for t in BINARY_MEDIA_TYPES):
        return True
    if JSON_MEDIA_TYPE in accept:
        return False
    return _media(request.headers.get("content-type")) in BINARY_MEDIA_TYPES


# ---------------------------------------------------------------------- metrics
class ServiceMetrics:
    """Prometheus metrics of one ingress replica (its own registry, served at /metrics).

    Each replica counts what it handled; Prometheus sums over replicas (scrape them
    through the Serve proxy several times or, on a cluster, Ray's metrics export).
    """

    def __init__(self, app_name: str) -> None:
        self.registry = CollectorRegistry()
        self.app = app_name
        self.requests = Counter(
            "divreward_requests",
            "HTTP requests by route and status.",
            ["app", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "divreward_request_latency_seconds",
            "End-to-end handling time of a request in the ingress.",
            ["app", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.errors = Counter(
            "divreward_errors",
            "Failed requests by route and error kind.",
            ["app", "route", "kind"],
            registry=self.registry,
        )
        self.images = Counter(
            "divreward_images",
            "Images received in requests.",
            ["app", "route"],
            registry=self.registry,
        )
        self.model_images = Counter(
            "divreward_model_images",
            "Images scored or embedded, by model.",
            ["app", "model"],
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "divreward_batch_images",
            "Images per forward pass (across requests) of the batches that served a call.",
            ["app", "model"],
            buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256),
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "divreward_model_seconds",
            "Forward-pass time per call, by model.",
            ["app", "model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "divreward_inflight_requests",
            "Requests being handled by this replica.",
            ["app"],
            registry=self.registry,
        )
        self.replays = Counter(
            "divreward_idempotent_replays",
            "Requests answered from the request_id cache.",
            ["app", "route"],
            registry=self.registry,
        )

    def observe_model(
        self, name: str, n_images: int, batches: Sequence[int], seconds: float
    ) -> None:
        self.model_images.labels(self.app, name).inc(n_images)
        for b in batches:
            self.batch_images.labels(self.app, name).observe(b)
        self.model_seconds.labels(self.app, name).observe(seconds)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------- idempotency
@dataclass
class _Cached:
    digest: bytes
    status: int
    media_type: str
    body: bytes


class IdempotencyCache:
    """Recent successful responses by (route, request_id), so that a retried request
    gets the same answer without being computed again; a concurrent duplicate waits for
    the first. Reusing an id with a different body is a 409."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._done: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._running: dict[tuple[str, str], tuple[bytes, asyncio.Future[_Cached | None]]] = {}

    async def lookup(self, key: tuple[str, str], digest: bytes) -> _Cached | None:
        while True:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
                if not hmac.compare_digest(hit.digest, digest):
                    raise _conflict(key[1])
                return hit
            running = self._running.get(key)
            if running is None:
                return None
            if not hmac.compare_digest(running[0], digest):
                raise _conflict(key[1])
            await asyncio.shield(running[1])  # then look again: done, or failed and free

    def start(self, key: tuple[str, str], digest: bytes) -> None:
        self._running[key] = (digest, asyncio.get_running_loop().create_future())

    def finish(self, key: tuple[str, str], entry: _Cached | None) -> None:
        running = self._running.pop(key, None)
        if entry is not None and self.size > 0:
            self._done[key] = entry
            while len(self._done) > self.size:
                self._done.popitem(last=False)
        if running is not None and not running[1].done():
            running[1].set_result(entry)


def _conflict(request_id: str) -> ServiceError:
    return ServiceError(
        409,
        "conflict",
        f"request_id {request_id!r} was already used with a different request body; "
        "use a new request_id for a new request",
    )


# ---------------------------------------------------------------------- auth
def _app_path(request: Request) -> str:
    """The path inside the application: Serve mounts an app at its route prefix, which
    arrives as the ASGI root_path and is part of the full path."""
    path = request.url.path
    root = str(request.scope.get("root_path", "") or "") if hasattr(request, "scope") else ""
    return path[len(root) :] if root and path.startswith(root) else path


class TokenAuth:
    def __init__(self, args: AuthArgs) -> None:
        self.enabled = args.enabled
        self._tokens = [t.encode() for t in sorted(args.load_tokens())]

    def check(self, request: Request) -> None:
        if not self.enabled or _app_path(request) in PUBLIC_PATHS:
            return
        header = request.headers.get("authorization")
        if not header:
            raise ServiceError(401, "unauthorized", "missing 'Authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServiceError(
                401, "unauthorized", "the Authorization header must be 'Bearer <token>'"
            )
        given = token.strip().encode()
        # Compare against every token, in constant time each, so timing reveals nothing.
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(given, t)
        if not ok:
            raise ServiceError(401, "unauthorized", "invalid bearer token")


# ---------------------------------------------------------------------- the api
class Api:
    """Per-replica HTTP state: limits, auth, metrics, the idempotency cache."""

    def __init__(
        self, app_name: str, limits: LimitsArgs, auth: AuthArgs, ingress: IngressArgs
    ) -> None:
        self.app_name = app_name
        self.limits = limits
        self.ingress = ingress
        self.auth = TokenAuth(auth)
        self.metrics = ServiceMetrics(app_name)
        self.cache = IdempotencyCache(ingress.idempotency_cache_size)

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(self, body: bytes, content_type: str | None, model: type[M]) -> M:
        media = _media(content_type)
        try:
            if media in BINARY_MEDIA_TYPES:
                try:
                    data = msgpack.unpackb(body, raw=False, strict_map_key=True)
                except (
                    ValueError,
                    msgpack.ExtraData,
                    msgpack.FormatError,
                    msgpack.StackError,
                ) as exc:
                    raise ServiceError(
                        422, "invalid_request", f"malformed msgpack body ({exc})"
                    ) from None
                if not isinstance(data, dict):
                    raise ServiceError(
                        422,
                        "invalid_request",
                        f"the msgpack body must be a map, got {type(data).__name__}",
                    )
                return model.model_validate(data)
            if media in ("", JSON_MEDIA_TYPE) or media.endswith("+json"):
                return model.model_validate_json(body)
        except ValidationError as exc:
            json_errors = [e for e in exc.errors() if e["type"] == "json_invalid"]
            if json_errors:
                raise ServiceError(
                    422, "invalid_request", f"malformed JSON body ({json_errors[0]['msg']})"
                ) from None
            raise from_validation_error(exc) from None
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type!r} is not accepted; use {JSON_MEDIA_TYPE} or "
            f"{BINARY_MEDIA_TYPE}",
            valid=[JSON_MEDIA_TYPE, *BINARY_MEDIA_TYPES],
        )

    async def handle(
        self,
        request: Request,
        route: str,
        model: type[M],
        call: Callable[[M], Awaitable[BaseModel]],
        count_images: Callable[[M], int] = lambda _: 0,
    ) -> Response:
        """Read, parse, (replay,) call the serving layer with a timeout, encode."""
        binary = wants_binary(request)
        t0 = time.perf_counter()
        self.metrics.inflight.labels(self.app_name).inc()
        request_id: str | None = None
        key: tuple[str, str] | None = None
        status = 500
        try:
            body = await self.read_body(request)
            req = self.parse(body, request.headers.get("content-type"), model)
            request_id = getattr(req, "request_id", None)
            self.metrics.images.labels(self.app_name, route).inc(count_images(req))
            if request_id is not None:
                digest = hashlib.sha256(body).digest()
                key = (route, request_id)
                hit = await self.cache.lookup(key, digest)
                if hit is not None:
                    key = None  # not ours to finish
                    self.metrics.replays.labels(self.app_name, route).inc()
                    status = hit.status
                    return Response(hit.body, status_code=hit.status, media_type=hit.media_type)
                self.cache.start(key, digest)
            result = await asyncio.wait_for(call(req), timeout=self.ingress.call_timeout_s)
            response = encode(result, binary)
            status = response.status_code
            if key is not None:
                self.cache.finish(
                    key, _Cached(digest, status, response.media_type or "", bytes(response.body))
                )
                key = None
            return response
        except Exception as exc:
            err = to_service_error(exc)
            if err.status >= 500 and err.kind == "internal":
                log.exception("internal error on %s", route)
            status = err.status
            self.metrics.errors.labels(self.app_name, route, err.kind).inc()
            return error_body(err, request_id, binary)
        finally:
            if key is not None:
                self.cache.finish(key, None)
            self.metrics.inflight.labels(self.app_name).dec()
            self.metrics.requests.labels(self.app_name, route, str(status)).inc()
            self.metrics.latency.labels(self.app_name, route).observe(time.perf_counter() - t0)

    async def handle_get(
        self, request: Request, route: str, call: Callable[[], Awaitable[BaseModel]]
    ) -> Response:
        """A body-less route: call with a timeout, encode, count."""
        binary = wants_binary(request)
        t0 = time.perf_counter()
        status = 500
        try:
            result = await asyncio.wait_for(call(), timeout=self.ingress.call_timeout_s)
            status = 200
            return encode(result, binary)
        except Exception as exc:
            err = to_service_error(exc)
            if err.kind == "internal":
                log.exception("internal error on %s", route)
            status = err.status
            self.metrics.errors.labels(self.app_name, route, err.kind).inc()
            return error_body(err, None, binary)
        finally:
            self.metrics.requests.labels(self.app_name, route, str(status)).inc()
            self.metrics.latency.labels(self.app_name, route).observe(time.perf_counter() - t0)


def _too_large(size: int, limit: int) -> ServiceError:
    return ServiceError(
        413,
        "payload_too_large",
        f"the request body has {size} bytes, more than the limit of {limit} bytes; send "
        "fewer or smaller images per request",
    )


# ---------------------------------------------------------------------- app + docs
#: Every model named by body_doc, so that make_app puts them all in the OpenAPI
#: components (routes that read their body themselves are invisible to FastAPI).
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra of a route whose body is ``model`` in either form."""
    _BODY_MODELS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {JSON_MEDIA_TYPE: {"schema": ref}, BINARY_MEDIA_TYPE: {"schema": ref}},
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _STATUS_TEXT.get(s, "")} for s in statuses}


_STATUS_TEXT = {
    400: "Undecodable image, or unknown scorer/method (the valid names are listed).",
    401: "Missing or invalid bearer token (when auth is on).",
    409: "request_id reused with a different body.",
    413: "Too many bytes, images or pixels.",
    415: "Unsupported Content-Type.",
    422: "Malformed body or field (the field, group and image index are named).",
    429: "Queue full (Retry-After).",
    503: "Queue full or a deployment unavailable (Retry-After).",
    504: "The models did not answer in time.",
}


def make_app(
    title: str,
    description: str,
    api: Api,
    routers: Iterable[APIRouter],
    body_models: Sequence[type[BaseModel]],
) -> FastAPI:
    """A FastAPI app with the routers, auth on every non-public route, errors in the
    schema's ErrorResponse form, and the request models in the OpenAPI document."""
    app = FastAPI(title=title, description=description, version="1")
    app.state.api = api

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        try:
            api.auth.check(request)
        except ServiceError as err:
            api.metrics.errors.labels(api.app_name, "auth", err.kind).inc()
            return error_body(err, None, wants_binary(request))
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "invalid_request" if exc.status_code < 500 else "internal"
        err = ServiceError(exc.status_code, kind, f"{request.url.path}: {exc.detail}")  # type: ignore[arg-type]
        return error_body(err, None, wants_binary(request))

    for router in routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        models = list(dict.fromkeys([*body_models, *_BODY_MODELS.values()]))
        _, defs = models_json_schema(
            [(m, "validation") for m in models],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        if api.auth.enabled:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
