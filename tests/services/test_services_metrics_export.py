"""Ray's metrics export, what Prometheus scrapes, carries divreward's metrics from the
ingress and the model replicas with their route, tenant and scorer labels and the right
counts.

A quality-only reward app of its own (its ``application`` label sees no other test's
traffic) answers a few requests; the nodes' metrics agents' ``/metrics`` must then add
up to them. Ray exports on an interval (about 10 s with its defaults), so the test
waits until the export reaches the counts (a bound, not a timing assumption), then
checks them exactly. It also finds, in the same export, every Ray Serve series that the
Grafana dashboard reads (deploy/grafana/dashboard.py: RAY_SERVE_SERIES).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import Sample, load_dashboard, prom_samples, prom_sum
from services_helpers import b64, make_group, png, quality_only_app

from divreward.services.common.metrics import METRICS

APP, PREFIX = "metrics_export", "/metrics-export"
BATCH = 4  # the scorer's max_batch_images: a group of 6 runs as batches of 4 and 2
EXPORT_WAIT_S = 120.0


@pytest.fixture(scope="module")
def export_app(serve_app: Any) -> Iterator[str]:
    from ray import serve

    from divreward.services import launch

    app = quality_only_app(APP, PREFIX, serve_app.tiny_models_dir)
    app["deployments"] = [{"name": "scorer-pickscore", "user_config": {"max_batch_images": BATCH}}]
    launch.deploy(launch.config_targets({"applications": [app]}), timeout_s=240)
    try:
        yield serve_app.base_url + PREFIX
    finally:
        serve.delete(APP)


def scrape() -> list[Sample]:
    """Every sample of every live node's metrics agent (``MetricsExportPort``)."""
    import ray

    out: list[Sample] = []
    for node in ray.nodes():
        if node["Alive"]:
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            out += prom_samples(httpx.get(url, timeout=30).text)
    return out


def _wait_for(done: Any) -> list[Sample]:
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        samples = scrape()
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(1.0)


@pytest.mark.serve
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_rays_export_adds_up_every_replicas_metrics(export_app: str) -> None:
    body = {"prompts": ["a fox"] * 6, "images": b64(png(make_group(6, seed=5)))}
    for _ in range(2):
        r = httpx.post(f"{export_app}/v1/score", json=body, timeout=120)
        assert r.status_code == 200, r.text
    bad = {"prompts": ["a fox"], "images": ["aGVsbG8="]}
    assert httpx.post(f"{export_app}/v1/score", json=bad, timeout=60).status_code == 400

    app = {"application": APP}
    call = {**app, "route": "/v1/score", "tenant": "local"}  # a token-less loopback caller
    model = {**app, "scorer": "pickscore", "deployment": "scorer-pickscore"}

    def count(name: str, **labels: str) -> float:
        return prom_sum(samples, name, **labels)

    serve_series = set(load_dashboard().RAY_SERVE_SERIES)

    def reached(s: list[Sample]) -> bool:
        return (
            prom_sum(s, "ray_divreward_requests_total", **call) >= 3
            and prom_sum(s, "ray_divreward_images_total", **call) >= 12
            and prom_sum(s, "ray_divreward_model_batch_seconds_count", **model) >= 4
            and prom_sum(s, "ray_divreward_model_images_total", **model) >= 12
            and serve_series <= {n for n, _, _ in s}
        )

    samples = _wait_for(reached)
    # the ingress replica: requests by status class, errors, images by scorer, times
    assert count("ray_divreward_requests_total", **call, status_class="2xx") == 2
    assert count("ray_divreward_requests_total", **call, status_class="4xx") == 1
    assert count("ray_divreward_errors_total", **call, kind="invalid_image") == 1
    assert count("ray_divreward_request_images_total", **call) == 13
    assert count("ray_divreward_images_total", **call, scorer="pickscore") == 12
    assert count("ray_divreward_request_seconds_count", **call) == 3
    assert count("ray_divreward_inflight_requests", **app) == 0
    passes = {**app, "scorer": "pickscore", "deployment": "RewardIngress"}
    assert count("ray_divreward_batch_images_count", **passes) == 4
    assert count("ray_divreward_batch_images_bucket", **passes, le="2.0") == 2
    assert count("ray_divreward_batch_images_bucket", **passes, le="4.0") == 4
    # Ray's histogram _sum adds bucket midpoints: passes of 4, 2, 4, 2 land in (2, 4]
    # and (1, 2], so 3 + 1.5 + 3 + 1.5 (docs/operations.md; the exact sums are counters)
    assert count("ray_divreward_batch_images_sum", **passes) == 9.0
    # the model replica: one observation per batch, per batch and per image
    assert count("ray_divreward_model_batch_seconds_count", **model) == 4
    assert count("ray_divreward_model_image_seconds_count", **model) == 4
    assert count("ray_divreward_model_images_total", **model) == 12
    assert count("ray_divreward_model_seconds_total", **model) > 0
    # Serve's own labels: the replica that recorded each series
    ours = [(n, labels) for n, labels, _ in samples if labels.get("application") == APP]
    assert all(labels.get("replica") for n, labels in ours if n.startswith("ray_divreward_"))
    # every name the service declares is what Ray exports for what it recorded
    names = {n for n, _ in ours}
    declared = {s for m in METRICS for s in m.series()}
    recorded = {n for n in names if n.startswith("ray_divreward_")}
    assert recorded <= declared, sorted(recorded - declared)
    # every other one was recorded (the fair queue records every admitted call's wait);
    # no call here is over a quota or replayed
    unrecorded = {
        "divreward_rejected",
        "divreward_idempotent_replays",
    }
    expected = {s for m in METRICS if m.name not in unrecorded for s in m.series()}
    assert recorded == expected, sorted(recorded ^ expected)
    # the Ray Serve series the Grafana dashboard reads
    exported = {n for n, _, _ in samples}
    assert serve_series <= exported, sorted(serve_series - exported)
