"""The FastAPI app of an ingress: typed routes, auth on every call, errors in the
schema's form, and an OpenAPI document generated from the models as they are.

A route is declared the FastAPI way, with its typed body and reply::

    @router.post("/v1/score", responses=error_responses(400, 413))
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        return await serving(request).score(body)

so FastAPI documents the request and reply models. :class:`WireRoute`, the routers'
route class, runs such an endpoint through :meth:`Api.handle
<divreward.services.common.api.Api.handle>` instead of FastAPI's own body handling:
the body is read with the size limit, parsed from JSON *or* msgpack, replayed by
``request_id``, and the reply encoded in the form the client asked for.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from divreward.schema import BINARY_MEDIA_TYPE, ErrorResponse
from divreward.services.common.api import Api
from divreward.services.common.auth import DOCS_ASSETS, TOKEN_PATH_PREFIX, is_public
from divreward.services.common.errors import ServiceError
from divreward.services.common.tenants import bind_call
from divreward.services.common.wire import error_response, wants_binary

__all__ = ["WireRoute", "counts_images", "error_responses", "make_app", "wire_router"]

F = typing.TypeVar("F", bound=Callable[..., Any])


def counts_images(count: Callable[[Any], int]) -> Callable[[F], F]:
    """Decorator: how many images a route's request body carries (for the metrics)."""

    def mark(endpoint: F) -> F:
        endpoint.count_images = count  # type: ignore[attr-defined]
        return endpoint

    return mark


class WireRoute(APIRoute):
    """A route whose endpoint is ``(body: Model, request) -> reply model`` (or
    ``(request) -> reply model`` without a body), run through :class:`Api`.

    FastAPI documents the JSON form from the annotations; this class adds the msgpack
    form of the same models (request body and reply) to the route's OpenAPI entry.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        hints = typing.get_type_hints(endpoint)
        model, reply = hints.get("body"), hints.get("return")
        if model is not None:
            extra = dict(kwargs.get("openapi_extra") or {})
            extra["requestBody"] = {"content": {BINARY_MEDIA_TYPE: {"schema": _ref(model)}}}
            kwargs["openapi_extra"] = extra
        if isinstance(reply, type) and issubclass(reply, BaseModel):
            responses = dict(kwargs.get("responses") or {})
            responses[200] = {"content": {BINARY_MEDIA_TYPE: {"schema": _ref(reply)}}}
            kwargs["responses"] = responses
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        model = typing.get_type_hints(endpoint).get("body")
        count = getattr(endpoint, "count_images", lambda _: 0)
        route = self.path

        async def handler(request: Request) -> Response:
            api: Api = request.app.state.api
            if model is None:
                return await api.handle_get(request, route, lambda: endpoint(request))
            return await api.handle(
                request, route, model, lambda body: endpoint(body, request), count
            )

        return handler


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def wire_router(tag: str) -> APIRouter:
    return APIRouter(tags=[tag], route_class=WireRoute)


_STATUS_TEXT = {
    400: "Undecodable image, or unknown scorer/method (the valid names are listed).",
    401: "Missing or invalid bearer token, or (no tokens configured) a caller that is "
    "not on this machine.",
    404: "Unknown path or Flow-Factory mode.",
    405: "Method not allowed here (the Allow header lists the allowed ones).",
    408: "An assembled group did not complete in time.",
    409: "request_id reused with a different body, or parts of one group disagree.",
    413: "Too many bytes, images or pixels (the limit is named).",
    415: "Unsupported Content-Type.",
    422: "Malformed body or field (the field, group and image index are named).",
    429: "Queue full (Retry-After).",
    503: "Queue full or a deployment unavailable (Retry-After).",
    504: "The models did not answer in time.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of these error statuses: the ErrorResponse model, in JSON
    or msgpack (as the client's Accept header asks)."""
    return {
        s: {
            "model": ErrorResponse,
            "description": _STATUS_TEXT.get(s, ""),
            "content": {BINARY_MEDIA_TYPE: {"schema": _ref(ErrorResponse)}},
        }
        for s in statuses
    }


#: What any route may answer besides its own statuses: auth and the proxy's limits.
COMMON_ERRORS = (401, 405)


def make_app(title: str, description: str, api: Api, routers: Iterable[APIRouter]) -> FastAPI:
    """A FastAPI app with the routers, the bearer check on every non-probe call, and
    errors in the schema's ErrorResponse form."""
    app = FastAPI(title=title, description=description, version="1", docs_url=None, redoc_url=None)
    app.state.api = api

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        path = _app_path(request)
        if not is_public(path):
            peer = request.client.host if request.client is not None else None
            try:
                if path.startswith(TOKEN_PATH_PREFIX):
                    tenant = _strip_path_token(request, path, api, peer)
                else:
                    tenant = api.auth.check(request.headers.get("authorization"), peer)
            except ServiceError as err:
                api.metrics.count("auth", err.status, kind=err.kind)
                return error_response(err, None, wants_binary(request))
            # Whose call this is: for the metrics (request.state) and, through the
            # call's context, for the fair queue and group assembly.
            request.state.tenant = tenant
            # the route as routed (a /t/<token>/ prefix is gone from the scope by now:
            # never a token in a metric's label)
            root = str(request.scope.get("root_path", "") or "")
            bind_call(tenant, str(request.scope["path"]).removeprefix(root) or "/")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "invalid_request" if exc.status_code < 500 else "internal"
        err = ServiceError(exc.status_code, kind, f"{request.url.path}: {exc.detail}")  # type: ignore[arg-type]
        # keeps the headers of the exception: a 405 says what is allowed (Allow)
        return error_response(err, None, wants_binary(request), headers=exc.headers)

    for router in routers:
        app.include_router(router)
    _offline_docs(app)
    if api.auth.enabled:
        _declare_bearer(app)
    return app


def _strip_path_token(request: Request, path: str, api: Api, peer: str | None) -> str:
    """``/t/<token>/<rest>``: check the token, then route the call as ``/<rest>``; the
    token's tenant. Only the compatibility routes take a token this way; no message
    repeats the token."""
    token, _, rest = path[len(TOKEN_PATH_PREFIX) :].partition("/")
    rest = "/" + rest
    if rest != "/" and not rest.startswith("/compat/"):
        raise ServiceError(
            404,
            "invalid_request",
            f"a token in the URL path ({TOKEN_PATH_PREFIX}<token>/...) is accepted by the "
            "compatibility routes only ('/' and '/compat/...'); send other calls an "
            "'Authorization: Bearer <token>' header",
        )
    tenant = api.auth.check_path_token(token, peer)
    root = str(request.scope.get("root_path", "") or "")
    request.scope["path"] = root + rest
    request.scope["raw_path"] = (root + rest).encode()
    return tenant


def _offline_docs(app: FastAPI) -> None:
    """/docs from the packaged Swagger UI (swagger-ui-bundle), served by the app itself:
    it works in an air-gapped cluster (FastAPI's default loads it from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def _docs(request: Request) -> Response:
        root = str(request.scope.get("root_path", "") or "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )


def _declare_bearer(app: FastAPI) -> None:
    """State the bearer scheme in the OpenAPI document (FastAPI's own hook)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _app_path(request: Request) -> str:
    """The path inside the application: Serve mounts an app at its route prefix, which
    arrives as the ASGI root_path and is part of the full path."""
    path = request.url.path
    root = str(request.scope.get("root_path", "") or "")
    return path[len(root) :] if root and path.startswith(root) else path
