"""gRPC methods of the reward ingress: the servicer layer, mapping protobuf to the
pydantic schema and back around the same serving layer as the HTTP routes.

The reward ingress deployment inherits :class:`RewardGrpcMethods`; Ray Serve's gRPC
proxy calls the ingress method named as the RPC (``divreward.v1.RewardService``, see
``divreward/proto/divreward.proto``). Each unary method validates the request through
its pydantic model (the checks of the HTTP path, with the same messages), answers a
repeated ``request_id`` from the ingress's idempotency cache, calls ``self.serving`` with
the ingress's call timeout, and converts the result back. A failure ends the call with a
gRPC status mapped from the HTTP status, its details being the server's message.

``RewardStream`` (bidirectional) reads the trainer's submissions in the background and
answers each as soon as its group is rewarded, in completion order, tagged with its
``group_id`` and ``request_id``. A failed submission is answered in-band
(``GroupSubmissionResult.error``) so the stream and its other groups carry on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from pydantic import BaseModel

from divreward.proto import divreward_pb2 as pb
from divreward.proto.convert import from_proto, to_proto
from divreward.schema import (
    DiversityRequest,
    EmbedRequest,
    HealthResponse,
    MetricsRequest,
    ReadyResponse,
    RewardsRequest,
    ScoreRequest,
)
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult
from divreward.services.common.api import Api
from divreward.services.common.auth import grpc_peer_host
from divreward.services.common.errors import ServiceError
from divreward.services.common.idempotency import CachedReply
from divreward.services.common.metrics import DEFAULT_TENANT
from divreward.services.common.tenants import bind_call
from divreward.services.common.wire import retry_after
from divreward.services.reward_server.groups import GroupService

__all__ = ["GRPC_SERVICER_FUNCTION", "RewardGrpcMethods", "grpc_code"]

#: What ``gRPCOptions.grpc_servicer_functions`` must list for these methods to be served.
GRPC_SERVICER_FUNCTION = "divreward.proto.divreward_pb2_grpc.add_RewardServiceServicer_to_server"

#: Submissions of one stream computed at once; further messages wait (flow control).
STREAM_MAX_IN_FLIGHT = 64

_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    # 408 is an assembled group that never completed: not a transient timeout (clients
    # retry DEADLINE_EXCEEDED), the caller's parts are missing.
    408: grpc.StatusCode.ABORTED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    # 413: too big is the caller's to fix, not transient (RESOURCE_EXHAUSTED is retried)
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP status (any other 5xx is INTERNAL, 4xx INVALID_ARGUMENT)."""
    if status in _CODES:
        return _CODES[status]
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT


def _peer(grpc_context: Any) -> str | None:
    """The host of the caller (None for an in-process call without a context)."""
    if grpc_context is None:
        return None
    return grpc_peer_host(grpc_context.peer())


