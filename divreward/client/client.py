"""The divreward client: sync and async, over HTTP or gRPC, with the same methods.

>>> from divreward.client import RewardClient, Group
>>> client = RewardClient("grpc://reward-host:9000")          # or "http://reward-host:8000"
>>> res = client.rewards([Group("a red bicycle", images)])    # images: (G, 3, H, W) in [0, 1]
>>> res.groups[0].advantages
>>> fut = client.submit(Group("a red bicycle", images, group_id="step3/p0"))
>>> ...                                                        # generate the next group
>>> fut.result().advantages

``submit`` returns at once (after copying the images) and computes in the background;
over gRPC all submissions share one long-lived bidirectional stream, answered out of
order as groups complete. Every call has a timeout and bounded retries with backoff on
connection errors, 429 and 5xx, reusing its request id so the server never scores a
retried request twice. Other errors raise with the server's message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from divreward.client._grpc import AsyncGrpcTransport, GrpcTransport
from divreward.client._http import AsyncHttpTransport, HttpRoute, HttpTransport, Wire
from divreward.client._requests import (
    AdvantageArg,
    DiversityArg,
    Group,
    ImageOptions,
    advertised_max_side,
    embed_request,
    group_submission,
    rewards_request,
    score_request,
    snapshot_images,
)
from divreward.client._stream import StreamSession
from divreward.client.errors import RewardServiceError
from divreward.client.retry import RetryPolicy, new_request_id
from divreward.schema import (
    EmbedResponse,
    HealthResponse,
    ModelsResponse,
    RewardsResponse,
    ScoreResponse,
)
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

__all__ = ["AsyncRewardClient", "RewardClient"]

Transport = Literal["http", "grpc"]

# operation -> (HTTP route, gRPC method)
_OPS: dict[str, tuple[HttpRoute, str]] = {
    "health": (HttpRoute("GET", "/healthz"), "Health"),
    "models": (HttpRoute("GET", "/v1/models"), "Models"),
    "score": (HttpRoute("POST", "/v1/score"), "Score"),
    "embed": (HttpRoute("POST", "/v1/embed"), "Embed"),
    "rewards": (HttpRoute("POST", "/v1/rewards"), "Rewards"),
    "submit": (HttpRoute("POST", "/v1/groups"), "SubmitGroup"),
}


def _transport_kind(url: str, transport: Transport | None) -> Transport:
    if transport is not None:
        if transport not in ("http", "grpc"):
            raise ValueError(f"transport must be 'http' or 'grpc', got {transport!r}")
        return transport
    if url.startswith(("http://", "https://")):
        return "http"
    if url.startswith(("grpc://", "grpcs://")):
        return "grpc"
    raise ValueError(
        f"url {url!r}: start it with http:// or grpc://, or pass transport='http'|'grpc'"
    )


def _raise_if_error(result: GroupSubmissionResult) -> GroupSubmissionResult:
    if result.error is not None:
        err = result.error
        raise RewardServiceError(
            err.status, f"{err.kind}: {err.message}", request_id=result.request_id
        )
    return result


class _Settings:
    def __init__(
        self,
        url: str,
        transport: Transport | None,
        timeout_s: float,
        retry: RetryPolicy | None,
        downsize: bool,
        image_format: str,
        image_quality: int,
        namespace: str | None,
        application: str | None,
        wire: Wire,
        headers: Mapping[str, str] | None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.kind = _transport_kind(url, transport)
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.downsize = downsize
        self.image_format = image_format.upper()
        self.image_quality = image_quality
        self.namespace = namespace
        self.application = application
        self.wire = wire
        self.headers = dict(headers or {})
        self.max_side: int | None = None
        self.max_side_known = not downsize

    def image_options(self) -> ImageOptions:
        return ImageOptions(
            max_side=self.max_side, fmt=self.image_format, quality=self.image_quality
        )

    def learn_max_side(self, models: ModelsResponse) -> None:
        self.max_side = advertised_max_side(models)
        self.max_side_known = True

    def http_kwargs(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "retry": self.retry,
            "wire": self.wire,
            "headers": self.headers,
        }

    def grpc_kwargs(self) -> dict[str, Any]:
        md = [(k.lower(), v) for k, v in self.headers.items()]
        return {
            "timeout_s": self.timeout_s,
            "retry": self.retry,
            "application": self.application,
            "metadata": md,
        }


_CLIENT_DOC = """
    Args:
        url: ``http://host:8000`` (HTTP) or ``grpc://host:9000`` (gRPC).
        transport: override the scheme's choice of transport.
        timeout_s: per attempt; the whole call takes at most about
            ``retry.max_attempts * timeout_s`` plus the backoff.
        retry: attempts and backoff (:class:`RetryPolicy`); ``RetryPolicy(max_attempts=1)``
            disables retries.
        downsize: shrink images to the largest resolution the server's models use (it
            advertises it in ``/v1/models``) before sending; saves bandwidth, changes
            scores slightly (a second resampling).
        image_format: ``PNG`` (lossless, default), ``JPEG`` or ``WEBP``.
        namespace: keeps this run's assembled groups apart from other runs' (submit with
            ``group_size``).
        application: Ray Serve application of the reward service (default ``reward``,
            the name ``divreward serve`` deploys it under), sent as gRPC metadata: Serve's
            gRPC proxy needs it when the cluster runs several applications.
        wire: HTTP body encoding, ``msgpack`` (binary, default) or ``json``.
        headers: extra HTTP headers / gRPC metadata (e.g. ``authorization``).
