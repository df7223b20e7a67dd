"""The recording layer of services/common/metrics.py in-process (no Ray instance: Ray's
instruments record nothing then, the process's own registry does): what each call
records, with which labels, and the route and tenant a model call is counted for."""

from __future__ import annotations

import asyncio

from helpers import prom_samples, prom_sum

from divreward.services.common.metrics import (
    DEFAULT_TENANT,
    ServiceMetrics,
    record_batch,
    record_queue_wait,
    record_rejected,
)


def _samples(m: ServiceMetrics) -> list[tuple[str, dict[str, str], float]]:
    return prom_samples(m.render()[0].decode())


def test_the_tenant_queue_records_wait_and_rejections_by_route_and_tenant() -> None:
    m = ServiceMetrics("reward")
    before = _samples(m)
    record_queue_wait("/v1/rewards", "team-a", 0.015625)
    record_queue_wait("/v1/rewards", "team-a", 3.0)
    record_rejected("grpc:RewardStream", "team-b")
    after = _samples(m)

    def delta(name: str, **labels: str) -> float:
        return prom_sum(after, name, **labels) - prom_sum(before, name, **labels)

    wait = {"route": "/v1/rewards", "tenant": "team-a"}
    assert delta("divreward_queue_wait_seconds_count", **wait) == 2
    assert delta("divreward_queue_wait_seconds_sum", **wait) == 3.015625  # exact in binary
    assert delta("divreward_queue_wait_seconds_bucket", **wait, le="0.025") == 1
    assert delta("divreward_queue_wait_seconds_bucket", **wait, le="5.0") == 2
    assert delta("divreward_rejected_total", route="grpc:RewardStream", tenant="team-b") == 1


def test_requests_count_by_status_class_and_errors_by_kind() -> None:
    m = ServiceMetrics("reward")
    before = _samples(m)
    m.count("/v1/score", 200, 0.1, tenant="team-a")
    m.count("/v1/score", 413, 0.2, "too_large", "team-a")
    m.count("compat:pickle", 503, kind="unavailable")  # no time measured
    m.images("/v1/score", 0, "team-a")  # an empty request adds nothing (Ray refuses 0)
    after = _samples(m)

    def delta(name: str, **labels: str) -> float:
        return prom_sum(after, name, **labels) - prom_sum(before, name, **labels)

    a = {"route": "/v1/score", "tenant": "team-a"}
    assert delta("divreward_requests_total", **a, status_class="2xx") == 1
    assert delta("divreward_requests_total", **a, status_class="4xx") == 1
    assert delta("divreward_errors_total", **a, kind="too_large") == 1
    assert delta("divreward_request_seconds_count", **a) == 2
    pickle = {"route": "compat:pickle", "tenant": DEFAULT_TENANT}
    assert delta("divreward_requests_total", **pickle, status_class="5xx") == 1
    assert delta("divreward_request_seconds_count", **pickle) == 0


def test_model_calls_count_for_the_route_and_tenant_of_their_request() -> None:
    m = ServiceMetrics("reward")
    before = _samples(m)

    async def request(route: str, tenant: str, n: int) -> None:
        end = m.begin(route, tenant)
        try:
            await asyncio.sleep(0)

            async def model_call() -> None:  # a task of its own, as under gather
                m.observe_model("pickscore", n, [n], 0.01)

            await asyncio.gather(model_call())
        finally:
            end()

    async def both() -> None:
        await asyncio.gather(request("/v1/rewards", "team-a", 3), request("grpc:Score", "b", 5))
        m.observe_model("pickscore", 7, [7], 0.01)  # outside any request

    asyncio.run(both())
    after = _samples(m)

    def delta(name: str, **labels: str) -> float:
        return prom_sum(after, name, **labels) - prom_sum(before, name, **labels)

    images = "divreward_images_total"
    assert delta(images, route="/v1/rewards", tenant="team-a", scorer="pickscore") == 3
    assert delta(images, route="grpc:Score", tenant="b", scorer="pickscore") == 5
    assert delta(images, route="other", tenant=DEFAULT_TENANT, scorer="pickscore") == 7
    assert delta("divreward_batch_images_count", scorer="pickscore") == 3
    assert prom_sum(after, "divreward_inflight_requests") == 0


def test_a_model_batch_records_its_time_per_batch_and_per_image() -> None:
    m = ServiceMetrics("reward")
    before = _samples(m)
    record_batch("clipscore", 4, 0.5)
    after = _samples(m)

    def delta(name: str, **labels: str) -> float:
        return prom_sum(after, name, **labels) - prom_sum(before, name, **labels)

    assert delta("divreward_model_batch_seconds_sum", scorer="clipscore") == 0.5
    assert delta("divreward_model_image_seconds_sum", scorer="clipscore") == 0.125
    assert delta("divreward_model_image_seconds_count", scorer="clipscore") == 1
    assert delta("divreward_model_seconds_total", scorer="clipscore") == 0.5
    assert delta("divreward_model_images_total", scorer="clipscore") == 4
