"""Weighted fair queueing of images, per ingress replica, in front of the model
deployments.

Ray Serve has no per-request priority: its queues are FIFO. So each ingress replica
bounds the images it has *in flight* to the models (``capacity``) and, when that bound
is reached, holds further work in one FIFO per tenant, released in start-time fair
queueing order (SFQ, Goyal-Vin-Cheng '96), by image count:

- an entry of ``n`` images of a tenant of weight ``w`` is tagged on arrival with a
  virtual start ``S = max(V, F_tenant)`` and finish ``F = S + n / w`` (``F_tenant``:
  the finish tag of that tenant's previous entry), and ``F_tenant = F``;
- the waiting entry with the smallest ``S`` goes next (ties: arrival order) as soon as
  its images fit under ``capacity`` (an entry larger than ``capacity`` goes alone);
  ``V`` becomes its ``S``.

Under contention, tenants get images through in proportion to their weights; a tenant
that has sent less than its share restarts at ``V`` and so goes before the queued work
of tenants that are ahead; nobody banks credit while idle. With room under
``capacity`` and nobody waiting, an entry goes at once (no await, no added latency).

Each tenant may have at most ``max_queued_images`` images *waiting* (not counting those
in flight): a request that would exceed it is refused whole with a 429 whose
Retry-After estimates when enough of that tenant's queue will have drained (its queued
images beyond the quota, over its share of the throughput measured recently). A tenant
with nothing waiting is always admitted, so a request larger than the quota is never
refused forever. Every admitted entry is served: nothing is dropped.

The scheduler itself (:class:`FairScheduler`) is synchronous and takes its clock as an
argument, so its behaviour is tested without any timing; :class:`FairQueue` wraps it
for asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from divreward.services.common.errors import ServiceError

__all__ = ["Entry", "FairQueue", "FairScheduler", "TenantShare"]

#: Seconds of completions the throughput estimate (for Retry-After) looks back over.
RATE_WINDOW_S = 30.0


@dataclass(frozen=True)
class TenantShare:
    """What the scheduler needs of a tenant."""

    weight: float = 1.0
    max_queued_images: int | None = None


@dataclass(eq=False)
class Entry:
    """Some images of one tenant, waiting for or holding room under the capacity."""

    tenant: str
    images: int
    start: float
    seq: int
    enqueued_at: float
    granted_at: float | None = None
    released: bool = False
    on_grant: Callable[[Entry], None] | None = field(default=None, repr=False)

    @property
    def granted(self) -> bool:
        return self.granted_at is not None


@dataclass
class _Flow:
    share: TenantShare
    finish: float = 0.0  # finish tag of the tenant's latest entry
    queued_images: int = 0


class FairScheduler:
    """SFQ by images under a bound on images in flight (see the module's docstring).

    ``shares``: tenant -> TenantShare (a tenant not listed has weight 1 and no quota).
    ``clock``: seconds, monotonic (injected: the tests drive it by hand).
    """

    def __init__(
        self,
        capacity: int,
        shares: Mapping[str, TenantShare] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after_floor_s: float = 1.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 image, got {capacity}")
        self.capacity = capacity
        self.shares = dict(shares or {})
        self.clock = clock
        self.retry_after_floor_s = retry_after_floor_s
        self.in_flight = 0
        self.vtime = 0.0
        self._flows: dict[str, _Flow] = {}
        self._heap: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._done: deque[tuple[float, int]] = deque()  # (time, images) completed

    # ------------------------------------------------------------------ state
    def flow(self, tenant: str) -> _Flow:
        f = self._flows.get(tenant)
        if f is None:
            f = self._flows[tenant] = _Flow(self.shares.get(tenant, TenantShare()))
        return f

    def queued_images(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return self.flow(tenant).queued_images
        return sum(f.queued_images for f in self._flows.values())

    # ------------------------------------------------------------------ arrivals
    def submit(self, tenant: str, sizes: Sequence[int]) -> list[Entry]:
        """Admit the entries of one request (one per group) atomically: all, or a 429
        ServiceError naming the tenant and its quota. Entries that fit now come back
        granted; the others are granted by later :meth:`release` calls."""
        sizes = [max(0, int(n)) for n in sizes]
        flow = self.flow(tenant)
        now = self.clock()
        quota = flow.share.max_queued_images
        if quota is not None and flow.queued_images > 0:
            # Images of this request that would wait: all of them when others wait.
            waiting = self._would_wait(sizes)
            if flow.queued_images + waiting > quota:
                raise self._over_quota(tenant, flow, waiting, quota, now)
        entries = []
        for n in sizes:
            start = max(self.vtime, flow.finish)
            flow.finish = start + n / flow.share.weight
            entry = Entry(tenant, n, start, next(self._seq), now)
            flow.queued_images += n
            heapq.heappush(self._heap, (start, entry.seq, entry))
            entries.append(entry)
        self._dispatch(now)
        return entries

    def _would_wait(self, sizes: Sequence[int]) -> int:
        """Images of these entries that would not be granted at once."""
        if self._heap:
            return sum(sizes)
        in_flight, waiting = self.in_flight, 0
        for n in sizes:
            if waiting == 0 and (in_flight + n <= self.capacity or in_flight == 0):
                in_flight += n
            else:
                waiting += n
        return waiting

    def _over_quota(
        self, tenant: str, flow: _Flow, waiting: int, quota: int, now: float
    ) -> ServiceError:
        excess = flow.queued_images + waiting - quota
        retry = self.estimate_wait_s(tenant, excess, now)
        return ServiceError(
            429,
            "overloaded",
            f"tenant {tenant!r} is over its quota: {flow.queued_images} images already "
            f"waiting in this ingress replica's queue and this request would add {waiting} "
            f"(max_queued_images {quota}); retry after about {math.ceil(retry)} s",
            retry_after_s=retry,
        )

    def estimate_wait_s(self, tenant: str, images: int, now: float | None = None) -> float:
        """Seconds until ``images`` of this tenant's queued images have gone through, at
        its share (weight over the weights of the tenants waiting) of the throughput
        measured over the last RATE_WINDOW_S; at least ``retry_after_floor_s``."""
        now = self.clock() if now is None else now
        rate = self.throughput(now)
        if rate <= 0:
            return self.retry_after_floor_s
        waiting = {e.tenant for _, _, e in self._heap} | {tenant}
        total_w = sum(self.flow(t).share.weight for t in waiting)
        share = self.flow(tenant).share.weight / total_w
        return max(self.retry_after_floor_s, images / (rate * share))

    def throughput(self, now: float) -> float:
        """Images per second completed over the last RATE_WINDOW_S (0 if none)."""
        while self._done and self._done[0][0] < now - RATE_WINDOW_S:
            self._done.popleft()
        if not self._done:
            return 0.0
        span = max(now - self._done[0][0], 1.0)
        return sum(n for _, n in self._done) / span

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, now: float) -> None:
        while self._heap:
            start, _, entry = self._heap[0]
            fits = self.in_flight + entry.images <= self.capacity
            if not fits and self.in_flight > 0:
                return  # the head waits for room (it is never overtaken)
            heapq.heappop(self._heap)
            self.vtime = max(self.vtime, start)
            self.flow(entry.tenant).queued_images -= entry.images
            self.in_flight += entry.images
            entry.granted_at = now
            if entry.on_grant is not None:
                entry.on_grant(entry)

    def release(self, entry: Entry) -> None:
        """The entry's images are done (answered or failed): room for the next ones.
        An entry released before its grant (its caller went away) leaves the queue."""
        if entry.released:
            return
        entry.released = True
        now = self.clock()
        if entry.granted:
            self.in_flight -= entry.images
            self._done.append((now, entry.images))
            while self._done[0][0] < now - RATE_WINDOW_S:  # keep the window only
                self._done.popleft()
        else:
            self._heap = [item for item in self._heap if item[2] is not entry]
            heapq.heapify(self._heap)
            self.flow(entry.tenant).queued_images -= entry.images
        if not self._heap and self.in_flight == 0:
            # Idle: forget the past, so nobody's old finish tag counts against it.
            self.vtime = max([self.vtime, *(f.finish for f in self._flows.values())])
        self._dispatch(now)


class FairQueue:
    """The asyncio face of :class:`FairScheduler` in one ingress replica.

    ``async with queue.slots(tenant, sizes) as waits:`` admits a request (or raises the
    429), then ``async with waits[i]:`` around the model calls of its group ``i``: it
    waits for the group's turn and frees its room afterwards, whatever happens.
    ``on_wait(tenant, seconds)`` is called once per group when its turn comes,
    ``on_reject(tenant)`` once per request refused over the tenant's quota.
    """

    def __init__(
        self,
        scheduler: FairScheduler,
        on_wait: Callable[[str, float], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.on_wait = on_wait
        self.on_reject = on_reject

    @contextlib.asynccontextmanager
    async def slots(
        self, tenant: str, sizes: Sequence[int]
    ) -> AsyncIterator[list[contextlib.AbstractAsyncContextManager[None]]]:
        loop = asyncio.get_running_loop()
        events: dict[int, asyncio.Future[None]] = {}

        def granted(entry: Entry) -> None:
            fut = events.get(entry.seq)
            if fut is not None and not fut.done():
                fut.set_result(None)

        # Entries get their callback before they can be granted by anyone else.
        try:
            entries = self.scheduler.submit(tenant, sizes)
        except ServiceError:
            if self.on_reject is not None:
                self.on_reject(tenant)
            raise
        for e in entries:
            if not e.granted:
                events[e.seq] = loop.create_future()
                e.on_grant = granted
        try:
            yield [self._turn(e, events.get(e.seq)) for e in entries]
        finally:
            for e in entries:  # a group never started (an error elsewhere): free it
                self.scheduler.release(e)

    @contextlib.asynccontextmanager
    async def _turn(
        self, entry: Entry, granted: asyncio.Future[None] | None
    ) -> AsyncIterator[None]:
        try:
            if granted is not None:
                await granted
            if self.on_wait is not None:
                assert entry.granted_at is not None
                self.on_wait(entry.tenant, max(0.0, entry.granted_at - entry.enqueued_at))
            yield
        finally:
            self.scheduler.release(entry)
