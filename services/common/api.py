"""What one ingress replica's front doors share: limits, auth, metrics, the idempotency
cache and the call timeout, and the request handling of every HTTP route.

:meth:`Api.handle` reads the body (with the size limit), parses it in either wire form
into the route's request model, replays a repeated ``request_id``, calls the serving
layer with the timeout, encodes the reply and counts it; errors become the schema's
ErrorResponse. The gRPC methods use the same :class:`Api` pieces around protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from divreward.services.common.auth import BearerAuth
from divreward.services.common.errors import ServiceError, to_service_error
from divreward.services.common.idempotency import CachedReply, IdempotencyCache
from divreward.services.common.metrics import ServiceMetrics
from divreward.services.common.tenants import bind_call
from divreward.services.common.wire import (
    encode,
    error_response,
    parse_body,
    read_body,
    wants_binary,
)
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs

__all__ = ["Api"]

log = logging.getLogger("ray.serve")
M = TypeVar("M", bound=BaseModel)


class Api:
    """Per-replica front-door state: limits, auth, metrics, the idempotency cache."""

    def __init__(
        self, app_name: str, limits: LimitsArgs, auth: AuthArgs, ingress: IngressArgs
    ) -> None:
        self.app_name = app_name
        self.limits = limits
        self.ingress = ingress
        self.auth = BearerAuth(auth)
        self.metrics = ServiceMetrics(app_name)
        self.cache = IdempotencyCache(ingress.idempotency_cache_size)

    async def with_timeout(self, call: Awaitable[M]) -> M:
        return await asyncio.wait_for(call, timeout=self.ingress.call_timeout_s)

    def failed(self, route: str, exc: BaseException) -> ServiceError:
        """The ServiceError of a failure, logged when it is the server's fault."""
        err = to_service_error(exc)
        if err.status >= 500 and err.kind == "internal":
            log.error("internal error on %s", route, exc_info=exc)
        return err

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
        bind_call(route=route)  # the route template, for the fair queue's metrics
        gauge = self.metrics.inflight.labels(self.app_name)
        gauge.inc()
        request_id: str | None = None
        try:
            body = await read_body(request, self.limits.max_request_bytes)
            req = parse_body(body, request.headers.get("content-type"), model)
            request_id = getattr(req, "request_id", None)
            self.metrics.images.labels(self.app_name, route).inc(count_images(req))

            async def compute() -> CachedReply:
                response = encode(await self.with_timeout(call(req)), binary)
                return CachedReply(200, response.media_type or "", bytes(response.body))

            reply, replayed = await self.cache.run(route, request_id, body, compute)
            if replayed:
                self.metrics.replays.labels(self.app_name, route).inc()
            self.metrics.count(route, reply.status, time.perf_counter() - t0)
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
        except Exception as exc:
            err = self.failed(route, exc)
            self.metrics.count(route, err.status, time.perf_counter() - t0, err.kind)
            return error_response(err, request_id, binary)
        finally:
            gauge.dec()

    async def handle_get(
        self, request: Request, route: str, call: Callable[[], Awaitable[BaseModel]]
    ) -> Response:
        """A body-less route: call with a timeout, encode, count."""
        binary = wants_binary(request)
        t0 = time.perf_counter()
        try:
            response = encode(await self.with_timeout(call()), binary)
        except Exception as exc:
            err = self.failed(route, exc)
            self.metrics.count(route, err.status, time.perf_counter() - t0, err.kind)
            return error_response(err, None, binary)
        self.metrics.count(route, 200, time.perf_counter() - t0)
        return response