class RewardGrpcMethods:
    """Mixin of the reward ingress. Expects ``self.serving`` (RewardServing), ``self.api``
    (the ingress's :class:`~divreward.services.common.api.Api`: limits, auth, metrics,
    the idempotency cache) and ``self.groups`` (the GroupService of ``/v1/groups``)."""

    serving: Any
    api: Api
    groups: GroupService

    # ------------------------------------------------------------------ helpers
    def _check_auth(self, grpc_context: Any, rpc: str = "") -> str:
        """The caller's tenant (a 401 ServiceError if the call may not proceed), bound
        to the call's context for the fair queue, group assembly and metrics."""
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        tenant = self.api.auth.check(metadata.get("authorization"), _peer(grpc_context), grpc=True)
        bind_call(tenant, f"grpc:{rpc}" if rpc else None)
        return tenant

    def _fail(self, grpc_context: Any, err: ServiceError) -> ServiceError:
        if grpc_context is not None:
            grpc_context.set_code(grpc_code(err.status))
            grpc_context.set_details(f"{err.kind}: {err.message}")
            if err.retry_after_s is not None:
                # As HTTP's Retry-After header: whole seconds, rounded up.
                grpc_context.set_trailing_metadata([("retry-after", retry_after(err))])
        return err

    def _end(self, grpc_context: Any, err: ServiceError, rpc: str) -> Message:
        """End a unary call with the error's status. An error that says when to retry
        (429/503) is *returned* with its code set, not raised: only then does Serve's
        proxy pass the trailing metadata (``retry-after``) on to the client."""
        self._fail(grpc_context, err)
        if err.retry_after_s is not None and grpc_context is not None:
            return _REPLIES.get(rpc, pb.HealthResponse)()
        raise err from None

    async def _cached_call(
        self,
        rpc: str,
        request: Message,
        req: BaseModel,
        call: Callable[[Any], Awaitable[BaseModel]],
        tenant: str = DEFAULT_TENANT,
    ) -> Message:
        """``call(req)`` with the ingress's timeout; a repeated request_id with the same
        bytes is answered from the idempotency cache (a different body is a 409)."""

        async def compute() -> CachedReply:
            reply = to_proto(await self.api.with_timeout(call(req)))
            return CachedReply(200, "application/x-protobuf", reply.SerializeToString())

        route = f"grpc:{rpc}"
        body = request.SerializeToString(deterministic=True)
        end = self.api.metrics.begin(route, tenant)
        try:
            cached, replayed = await self.api.cache.run(
                route, getattr(req, "request_id", None), body, compute
            )
        finally:
            end()
        if replayed:
            self.api.metrics.replay(route, tenant)
        reply = _REPLIES[rpc]()
        reply.ParseFromString(cached.body)
        return reply

    async def _unary(
        self,
        rpc: str,
        request: Message,
        model: type[BaseModel],
        call: Callable[[Any], Awaitable[BaseModel]],
        grpc_context: Any,
    ) -> Message:
        t0 = time.perf_counter()
        tenant = DEFAULT_TENANT
        try:
            tenant = self._check_auth(grpc_context, rpc)
            req = from_proto(request, model)
            reply = await self._cached_call(rpc, request, req, call, tenant)
        except Exception as exc:
            err = self.api.failed(f"grpc:{rpc}", exc)
            self.api.metrics.count(
                f"grpc:{rpc}", err.status, time.perf_counter() - t0, err.kind, tenant
            )
            return self._end(grpc_context, err, rpc)
        self.api.metrics.count(f"grpc:{rpc}", 200, time.perf_counter() - t0, tenant=tenant)
        return reply

    async def _no_arg(
        self, rpc: str, call: Callable[[], Awaitable[BaseModel]], grpc_context: Any, auth: bool
    ) -> Message:
        t0 = time.perf_counter()
        tenant = DEFAULT_TENANT
        try:
            if auth:
                tenant = self._check_auth(grpc_context, rpc)
            result = await self.api.with_timeout(call())
        except Exception as exc:
            err = self.api.failed(f"grpc:{rpc}", exc)
            self.api.metrics.count(
                f"grpc:{rpc}", err.status, time.perf_counter() - t0, err.kind, tenant
            )
            raise self._fail(grpc_context, err) from None
        self.api.metrics.count(f"grpc:{rpc}", 200, time.perf_counter() - t0, tenant=tenant)
        return to_proto(result)

    # ------------------------------------------------------------------ unary RPCs
    async def Health(self, request: pb.HealthRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        async def ok() -> HealthResponse:
            return HealthResponse()

        return await self._no_arg("Health", ok, grpc_context, auth=False)

    async def Ready(self, request: pb.ReadyRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        async def ready() -> ReadyResponse:
            states = await self.serving.ready()
            ok = all(v == "ok" for v in states.values())
            return ReadyResponse(status="ready" if ok else "not_ready", deployments=states)

        return await self._no_arg("Ready", ready, grpc_context, auth=False)

    async def Models(self, request: pb.ModelsRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._no_arg("Models", self.serving.models, grpc_context, auth=True)

    async def Score(self, request: pb.ScoreRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._unary("Score", request, ScoreRequest, self.serving.score, grpc_context)

    async def Embed(self, request: pb.EmbedRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._unary("Embed", request, EmbedRequest, self.serving.embed, grpc_context)

    async def Diversity(self, request: pb.DiversityRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._unary(
            "Diversity", request, DiversityRequest, self.serving.diversity, grpc_context
        )

    async def Metrics(self, request: pb.MetricsRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._unary(
            "Metrics", request, MetricsRequest, self.serving.metrics, grpc_context
        )

    async def Rewards(self, request: pb.RewardsRequest, grpc_context: Any = None) -> Message:  # noqa: N802
        return await self._unary(
            "Rewards", request, RewardsRequest, self.serving.rewards, grpc_context
        )

    async def SubmitGroup(  # noqa: N802
        self, request: pb.GroupSubmission, grpc_context: Any = None
    ) -> Message:
        return await self._unary(
            "SubmitGroup", request, GroupSubmission, self.groups.submit, grpc_context
        )

    # ------------------------------------------------------------------ streaming
    async def RewardStream(  # noqa: N802
        self, request_stream: AsyncIterator[pb.GroupSubmission], grpc_context: Any = None
    ) -> AsyncIterator[Message]:
        """Answer every submission of the stream once, as soon as it is computed."""
        try:
            tenant = self._check_auth(grpc_context, "RewardStream")
        except ServiceError as err:
            raise self._fail(grpc_context, err) from None
        answers: asyncio.Queue[Message | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(message: pb.GroupSubmission) -> None:
            try:
                answers.put_nowait(await self._stream_one(message, tenant))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for message in request_stream:
                    await slots.acquire()
                    task = asyncio.create_task(answer(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                # wait for every submission already read, then end the stream
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                reply = await answers.get()
                if reply is None:
                    break
                yield reply
            reader.result()  # an error reading the stream ends the call with it
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, message: pb.GroupSubmission, tenant: str) -> Message:
        t0 = time.perf_counter()
        route = "grpc:RewardStream"
        bind_call(tenant, route)  # this submission's task: the stream's tenant
        group_id = message.group_id
        request_id = message.request_id if message.HasField("request_id") else None
        try:
            sub = from_proto(message, GroupSubmission)
            reply = await self._cached_call(
                "RewardStream", message, sub, self.groups.submit, tenant
            )
        except Exception as exc:
            err = self.api.failed("grpc:RewardStream", exc)
            self.api.metrics.count(
                "grpc:RewardStream", err.status, time.perf_counter() - t0, err.kind, tenant
            )
            failed = GroupSubmissionResult(
                group_id=group_id, request_id=request_id, error=err.to_response().error
            )
            return to_proto(failed)
        self.api.metrics.count(route, 200, time.perf_counter() - t0, tenant=tenant)
        return reply


# Reply classes by RPC, to parse cached replies.
_REPLIES: dict[str, type[Message]] = {
    "Score": pb.ScoreResponse,
    "Embed": pb.EmbedResponse,
    "Diversity": pb.DiversityResponse,
    "Metrics": pb.MetricsResponse,
    "Rewards": pb.RewardsResponse,
    "SubmitGroup": pb.GroupSubmissionResult,
    "RewardStream": pb.GroupSubmissionResult,
}
