"""gRPC transport (grpcio, asyncio), with the retry policy of :mod:`.retry`.

Every call carries the request id twice: in the message's ``request_id`` field (the
server's idempotency key) and as ``request_id`` metadata (Ray Serve's own request id,
which shows up in its logs). With several Serve applications, the ``application``
metadata routes the call to the reward application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from pydantic import BaseModel, ValidationError

from divreward.client.errors import (
    RewardClientError,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
    ServiceUnavailableError,
)
from divreward.client.retry import (
    RETRYABLE_GRPC_CODES,
    RetryPolicy,
    final_error,
    parse_retry_after,
)
from divreward.proto import divreward_pb2_grpc as pb_grpc
from divreward.proto.convert import from_proto, to_proto

__all__ = ["AsyncGrpcTransport", "grpc_error", "proxy_app_missing"]

R = TypeVar("R", bound=BaseModel)

# 64 MiB each way: a group of 24 PNGs at 512x512 is ~10-20 MB.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def _target(url: str) -> str:
    for prefix in ("grpc://", "grpcs://"):
        if url.startswith(prefix):
            return url[len(prefix) :].rstrip("/")
    return url.rstrip("/")


def grpc_error(exc: grpc.RpcError, target: str, request_id: str, attempts: int) -> Exception:
    """The client error for a failed call, with the server's message (its details)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    name = code.name if code is not None else "UNKNOWN"
    if name == "DEADLINE_EXCEEDED":
        return RewardTimeoutError(f"{target}: DEADLINE_EXCEEDED: {details}", request_id=request_id)
    if name == "UNAVAILABLE":
        hint = ""
        if "ssl" in details.lower() or "handshake" in details.lower():
            hint = " (a TLS failure: is ca_file / $DIVREWARD_CA_FILE the server's CA?)"
        return ServiceUnavailableError(
            f"cannot reach {target} after {attempts} attempt(s): UNAVAILABLE: {details}{hint}",
            request_id=request_id,
            attempts=attempts,
        )
    if name == "ABORTED" and details.startswith("timeout:"):
        # an assembled group that never completed (HTTP 408)
        return RewardTimeoutError(f"{target}: ABORTED: {details}", request_id=request_id)
    if name in RETRYABLE_GRPC_CODES:
        return RewardServiceError(name, details, request_id=request_id, attempts=attempts)
    return RewardRequestError(name, details, request_id=request_id, attempts=attempts)


def retry_after_of(exc: grpc.RpcError) -> float | None:
    """The server's ``retry-after`` trailing metadata (seconds), if any."""
    try:
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    except Exception:  # a channel-level failure has no trailers
        return None
    for key, value in trailing or ():
        if key == "retry-after":
            return parse_retry_after(value if isinstance(value, str) else value.decode())
    return None


def proxy_app_missing(exc: grpc.RpcError) -> bool:
    """Ray Serve's gRPC proxy is up but the application is not deployed (yet), as during
    a restart: NOT_FOUND pointing to ListApplications."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    return code == grpc.StatusCode.NOT_FOUND and "not found. Ping" in details


def _retryable(exc: grpc.RpcError, retry: RetryPolicy) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    return (
        name in RETRYABLE_GRPC_CODES
        or proxy_app_missing(exc)
        or (name == "DEADLINE_EXCEEDED" and retry.retry_timeouts)
    )


class AsyncGrpcTransport:
    """asyncio transport over one ``grpc.aio`` channel (create it inside the event loop:
    a ``grpc.aio`` channel belongs to the loop that creates it)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        application: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        ca_file: str | None = None,
    ) -> None:
        self.target = _target(url)
        self.timeout_s = timeout_s
        self.retry = retry
        self.application = application
        self.extra_metadata = list(metadata)
        if url.startswith("grpcs://"):  # verified TLS, never a plaintext fallback
            roots = Path(ca_file).read_bytes() if ca_file else None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.aio.secure_channel(self.target, creds, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.RewardServiceStub(self._channel)

    def metadata(self, request_id: str) -> list[tuple[str, str]]:
        md = [("request_id", request_id), *self.extra_metadata]
        if self.application:
            md.append(("application", self.application))
        return md

    def parse(self, reply: Any, model: type[R], rpc: str, request_id: str) -> R:
        """The pydantic model of a protobuf reply; a malformed one is a client error."""
        try:
            return from_proto(reply, model)
        except ValidationError as exc:
            raise RewardClientError(
                f"the server's answer to {rpc} is not a valid {model.__name__}: {exc}",
                request_id=request_id,
            ) from exc

    async def call(self, rpc: str, request: BaseModel | None, model: type[R], request_id: str) -> R:
        message = to_proto(request) if request is not None else _empty_request(rpc)
        method = getattr(self._stub, rpc)
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                reply = await method(
                    message, timeout=self.timeout_s, metadata=self.metadata(request_id)
                )
                return self.parse(reply, model, rpc, request_id)
            except grpc.RpcError as exc:
                err = grpc_error(exc, self.target, request_id, attempt)
                if not _retryable(exc, self.retry):
                    raise err from None
                wait = self.retry.next_wait(attempt, waited, retry_after_of(exc))
                if wait is None:
                    raise final_error(err, attempt, waited, self.retry) from None
            await asyncio.sleep(wait)
            waited += wait

    def open_stream(self, request_id: str) -> grpc.aio.StreamStreamCall:
        """A raw bidirectional ``RewardStream`` call (write/read/done_writing)."""
        return self._stub.RewardStream(metadata=self.metadata(request_id))

    async def aclose(self) -> None:
        await self._channel.close()


def _empty_request(rpc: str) -> Any:
    from divreward.proto import divreward_pb2 as pb

    return {"Health": pb.HealthRequest, "Ready": pb.ReadyRequest, "Models": pb.ModelsRequest}[rpc]()
