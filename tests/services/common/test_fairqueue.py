"""The fair queue's scheduler, driven by hand: arrivals and completions are simulated
with a fake clock and no real waiting, so every assertion is about order and counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from divreward.services.common.errors import ServiceError
from divreward.services.common.fairqueue import Entry, FairQueue, FairScheduler, TenantShare


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _saturate(
    sched: FairScheduler, sizes: dict[str, int], per_tenant: int
) -> dict[str, list[Entry]]:
    """Each tenant submits ``per_tenant`` entries of its size (one request each)."""
    out: dict[str, list[Entry]] = {t: [] for t in sizes}
    for _ in range(per_tenant):
        for t, n in sizes.items():
            out[t].extend(sched.submit(t, [n]))
    return out


def _serve_in_order(
    sched: FairScheduler, clock: Clock, entries: list[Entry], count: int
) -> list[Entry]:
    """Complete granted entries one at a time, oldest grant first; the grant order of
    the first ``count`` entries, those granted on arrival included (each completion
    takes 1 s of fake time)."""
    order = sorted((e for e in entries if e.granted), key=lambda e: e.seq)
    while len(order) < count:
        running = sorted(
            (e for e in entries if e.granted and not e.released),
            key=lambda e: (e.granted_at, e.seq),
        )
        assert running, "nothing in flight but entries wait"
        clock.t += 1.0
        before = {id(e) for e in entries if e.granted}
        sched.release(running[0])
        order.extend(
            sorted((e for e in entries if e.granted and id(e) not in before), key=lambda e: e.seq)
        )
    return order[:count]


def test_weights_2_to_1_give_2_to_1_service_over_a_saturated_window() -> None:
    clock = Clock()
    sched = FairScheduler(8, {"a": TenantShare(weight=2), "b": TenantShare(weight=1)}, clock=clock)
    entries = _saturate(sched, {"a": 8, "b": 8}, 60)
    every = entries["a"] + entries["b"]
    # the first grant fills the capacity (one entry of 8); then one per completion
    order = _serve_in_order(sched, clock, every, 90)
    images: Counter[str] = Counter()
    for e in order:
        images[e.tenant] += e.images
        # interleaved, not in bursts: at every point a's images stay within one group
        # of twice b's (SFQ's lag bound), from the first grant on
        assert abs(images["a"] - 2 * images["b"]) <= 2 * 8
    assert (images["a"] // 8, images["b"] // 8) in {(60, 30), (59, 31), (61, 29)}


def test_weights_hold_by_images_not_requests() -> None:
    """Tenant a sends groups of 2 images, b groups of 8, equal weights: equal images."""
    clock = Clock()
    sched = FairScheduler(8, clock=clock)
    entries = _saturate(sched, {"a": 2, "b": 8}, 80)
    order = _serve_in_order(sched, clock, entries["a"] + entries["b"], 50)
    images: Counter[str] = Counter()
    for e in order:
        images[e.tenant] += e.images
        assert abs(images["a"] - images["b"]) <= 16  # SFQ's bound: 2 + 8 images, rounded


def test_a_light_tenant_below_its_share_goes_before_the_flood() -> None:
    clock = Clock()
    sched = FairScheduler(16, clock=clock)
    flood = [e for _ in range(40) for e in sched.submit("heavy", [8])]
    assert sum(e.granted for e in flood) == 2  # capacity 16: two groups in flight
    (light,) = sched.submit("light", [8])
    assert not light.granted
    clock.t = 1.0
    sched.release(flood[0])
    # the very next grant is the light tenant's, ahead of 38 queued heavy groups
    assert light.granted and not flood[2].granted
    # while a tenant is alone it keeps being served
    assert sched.queued_images("heavy") == 38 * 8


def test_an_idle_tenant_banks_no_credit() -> None:
    """A tenant idle for a long time restarts at the virtual clock: it does not then
    monopolise the models to catch up."""
    clock = Clock()
    sched = FairScheduler(8, clock=clock)
    entries = [e for _ in range(30) for e in sched.submit("a", [8])]
    _serve_in_order(sched, clock, entries, 20)
    before = {id(e) for e in entries if e.granted}
    b = [e for _ in range(10) for e in sched.submit("b", [8])]
    order = _serve_in_order(sched, clock, entries + b, len(before) + 8)
    assert [e.tenant for e in order if id(e) not in before] == ["b", "a"] * 4


def test_no_contention_grants_at_once_and_nothing_queues() -> None:
    sched = FairScheduler(64, clock=Clock())
    e1, e2 = sched.submit("a", [24, 24])
    assert e1.granted and e2.granted and sched.in_flight == 48
    (big,) = sched.submit("b", [100])  # larger than the capacity: waits for room ...
    assert not big.granted
    sched.release(e1)
    assert not big.granted
    sched.release(e2)
    assert big.granted and sched.in_flight == 100  # ... then goes alone


def test_over_quota_is_a_429_naming_the_tenant_and_nothing_is_dropped() -> None:
    clock = Clock()
    sched = FairScheduler(
        8, {"a": TenantShare(max_queued_images=16)}, clock=clock, retry_after_floor_s=1.0
    )
    first = sched.submit("a", [8])  # in flight
    queued = sched.submit("a", [8]) + sched.submit("a", [8])  # 16 waiting: at the quota
    with pytest.raises(ServiceError) as info:
        sched.submit("a", [8])
    err = info.value
    assert err.status == 429 and err.kind == "overloaded"
    assert "tenant 'a'" in err.message and "max_queued_images 16" in err.message
    assert err.retry_after_s == 1.0  # no throughput measured yet: the floor
    # another tenant is not affected by a's quota
    (other,) = sched.submit("b", [8])
    # every admitted entry is eventually granted
    admitted = first + queued + [other]
    for _ in range(3):
        clock.t += 2.0
        sched.release(next(e for e in admitted if e.granted and not e.released))
    assert all(e.granted for e in admitted) and sched.in_flight == 8
    assert sched.queued_images() == 0


def test_retry_after_estimates_the_drain_at_the_tenants_share() -> None:
    clock = Clock()
    sched = FairScheduler(
        8,
        {"a": TenantShare(weight=1, max_queued_images=8), "b": TenantShare(weight=3)},
        clock=clock,
    )
    # 10 s during which 8 images complete per second (a measured throughput of 8 img/s)
    running = sched.submit("b", [8])
    for _ in range(10):
        clock.t += 1.0
        sched.release(running[0])
        running = sched.submit("b", [8])
    sched.submit("b", [8])  # b waits too
    sched.submit("a", [8])  # a has 8 waiting: its quota
    assert sched.throughput(clock.t) == pytest.approx(80 / 9)
    with pytest.raises(ServiceError) as info:
        sched.submit("a", [8])
    # 8 images beyond the quota, at a's share (1 of 1+3) of 80/9 img/s
    assert info.value.retry_after_s == pytest.approx(8 / (80 / 9 * 0.25))


def test_a_request_is_admitted_whole_or_not_at_all() -> None:
    sched = FairScheduler(8, {"a": TenantShare(max_queued_images=12)}, clock=Clock())
    sched.submit("a", [8])
    sched.submit("a", [4])  # waiting: 4
    with pytest.raises(ServiceError):
        sched.submit("a", [4, 4, 4])  # 12 more would wait: refused whole
    assert sched.queued_images("a") == 4
    sched.submit("a", [4, 4])  # 8 more: exactly the quota
    assert sched.queued_images("a") == 12


def test_a_tenant_with_nothing_waiting_is_always_admitted() -> None:
    sched = FairScheduler(8, {"a": TenantShare(max_queued_images=4)}, clock=Clock())
    sched.submit("b", [8])
    (big,) = sched.submit("a", [16])  # larger than its quota: queued, not refused
    assert not big.granted and sched.queued_images("a") == 16


def test_the_async_queue_serves_every_group_and_frees_cancelled_ones() -> None:
    async def scenario() -> list[str]:
        sched = FairScheduler(2, clock=Clock())
        waits: list[tuple[str, float]] = []
        q = FairQueue(sched, on_wait=lambda t, s: waits.append((t, s)))
        done: list[str] = []
        gate = asyncio.Event()

        async def request(tenant: str, sizes: list[int]) -> None:
            async with q.slots(tenant, sizes) as turns:

                async def group(g: int) -> None:
                    async with turns[g]:
                        await gate.wait()
                        done.append(f"{tenant}{g}")

                await asyncio.gather(*(group(g) for g in range(len(sizes))))

        tasks = [
            asyncio.create_task(request("a", [2, 2])),
            asyncio.create_task(request("b", [2])),
        ]
        cancelled = asyncio.create_task(request("c", [2]))
        await asyncio.sleep(0)
        assert sched.in_flight == 2 and sched.queued_images() == 6
        cancelled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        assert sched.queued_images() == 4  # the cancelled group left the queue
        gate.set()
        await asyncio.gather(*tasks)
        assert sched.in_flight == 0 and sched.queued_images() == 0
        assert sorted(t for t, _ in waits) == ["a", "a", "b"]
        return done

    # a0 first (fast path); then b0 (b is below its share) before a1
    assert asyncio.run(scenario()) == ["a0", "b0", "a1"]
