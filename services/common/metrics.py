"""Prometheus metrics of one ingress replica, for its HTTP routes and gRPC methods."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Prometheus metrics of one ingress replica (its own registry, served at /metrics).

    Each replica counts what it handled; Prometheus sums over replicas (scrape them
    through the Serve proxy several times or, on a cluster, Ray's metrics export).
    """

    def __init__(self, app_name: str) -> None:
        self.registry = CollectorRegistry()
        self.app = app_name
        self.requests = Counter(
            "divreward_requests",
            "HTTP requests by route and status.",
            ["app", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "divreward_request_latency_seconds",
            "End-to-end handling time of a request in the ingress.",
            ["app", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.errors = Counter(
            "divreward_errors",
            "Failed requests by route and error kind.",
            ["app", "route", "kind"],
            registry=self.registry,
        )
        self.images = Counter(
            "divreward_images",
            "Images received in requests.",
            ["app", "route"],
            registry=self.registry,
        )
        self.model_images = Counter(
            "divreward_model_images",
            "Images scored or embedded, by model.",
            ["app", "model"],
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "divreward_batch_images",
            "Images per forward pass (across requests) of the batches that served a call.",
            ["app", "model"],
            buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256),
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "divreward_model_seconds",
            "Forward-pass time per call, by model.",
            ["app", "model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "divreward_inflight_requests",
            "Requests being handled by this replica.",
            ["app"],
            registry=self.registry,
        )
        self.replays = Counter(
            "divreward_idempotent_replays",
            "Requests answered from the request_id cache.",
            ["app", "route"],
            registry=self.registry,
        )

    def observe_model(
        self, name: str, n_images: int, batches: Sequence[int], seconds: float
    ) -> None:
        self.model_images.labels(self.app, name).inc(n_images)
        for b in batches:
            self.batch_images.labels(self.app, name).observe(b)
        self.model_seconds.labels(self.app, name).observe(seconds)

    def count(self, route: str, status: int, seconds: float, kind: str | None = None) -> None:
        """One finished request: its status, its time and, when it failed, its kind."""
        self.requests.labels(self.app, route, str(status)).inc()
        self.latency.labels(self.app, route).observe(seconds)
        if kind is not None:
            self.errors.labels(self.app, route, kind).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- fair queue hooks (minimal versions; the ray.serve.metrics ones replace them) -------
def record_queue_wait(route: str, tenant: str, seconds: float) -> None:
    """One group's wait in the ingress's fair queue, before its model calls."""
    return None


def record_rejected(route: str, tenant: str) -> None:
    """One request refused with a 429 because its tenant was over its quota."""
    return None
