"""One long-lived gRPC ``RewardStream`` that many ``submit`` calls share.

Each submission is written to the stream as soon as it is submitted and answered when
its group is complete, possibly out of order; answers are matched to submissions by
``request_id``. If the stream breaks (server restart, proxy failover), the session
reopens it with backoff and re-sends every submission that has not been answered yet,
with the same request ids, so the server answers a group it already computed from its
cache instead of scoring it twice. After ``retry.max_attempts`` consecutive failed
attempts without an answer in between, every waiting submission fails with
:class:`ServiceUnavailableError`; a later ``submit`` starts over. With nothing pending the
stream stays open for ``idle_s``, then closes; a submission made meanwhile keeps it open
until its answer (it once closed then, leaving the submission unanswered until the
client's timeout sent it again: tests/client/test_client_stream_idle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

import grpc

from divreward.client._grpc import AsyncGrpcTransport, grpc_error, proxy_app_missing
from divreward.client.errors import ServiceUnavailableError
from divreward.client.retry import RETRYABLE_GRPC_CODES, new_request_id
from divreward.proto.convert import to_proto
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

__all__ = ["StreamSession"]

log = logging.getLogger(__name__)

# A stream that ends with one of these was cut by the infrastructure (not refused):
# reopen it. CANCELLED is in the list because a server shutting down cancels its calls.
_STREAM_RETRYABLE = RETRYABLE_GRPC_CODES | {"CANCELLED"}
_EOF = object()
_Entry = tuple[GroupSubmission, "asyncio.Future[GroupSubmissionResult]"]


class StreamSession:
    """Multiplexes submissions over one bidirectional stream (asyncio, one event loop)."""

    def __init__(self, transport: AsyncGrpcTransport, idle_s: float = 10.0) -> None:
        self._transport = transport
        self._idle_s = idle_s
        self._retry = transport.retry
        self._pending: OrderedDict[
            str, tuple[GroupSubmission, asyncio.Future[GroupSubmissionResult]]
        ]
        self._pending = OrderedDict()
        self._outbox: asyncio.Queue[GroupSubmission] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, submission: GroupSubmission) -> GroupSubmissionResult:
        """Send one submission and wait for its answer (which may carry ``error``)."""
        if self._closed:
            raise RuntimeError("the stream session is closed")
        rid = submission.request_id
        if rid is None:
            raise ValueError("submission.request_id is required to match its answer")
        future: asyncio.Future[GroupSubmissionResult] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (submission, future)
        self._outbox.put_nowait(submission)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        try:
            return await future
        finally:
            self._pending.pop(rid, None)

    async def _run(self) -> None:
        failures = 0
        last: Exception | None = None
        while self._pending_unanswered() and not self._closed:
            # Everything unanswered goes on the new stream, in submission order: a stream
            # closed while a submission was on it (idle, broken) must not lose it.
            self._requeue()
            call = self._transport.open_stream(new_request_id())
            replies: asyncio.Queue[object] = asyncio.Queue()
            writer = asyncio.create_task(self._write(call, {}))
            reader = asyncio.create_task(self._read(call, replies))
            answered = False
            try:
                while True:
                    # Keep the stream open while idle for a while: opening one costs a
                    # round trip through the proxy to a replica.
                    idle = None if self._pending_unanswered() else self._idle_s
                    try:
                        item = await asyncio.wait_for(replies.get(), timeout=idle)
                    except TimeoutError:
                        if self._pending_unanswered():
                            # Submitted during the idle wait: the stream is busy again.
                            continue
                        break
                    if isinstance(item, grpc.RpcError):
                        raise item
                    if item is _EOF:
                        if self._pending_unanswered():
                            raise ServiceUnavailableError(
                                "the server ended the stream with groups unanswered"
                            )
                        break
                    result = self._transport.parse(
                        item, GroupSubmissionResult, "RewardStream", "stream"
                    )
                    entry = self._pending.get(result.request_id or "")
                    if entry is None:
                        log.warning("stream answer for unknown request_id %s", result.request_id)
                        continue
                    answered = True
                    failures = 0
                    if not entry[1].done():
                        entry[1].set_result(result)
                continue
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() is not None else "UNKNOWN"
                if code not in _STREAM_RETRYABLE and not proxy_app_missing(exc):
                    self._fail_all(grpc_error(exc, self._transport.target, "stream", 1))
                    return
                failures = 0 if answered else failures + 1
                last = grpc_error(exc, self._transport.target, "stream", failures)
            except ServiceUnavailableError as exc:
                failures = 0 if answered else failures + 1
                last = exc
            finally:
                for task in (writer, reader):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                        await task
                call.cancel()
            if failures >= self._retry.max_attempts:
                self._fail_all(
                    ServiceUnavailableError(
                        f"stream to {self._transport.target} failed {failures} times in a row; "
                        f"last error: {last}",
                        attempts=failures,
                    )
                )
                return
            log.info("reward stream broken (%s); reopening (attempt %d)", last, failures + 1)
            await asyncio.sleep(self._retry.delay(max(failures, 1)))

    @staticmethod
    async def _read(call: grpc.aio.StreamStreamCall, replies: asyncio.Queue[object]) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    replies.put_nowait(_EOF)
                    return
                replies.put_nowait(reply)
        except grpc.RpcError as exc:
            replies.put_nowait(exc)

    def _pending_unanswered(self) -> bool:
        return any(not fut.done() for _, fut in self._pending.values())

    def _requeue(self) -> None:
        """Rebuild the outbox: every unanswered submission, in submission order."""
        self._outbox = asyncio.Queue()
        for sub, fut in self._pending.values():
            if not fut.done():
                self._outbox.put_nowait(sub)

    async def _write(
        self,
        call: grpc.aio.StreamStreamCall,
        sent: dict[str, asyncio.Future[GroupSubmissionResult]],
    ) -> None:
        """Write each waiting submission once per stream (a submission made again with
        the same request id after its answer, as a retry, is written again)."""
        while True:
            sub = await self._outbox.get()
            rid = sub.request_id or ""
            entry = self._pending.get(rid)
            if entry is None or entry[1].done() or sent.get(rid) is entry[1]:
                continue
            sent[rid] = entry[1]
            await call.write(to_proto(sub))

    def _fail_all(self, exc: Exception) -> None:
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._outbox = asyncio.Queue()

    async def close(self) -> None:
        self._closed = True
        self._fail_all(RuntimeError("the client was closed with groups unanswered"))
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