"""


class RewardClient:
    """Blocking client; ``submit``/``stream`` run in a background event loop."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        url: str,
        *,
        transport: Transport | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        downsize: bool = True,
        image_format: str = "PNG",
        image_quality: int = 95,
        namespace: str | None = None,
        application: str | None = "reward",
        wire: Wire = "msgpack",
        headers: Mapping[str, str] | None = None,
        max_in_flight: int = 16,
    ) -> None:
        self._s = _Settings(
            url,
            transport,
            timeout_s,
            retry,
            downsize,
            image_format,
            image_quality,
            namespace,
            application,
            wire,
            headers,
        )
        self._t: HttpTransport | GrpcTransport = (
            HttpTransport(url, **self._s.http_kwargs())
            if self._s.kind == "http"
            else GrpcTransport(url, **self._s.grpc_kwargs())
        )
        self._max_in_flight = max_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._async: AsyncRewardClient | None = None
        self._lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        return self._s.kind

    def _call(self, op: str, request: Any, model: type[Any], request_id: str | None = None) -> Any:
        route, rpc = _OPS[op]
        rid = request_id or new_request_id()
        if isinstance(self._t, HttpTransport):
            return self._t.call(route, request, model, rid)
        return self._t.call(rpc, request, model, rid)

    def _image_options(self) -> ImageOptions:
        if not self._s.max_side_known:
            self._s.learn_max_side(self.models())
        return self._s.image_options()

    # ------------------------------------------------------------------ unary calls
    def health(self) -> HealthResponse:
        return self._call("health", None, HealthResponse)

    def models(self) -> ModelsResponse:
        """Scorers, embedder, default parameters and limits of the server."""
        return self._call("models", None, ModelsResponse)

    def score(
        self,
        images: Any,
        prompts: Sequence[str],
        *,
        scorers: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> ScoreResponse:
        """Quality scores only: ``.scores[name][i]`` rates ``images[i]`` for ``prompts[i]``."""
        rid = request_id or new_request_id()
        req = score_request(images, prompts, scorers, rid, self._image_options())
        return self._call("score", req, ScoreResponse, rid)

    def embed(self, images: Any, *, request_id: str | None = None) -> EmbedResponse:
        rid = request_id or new_request_id()
        return self._call(
            "embed", embed_request(images, rid, self._image_options()), EmbedResponse, rid
        )

    def rewards(
        self,
        groups: Sequence[Group | tuple[str, Any]] | Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        request_id: str | None = None,
    ) -> RewardsResponse:
        """Quality + diversity rewards and group advantages, one result per group."""
        rid = request_id or new_request_id()
        req = rewards_request(
            groups,  # type: ignore[arg-type]
            quality=quality,
            diversity=diversity,
            advantage=advantage,
            return_embeddings=return_embeddings,
            request_id=rid,
            opts=self._image_options(),
        )
        return self._call("rewards", req, RewardsResponse, rid)

    # ------------------------------------------------------------- overlapped calls
    def _background(self) -> tuple[asyncio.AbstractEventLoop, AsyncRewardClient]:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="divreward-client", daemon=True
                )
                thread.start()
                s = self._s

                async def make() -> AsyncRewardClient:
                    client = AsyncRewardClient(
                        s.url,
                        transport=s.kind,
                        timeout_s=s.timeout_s,
                        retry=s.retry,
                        downsize=False,  # this client learns max_side itself (below)
                        image_format=s.image_format,
                        image_quality=s.image_quality,
                        namespace=s.namespace,
                        application=s.application,
                        wire=s.wire,
                        headers=s.headers,
                        max_in_flight=self._max_in_flight,
                    )
                    return client

                self._async = asyncio.run_coroutine_threadsafe(make(), loop).result()
                self._loop, self._thread = loop, thread
            assert self._async is not None
            return self._loop, self._async

    def submit(
        self,
        group: Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        assembly_timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> concurrent.futures.Future[GroupSubmissionResult]:
        """Start computing one group's rewards; returns a future at once.

        The images are copied before returning (the caller may reuse its buffers); the
        future's ``result()`` is the :class:`GroupSubmissionResult` or raises the error.
        ``group.group_id`` is required; set ``group.group_size`` to submit a part of a
        group that the server assembles.
        """
        opts = self._image_options()
        loop, aclient = self._background()
        snapshot = Group(
            group.prompt, snapshot_images(group.images), group.group_id, group.group_size
        )
        aclient._s.max_side, aclient._s.max_side_known = opts.max_side, True
        coro = aclient.submit(
            snapshot,
            quality=quality,
            diversity=diversity,
            advantage=advantage,
            return_embeddings=return_embeddings,
            assembly_timeout_s=assembly_timeout_s,
            request_id=request_id,
        )
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def stream(
        self,
        groups: Iterable[Group],
        *,
        raise_errors: bool = True,
        **params: Any,
    ) -> Iterator[GroupSubmissionResult]:
        """Submit every group of ``groups`` (at most ``max_in_flight`` unanswered at a time)
        and yield the answers as they complete, in completion order.

        ``raise_errors=False`` yields failed groups (``result.error`` set) instead of
        raising at the first one.
        """
        done: queue.Queue[concurrent.futures.Future[GroupSubmissionResult]] = queue.Queue()
        in_flight = 0
        for group in groups:
            while in_flight >= self._max_in_flight:
                yield self._finish(done.get(), raise_errors)
                in_flight -= 1
            fut = self._submit_raw(group, params)
            fut.add_done_callback(done.put)
            in_flight += 1
        while in_flight:
            yield self._finish(done.get(), raise_errors)
            in_flight -= 1

    def _submit_raw(
        self, group: Group, params: dict[str, Any]
    ) -> concurrent.futures.Future[GroupSubmissionResult]:
        opts = self._image_options()
        loop, aclient = self._background()
        aclient._s.max_side, aclient._s.max_side_known = opts.max_side, True
        snapshot = Group(
            group.prompt, snapshot_images(group.images), group.group_id, group.group_size
        )
        return asyncio.run_coroutine_threadsafe(aclient._submit(snapshot, **params), loop)

    @staticmethod
    def _finish(
        fut: concurrent.futures.Future[GroupSubmissionResult], raise_errors: bool
    ) -> GroupSubmissionResult:
        result = fut.result()
        return _raise_if_error(result) if raise_errors else result

    # -------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._t.close()
        with self._lock:
            if self._loop is not None and self._async is not None:
                asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result(10)
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(10)
                self._loop.close()
                self._loop = self._async = self._thread = None

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRewardClient:
    """asyncio client: the same methods as :class:`RewardClient`, awaitable."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        url: str,
        *,
        transport: Transport | None = None,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        downsize: bool = True,
        image_format: str = "PNG",
        image_quality: int = 95,
        namespace: str | None = None,
        application: str | None = "reward",
        wire: Wire = "msgpack",
        headers: Mapping[str, str] | None = None,
        max_in_flight: int = 16,
    ) -> None:
        self._s = _Settings(
            url,
            transport,
            timeout_s,
            retry,
            downsize,
            image_format,
            image_quality,
            namespace,
            application,
            wire,
            headers,
        )
        self._max_in_flight = max_in_flight
        # Transports are made on first use, inside the running event loop (grpc.aio
        # channels belong to the loop that creates them).
        self._t: AsyncHttpTransport | AsyncGrpcTransport | None = None
        self._session: StreamSession | None = None

    @property
    def transport(self) -> Transport:
        return self._s.kind

    def _transport(self) -> AsyncHttpTransport | AsyncGrpcTransport:
        if self._t is None:
            self._t = (
                AsyncHttpTransport(self._s.url, **self._s.http_kwargs())
                if self._s.kind == "http"
                else AsyncGrpcTransport(self._s.url, **self._s.grpc_kwargs())
            )
        return self._t

    async def _call(
        self, op: str, request: Any, model: type[Any], request_id: str | None = None
    ) -> Any:
        route, rpc = _OPS[op]
        rid = request_id or new_request_id()
        t = self._transport()
        if isinstance(t, AsyncHttpTransport):
            return await t.call(route, request, model, rid)
        return await t.call(rpc, request, model, rid)

    async def _image_options(self) -> ImageOptions:
        if not self._s.max_side_known:
            self._s.learn_max_side(await self.models())
        return self._s.image_options()

    async def health(self) -> HealthResponse:
        return await self._call("health", None, HealthResponse)

    async def models(self) -> ModelsResponse:
        return await self._call("models", None, ModelsResponse)

    async def score(
        self,
        images: Any,
        prompts: Sequence[str],
        *,
        scorers: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> ScoreResponse:
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(score_request, images, prompts, scorers, rid, opts)
        return await self._call("score", req, ScoreResponse, rid)

    async def embed(self, images: Any, *, request_id: str | None = None) -> EmbedResponse:
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(embed_request, images, rid, opts)
        return await self._call("embed", req, EmbedResponse, rid)

    async def rewards(
        self,
        groups: Sequence[Group | tuple[str, Any]] | Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        request_id: str | None = None,
    ) -> RewardsResponse:
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(
            lambda: rewards_request(
                groups,  # type: ignore[arg-type]
                quality=quality,
                diversity=diversity,
                advantage=advantage,
                return_embeddings=return_embeddings,
                request_id=rid,
                opts=opts,
            )
        )
        return await self._call("rewards", req, RewardsResponse, rid)

    async def _submission(
        self,
        group: Group,
        quality: Mapping[str, float] | None,
        diversity: DiversityArg,
        advantage: AdvantageArg,
        return_embeddings: bool,
        assembly_timeout_s: float | None,
        request_id: str | None,
    ) -> GroupSubmission:
        opts = await self._image_options()
        rid = request_id or new_request_id()
        # PNG/JPEG encoding of a group takes tens of ms: keep it off the event loop.
        return await asyncio.to_thread(
            lambda: group_submission(
                group,
                namespace=self._s.namespace,
                quality=quality,
                diversity=diversity,
                advantage=advantage,
                return_embeddings=return_embeddings,
                assembly_timeout_s=assembly_timeout_s,
                request_id=rid,
                opts=opts,
            )
        )

    async def _submit(
        self,
        group: Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        assembly_timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> GroupSubmissionResult:
        """Like :meth:`submit` but returns failed groups (``error`` set) instead of raising."""
        sub = await self._submission(
            group, quality, diversity, advantage, return_embeddings, assembly_timeout_s, request_id
        )
        t = self._transport()
        if isinstance(t, AsyncGrpcTransport):
            if self._session is None:
                self._session = StreamSession(t)
            return await self._session.submit(sub)
        return await self._call("submit", sub, GroupSubmissionResult, sub.request_id)

    async def submit(
        self,
        group: Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        assembly_timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> GroupSubmissionResult:
        """One group's rewards. Wrap in ``asyncio.create_task`` to overlap with generation
        (copy the images first if the buffers will be reused before the task runs)."""
        result = await self._submit(
            group,
            quality=quality,
            diversity=diversity,
            advantage=advantage,
            return_embeddings=return_embeddings,
            assembly_timeout_s=assembly_timeout_s,
            request_id=request_id,
        )
        return _raise_if_error(result)

    async def stream(
        self,
        groups: AsyncIterable[Group] | Iterable[Group],
        *,
        raise_errors: bool = True,
        **params: Any,
    ) -> AsyncIterator[GroupSubmissionResult]:
        """Submit groups as they come and yield answers as they complete (at most
        ``max_in_flight`` unanswered); over gRPC this is one bidirectional stream."""
        done: asyncio.Queue[asyncio.Task[GroupSubmissionResult]] = asyncio.Queue()
        slots = asyncio.Semaphore(self._max_in_flight)
        tasks: set[asyncio.Task[GroupSubmissionResult]] = set()
        produced = 0
        finished = asyncio.Event()

        async def feed() -> None:
            nonlocal produced
            try:
                if isinstance(groups, AsyncIterable):
                    async for g in groups:
                        await self._launch(g, params, slots, done, tasks)
                        produced += 1
                else:
                    for g in groups:
                        await self._launch(g, params, slots, done, tasks)
                        produced += 1
            finally:
                finished.set()

        feeder = asyncio.create_task(feed())
        consumed = 0
        try:
            while True:
                if finished.is_set():
                    if consumed == produced:
                        break
                    task = await done.get()
                else:
                    # wait for an answer, or for the input to end (then drain the rest)
                    getter = asyncio.create_task(done.get())
                    waiter = asyncio.create_task(finished.wait())
                    await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if not getter.done():
                        getter.cancel()
                        continue
                    task = getter.result()
                consumed += 1
                slots.release()
                result = task.result()
                yield _raise_if_error(result) if raise_errors else result
            feeder.result()  # re-raise an error of the groups iterator
        finally:
            feeder.cancel()
            for t in tasks:
                t.cancel()

    async def _launch(
        self,
        group: Group,
        params: dict[str, Any],
        slots: asyncio.Semaphore,
        done: asyncio.Queue[asyncio.Task[GroupSubmissionResult]],
        tasks: set[asyncio.Task[GroupSubmissionResult]],
    ) -> None:
        await slots.acquire()
        task = asyncio.create_task(self._submit(group, **params))
        tasks.add(task)

        def finished(t: asyncio.Task[GroupSubmissionResult]) -> None:
            tasks.discard(t)
            done.put_nowait(t)

        task.add_done_callback(finished)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._t is not None:
            await self._t.aclose()
            self._t = None

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
