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

There is one implementation, :class:`AsyncRewardClient`. :class:`RewardClient` runs one
on an event loop in a background thread and waits for its calls; both take their
options as one :class:`ClientSettings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import logging
import os
import queue
import threading
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from divreward.client._grpc import AsyncGrpcTransport
from divreward.client._http import WIRES, AsyncHttpTransport, HttpRoute, Wire
from divreward.client._requests import (
    AdvantageArg,
    DiversityArg,
    Group,
    ImageOptions,
    advertised_max_side,
    embed_request,
    group_submission,
    metrics_request,
    rewards_request,
    score_request,
    snapshot_images,
)
from divreward.client._stream import StreamSession
from divreward.client.errors import RewardServiceError, RewardTimeoutError
from divreward.client.retry import (
    RetryPolicy,
    gave_up,
    new_request_id,
    retryable_http_status,
)
from divreward.client.tls import CA_ENV, TOKEN_ENV, check_token, tls_ca_file
from divreward.schema import (
    EmbedResponse,
    HealthResponse,
    MetricsResponse,
    ModelsResponse,
    RewardsResponse,
    ScoreResponse,
)
from divreward.schema_stream import GroupSubmissionResult

__all__ = ["AsyncRewardClient", "ClientSettings", "RewardClient"]

Transport = Literal["http", "grpc"]
log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# operation -> (HTTP route, gRPC method)
_OPS: dict[str, tuple[HttpRoute, str]] = {
    "health": (HttpRoute("GET", "/healthz"), "Health"),
    "models": (HttpRoute("GET", "/v1/models"), "Models"),
    "score": (HttpRoute("POST", "/v1/score"), "Score"),
    "embed": (HttpRoute("POST", "/v1/embed"), "Embed"),
    "metrics": (HttpRoute("POST", "/v1/metrics"), "Metrics"),
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """What a client is configured with: the constructor arguments of both clients.

    Args:
        url: ``http://host:8000`` (HTTP) or ``grpc://host:9000`` (gRPC).
        transport: override the scheme's choice of transport.
        timeout_s: per attempt; the whole call takes at most about
            ``retry.max_attempts * timeout_s`` plus the backoff.
        retry: attempts and backoff (:class:`RetryPolicy`; None: the default policy);
            ``RetryPolicy(max_attempts=1)`` disables retries.
        downsize: shrink images to the largest resolution the server's models use (it
            advertises it in ``/v1/models``) before sending; saves bandwidth, changes
            scores slightly (a second resampling).
        image_format: ``PNG`` (lossless, default), ``JPEG`` or ``WEBP``.
        image_quality: JPEG/WebP quality.
        namespace: keeps this run's assembled groups apart from other runs' (submit with
            ``group_size``).
        application: Ray Serve application of the reward service (default ``reward``,
            the name ``divreward serve`` deploys it under), sent as gRPC metadata: Serve's
            gRPC proxy needs it when the cluster runs several applications.
        wire: HTTP body encoding, ``msgpack`` (binary, default) or ``json``.
        headers: extra HTTP headers / gRPC metadata.
        max_in_flight: ``stream`` keeps at most this many groups unanswered.
        token: this trainer's bearer token, sent as ``authorization: Bearer <token>``
            (default: ``$DIVREWARD_API_TOKEN``; one token, never a list: a comma in it is
            an error). An ``authorization`` entry in ``headers`` wins over both.
        ca_file: PEM file of the CA(s) that signed the server's certificate, for
            ``https://`` and ``grpcs://`` (default: ``$DIVREWARD_CA_FILE``, else
            ``$SSL_CERT_FILE``, else the system's trust store). ``grpcs://`` and
            ``https://`` are always verified TLS, never plaintext.
    """

    url: str = dataclasses.field(kw_only=False)
    transport: Transport | None = None
    timeout_s: float = 120.0
    retry: RetryPolicy | None = None
    downsize: bool = True
    image_format: str = "PNG"
    image_quality: int = 95
    namespace: str | None = None
    application: str | None = "reward"
    wire: Wire = "msgpack"
    headers: Mapping[str, str] | None = None
    max_in_flight: int = 16
    token: str | None = None
    ca_file: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.wire not in WIRES:
            raise ValueError(f"wire must be 'msgpack' or 'json', got {self.wire!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        _transport_kind(self.url, self.transport)  # a bad url or transport fails here
        set_ = functools.partial(object.__setattr__, self)
        set_("retry", self.retry or RetryPolicy())
        set_("image_format", self.image_format.upper())
        headers = dict(self.headers or {})
        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV)
        if token is not None:
            token = check_token(token, "token" if self.token is not None else TOKEN_ENV)
            if not any(k.lower() == "authorization" for k in headers):
                headers["authorization"] = f"Bearer {token}"
        set_("token", token)
        set_("headers", headers)
        ca = self.ca_file or os.environ.get(CA_ENV) or os.environ.get("SSL_CERT_FILE") or None
        set_("ca_file", tls_ca_file(ca) if ca else None)

    @property
    def kind(self) -> Transport:
        """The transport in use: ``"http"`` or ``"grpc"``."""
        return _transport_kind(self.url, self.transport)

    def open_transport(self) -> AsyncHttpTransport | AsyncGrpcTransport:
        """A new transport (call it inside the event loop that will use it)."""
        retry = self.retry or RetryPolicy()
        headers = dict(self.headers or {})
        if self.kind == "http":
            return AsyncHttpTransport(
                self.url,
                timeout_s=self.timeout_s,
                retry=retry,
                wire=self.wire,
                headers=headers,
                ca_file=os.fspath(self.ca_file) if self.ca_file else None,
            )
        return AsyncGrpcTransport(
            self.url,
            timeout_s=self.timeout_s,
            retry=retry,
            application=self.application,
            metadata=[(k.lower(), v) for k, v in headers.items()],
            ca_file=os.fspath(self.ca_file) if self.ca_file else None,
        )


def _options_of(
    settings: Callable[P, ClientSettings],
) -> Callable[[Callable[[Any, ClientSettings], None]], Callable[Concatenate[Any, P], None]]:
    """Turns ``__init__(self, settings)`` into ``__init__(self, url, **options)`` taking
    the arguments of ``settings`` (so type checkers and ``help()`` show them)."""
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([self_param, *inspect.signature(settings).parameters.values()])

    def decorate(init: Callable[[Any, ClientSettings], None]) -> Any:
        @functools.wraps(init)
        def __init__(self: Any, *args: P.args, **kwargs: P.kwargs) -> None:  # noqa: N807
            try:
                options = settings(*args, **kwargs)
            except TypeError as exc:  # a misspelt option: say whose
                raise TypeError(f"{type(self).__name__}: {exc}") from None
            init(self, options)

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        return __init__

    return decorate


class AsyncRewardClient:
    """asyncio client: quality, diversity, rewards and advantages from a divreward
    service. Keyword arguments: see :class:`ClientSettings`."""

    @_options_of(ClientSettings)
    def __init__(self, settings: ClientSettings) -> None:
        self._s = settings
        # Transports are made on first use, inside the running event loop (grpc.aio
        # channels belong to the loop that creates them).
        self._t: AsyncHttpTransport | AsyncGrpcTransport | None = None
        self._session: StreamSession | None = None
        self._max_side: int | None = None
        self._max_side_known = not settings.downsize

    @property
    def transport(self) -> Transport:
        return self._s.kind

    def _transport(self) -> AsyncHttpTransport | AsyncGrpcTransport:
        if self._t is None:
            self._t = self._s.open_transport()
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
        """How to encode images; with ``downsize``, asks the server once for its
        ``max_resolution``."""
        if not self._max_side_known:
            self._max_side = advertised_max_side(await self.models())
            self._max_side_known = True
        return ImageOptions(
            max_side=self._max_side, fmt=self._s.image_format, quality=self._s.image_quality
        )

    # ------------------------------------------------------------------ unary calls
    async def health(self) -> HealthResponse:
        """Liveness of the service."""
        return await self._call("health", None, HealthResponse)

    async def models(self) -> ModelsResponse:
        """Scorers, embedder, default parameters and limits of the server."""
        return await self._call("models", None, ModelsResponse)

    async def score(
        self,
        images: Any,
        prompts: Sequence[str],
        *,
        scorers: Sequence[str] | None = None,
        request_id: str | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> ScoreResponse:
        """Quality scores only: ``.scores[name][i]`` rates ``images[i]`` for ``prompts[i]``
        (``metadata[i]``: image i's prompt metadata, for scorers such as geneval)."""
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(score_request, images, prompts, scorers, rid, opts, metadata)
        return await self._call("score", req, ScoreResponse, rid)

    async def embed(self, images: Any, *, request_id: str | None = None) -> EmbedResponse:
        """Embeddings of the server's embedder, one per image."""
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(embed_request, images, rid, opts)
        return await self._call("embed", req, EmbedResponse, rid)

    async def metrics(
        self,
        groups: Sequence[Any],
        *,
        reference: Sequence[Any] | None = None,
        recall_k: int | None = None,
        request_id: str | None = None,
    ) -> MetricsResponse:
        """Evaluation metrics of groups of images (each group: one prompt's images), in
        the server's embedder's space: diversity, Vendi score and, with ``reference``
        groups (e.g. the base model's), generalized recall."""
        rid = request_id or new_request_id()
        opts = await self._image_options()
        req = await asyncio.to_thread(metrics_request, groups, reference, recall_k, rid, opts)
        return await self._call("metrics", req, MetricsResponse, rid)

    async def rewards(
        self,
        groups: Sequence[Group | tuple[str, Any]] | Group,
        *,
        quality: Mapping[str, float] | None = None,
        diversity: DiversityArg = None,
        advantage: AdvantageArg = None,
        return_embeddings: bool = False,
        request_id: str | None = None,
        aggregation: str | None = None,
    ) -> RewardsResponse:
        """Quality + diversity rewards and group advantages, one result per group.
        ``aggregation``: how the weighted scorers make Q, 'sum' (the server's default) or
        'gdpo' (each score normalised within its group first; docs/api.md)."""
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
                aggregation=aggregation,
            )
        )
        return await self._call("rewards", req, RewardsResponse, rid)

    # ------------------------------------------------------------- group submissions
    async def _submit(self, group: Group, params: Mapping[str, Any]) -> GroupSubmissionResult:
        """One group's answer, a failed group included (``error`` set). ``params``: the
        keyword arguments of :meth:`submit`."""
        opts = await self._image_options()
        # PNG/JPEG encoding of a group takes tens of ms: keep it off the event loop.
        sub = await asyncio.to_thread(
            lambda: group_submission(group, namespace=self._s.namespace, opts=opts, **params)
        )
        t = self._transport()
        if isinstance(t, AsyncHttpTransport):  # the transport retries a 429/5xx answer
            return await self._call("submit", sub, GroupSubmissionResult, sub.request_id)
        if self._session is None:
            self._session = StreamSession(t)
        # On the stream a group's error comes in-band: retry the transient ones (429, 5xx:
        # a replica that died with the group) as the transport does, with the same id;
        # and each attempt has the client's timeout, as a unary call has.
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                result = await asyncio.wait_for(self._session.submit(sub), t.timeout_s)
            except TimeoutError:
                if not t.retry.retry_timeouts or attempt >= t.retry.max_attempts:
                    raise RewardTimeoutError(
                        f"{t.target}: no answer to group {sub.group_id!r} on the stream "
                        f"within {t.timeout_s} s (attempt {attempt})",
                        request_id=sub.request_id,
                    ) from None
                log.info("group %s: no answer in %s s; sending it again", sub.group_id, t.timeout_s)
                continue
            err = result.error
            if err is None or not retryable_http_status(err.status):
                break
            # a 429 (the tenant's quota) says when to come back: retry_after_s
            wait = t.retry.next_wait(attempt, waited, err.retry_after_s)
            if wait is None:
                message = err.message + gave_up(attempt, waited, t.retry)
                return result.model_copy(
                    update={"error": err.model_copy(update={"message": message})}
                )
            log.info("group %s: %s %s; retrying", result.group_id, err.status, err.kind)
            await asyncio.sleep(wait)
            waited += wait
        return result

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
        aggregation: str | None = None,
    ) -> GroupSubmissionResult:
        """One group's rewards. Wrap in ``asyncio.create_task`` to overlap with generation
        (copy the images first if the buffers will be reused before the task runs).

        ``group.group_id`` is required; set ``group.group_size`` to submit a part of a
        group that the server assembles. Raises the error of a failed group.
        """
        params = dict(
            quality=quality,
            diversity=diversity,
            advantage=advantage,
            return_embeddings=return_embeddings,
            assembly_timeout_s=assembly_timeout_s,
            request_id=request_id,
            aggregation=aggregation,
        )
        return _raise_if_error(await self._submit(group, params))

    async def stream(
        self,
        groups: AsyncIterable[Group] | Iterable[Group],
        *,
        raise_errors: bool = True,
        **params: Any,
    ) -> AsyncIterator[GroupSubmissionResult]:
        """Submit groups as they come and yield answers as they complete (at most
        ``max_in_flight`` unanswered); over gRPC this is one bidirectional stream.

        ``params``: those of :meth:`submit`. ``raise_errors=False`` yields failed groups
        (``result.error`` set) instead of raising at the first one.
        """
        done: asyncio.Queue[asyncio.Task[GroupSubmissionResult]] = asyncio.Queue()
        slots = asyncio.Semaphore(self._s.max_in_flight)
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
        task = asyncio.create_task(self._submit(group, params))
        tasks.add(task)

        def finished(t: asyncio.Task[GroupSubmissionResult]) -> None:
            tasks.discard(t)
            done.put_nowait(t)

        task.add_done_callback(finished)

    # -------------------------------------------------------------------- lifecycle
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


# ----------------------------------------------------------------------- sync client
class _Background:
    """An :class:`AsyncRewardClient` and the event loop it runs on, in a daemon thread."""

    def __init__(self, settings: ClientSettings) -> None:
        self.pid = os.getpid()
        self.client = AsyncRewardClient(**_fields(settings))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="divreward-client", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:  # as asyncio.run ends: cancel what is left, join the worker threads
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it; an interrupted wait cancels it."""
        fut = self.start(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def close(self, timeout_s: float = 10.0) -> None:
        if os.getpid() != self.pid or not self.thread.is_alive():
            return  # closed already, or a forked child's copy of the parent's thread
        if threading.current_thread() is self.thread:  # e.g. garbage-collected there
            self.loop.create_task(self.client.aclose()).add_done_callback(
                lambda _: self.loop.stop()
            )
            return
        closing = self.start(self.client.aclose())
        try:
            closing.result(timeout_s)
        except TimeoutError:
            # A close (often from the garbage collector) never raises for a slow peer:
            # stopping the loop cancels what is left and drops its connections.
            closing.cancel()
            log.warning(
                "divreward client: closing its connections took over %.0f s; dropped", timeout_s
            )
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)


def _fields(settings: ClientSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def _snapshot(group: Group) -> Group:
    """The group with canonical copies of its images (the caller may reuse its buffers)."""
    return dataclasses.replace(group, images=snapshot_images(group.images))


def _as_method_of_sync_client(
    function: Callable[..., Any], method: Callable[..., Any], keep_doc: bool = False
) -> Any:
    """``function`` named and documented as ``method`` (whose signature it shows)."""
    doc = function.__doc__
    functools.update_wrapper(function, method)
    function.__qualname__ = f"RewardClient.{method.__name__}"
    if keep_doc:
        function.__doc__ = doc
    return function


def _blocking(
    method: Callable[Concatenate[AsyncRewardClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RewardClient, P], T]:
    """The blocking form of an :class:`AsyncRewardClient` method."""

    def call(self: RewardClient, *args: P.args, **kwargs: P.kwargs) -> T:
        bg = self._background()
        return bg.run(method(bg.client, *args, **kwargs))

    return _as_method_of_sync_client(call, method)


def _in_background(
    method: Callable[Concatenate[AsyncRewardClient, Group, P], Coroutine[Any, Any, T]],
    doc: str,
) -> Callable[Concatenate[RewardClient, Group, P], concurrent.futures.Future[T]]:
    """An :class:`AsyncRewardClient` method on one group, started in the background:
    returns a future at once, after copying the group's images."""

    def start(
        self: RewardClient, group: Group, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        bg = self._background()
        bg.run(bg.client._image_options())  # a server that cannot answer fails here
        return bg.start(method(bg.client, _snapshot(group), *args, **kwargs))

    start.__doc__ = doc
    return _as_method_of_sync_client(start, method, keep_doc=True)


class RewardClient:
    """Blocking client: the methods of :class:`AsyncRewardClient`, each waiting for its
    answer; ``submit``/``stream`` compute in the background. Keyword arguments: see
    :class:`ClientSettings`. Thread-safe."""

    @_options_of(ClientSettings)
    def __init__(self, settings: ClientSettings) -> None:
        self._s = settings
        self._lock = threading.Lock()
        self._bg: _Background | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def transport(self) -> Transport:
        return self._s.kind

    def _background(self) -> _Background:
        """The async client and its event loop, started on first use (and again in a
        forked child, which has no copy of the parent's thread)."""
        with self._lock:
            if self._bg is None or self._bg.pid != os.getpid():
                self._bg = _Background(self._s)
                # stop the thread when the client is garbage-collected unclosed
                self._finalizer = weakref.finalize(self, self._bg.close)
                self._finalizer.atexit = False
            return self._bg

    health = _blocking(AsyncRewardClient.health)
    models = _blocking(AsyncRewardClient.models)
    score = _blocking(AsyncRewardClient.score)
    embed = _blocking(AsyncRewardClient.embed)
    metrics = _blocking(AsyncRewardClient.metrics)
    rewards = _blocking(AsyncRewardClient.rewards)
    submit = _in_background(
        AsyncRewardClient.submit,
        """Start computing one group's rewards; returns a ``concurrent.futures.Future``
        at once.

        The images are copied before returning (the caller may reuse its buffers); the
        future's ``result()`` is the :class:`GroupSubmissionResult` or raises the error.
        ``group.group_id`` is required; set ``group.group_size`` to submit a part of a
        group that the server assembles. Keyword arguments: those of
        :meth:`AsyncRewardClient.submit`.
        """,
    )

    def stream(
        self,
        groups: Iterable[Group],
        *,
        raise_errors: bool = True,
        **params: Any,
    ) -> Iterator[GroupSubmissionResult]:
        """Submit every group of ``groups`` (at most ``max_in_flight`` unanswered at a time)
        and yield the answers as they complete, in completion order.

        ``groups`` is iterated in the calling thread (it may generate the images).
        ``params``: those of :meth:`submit`. ``raise_errors=False`` yields failed groups
        (``result.error`` set) instead of raising at the first one.
        """
        done: queue.Queue[concurrent.futures.Future[GroupSubmissionResult]] = queue.Queue()
        in_flight = 0
        for group in groups:
            while in_flight >= self._s.max_in_flight:
                yield self._finish(done.get(), raise_errors)
                in_flight -= 1
            bg = self._background()
            bg.run(bg.client._image_options())
            fut = bg.start(bg.client._submit(_snapshot(group), params))
            fut.add_done_callback(done.put)
            in_flight += 1
        while in_flight:
            yield self._finish(done.get(), raise_errors)
            in_flight -= 1

    @staticmethod
    def _finish(
        fut: concurrent.futures.Future[GroupSubmissionResult], raise_errors: bool
    ) -> GroupSubmissionResult:
        result = fut.result()
        return _raise_if_error(result) if raise_errors else result

    # -------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the connections and stop the background thread (a later call starts
        them again)."""
        with self._lock:
            finalizer, self._finalizer, self._bg = self._finalizer, None, None
        if finalizer is not None:
            finalizer()  # _Background.close, once

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
