"""The service's metrics: one list of definitions (:data:`METRICS`), recorded through
``ray.serve.metrics`` so that Ray's metrics export aggregates them over every replica
and node, and mirrored in a per-process ``prometheus_client`` registry (an ingress
replica serves its own at ``/metrics``: a debugging view of that one replica).

Ray exports a metric ``divreward_x`` as ``ray_divreward_x`` (``_total`` for a counter;
``_bucket``, ``_count`` and ``_sum`` for a histogram), on each node's metrics agent
(``--metrics-export-port``), with Ray's labels added: ``application``, ``deployment``,
``replica`` (Serve's), ``NodeAddress``, ``SessionName``, ``WorkerId``, ``Component``,
``Version``. Ray's histogram ``_sum`` is approximated from bucket midpoints (its
buckets and ``_count`` are exact): exact totals are counters here
(``divreward_model_seconds``). docs/operations.md lists every metric and its labels.

The labels: ``route`` (an HTTP path, ``grpc:<Method>`` or ``compat:<dialect>``),
``tenant`` (the caller's tenant: a tenants-file name, ``token-N`` for a listed token,
``local`` for a token-less loopback caller, ``default`` outside any call) and
``scorer`` (a model's registry name: every quality scorer, and the embedder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

from divreward.services.common.tenants import bind_call, bound_call

__all__ = [
    "DEFAULT_TENANT",
    "METRICS",
    "RAY_PREFIX",
    "MetricDef",
    "ServiceMetrics",
    "exported_series",
    "record_batch",
    "record_queue_wait",
    "record_rejected",
    "request_tenant",
]

#: The tenant of every call while no tenants are configured.
DEFAULT_TENANT = "default"
#: What Ray's export puts before every application metric's name.
RAY_PREFIX = "ray_"

Kind = Literal["counter", "histogram", "gauge"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_MODEL = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PER_IMAGE = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass(frozen=True)
class MetricDef:
    """One metric: its name (before Ray's prefix), kind, help text, labels, buckets and
    where it is recorded (``ingress``: the HTTP/gRPC front doors; ``model``: the scorer
    and embedder replicas)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    where: Literal["ingress", "model"] = "ingress"
    buckets: tuple[float, ...] = ()

    def series(self) -> tuple[str, ...]:
        """The series names of this metric in Ray's Prometheus export."""
        base = RAY_PREFIX + self.name
        if self.kind == "counter":
            return (base + "_total",)
        if self.kind == "histogram":
            return (base + "_bucket", base + "_count", base + "_sum")
        return (base,)


REQUESTS = MetricDef(
    "divreward_requests",
    "counter",
    "Requests answered, by route, tenant and status class (2xx, 4xx, 5xx).",
    ("route", "tenant", "status_class"),
)
REQUEST_SECONDS = MetricDef(
    "divreward_request_seconds",
    "histogram",
    "End-to-end handling time of a request in the ingress (queue wait included).",
    ("route", "tenant"),
    buckets=_SECONDS,
)
ERRORS = MetricDef(
    "divreward_errors",
    "counter",
    "Failed requests by route, tenant and error kind (the ErrorResponse's kind).",
    ("route", "tenant", "kind"),
)
REQUEST_IMAGES = MetricDef(
    "divreward_request_images",
    "counter",
    "Images received in requests.",
    ("route", "tenant"),
)
IMAGES = MetricDef(
    "divreward_images",
    "counter",
    "Images scored (or embedded) by each model for a route and tenant.",
    ("route", "tenant", "scorer"),
)
BATCH_IMAGES = MetricDef(
    "divreward_batch_images",
    "histogram",
    "Images per forward pass (across requests) of the batches that served a call.",
    ("scorer",),
    buckets=_BATCH,
)
QUEUE_WAIT = MetricDef(
    "divreward_queue_wait_seconds",
    "histogram",
    "Time a request waited in the ingress's tenant queue before its images went to the models.",
    ("route", "tenant"),
    buckets=_WAIT,
)
REJECTED = MetricDef(
    "divreward_rejected",
    "counter",
    "Requests refused with 429 (gRPC RESOURCE_EXHAUSTED): the tenant was over its quota.",
    ("route", "tenant"),
)
REPLAYS = MetricDef(
    "divreward_idempotent_replays",
    "counter",
    "Requests answered from the request_id cache.",
    ("route", "tenant"),
)
INFLIGHT = MetricDef(
    "divreward_inflight_requests",
    "gauge",
    "Requests being handled by an ingress replica.",
    (),
)
MODEL_BATCH_SECONDS = MetricDef(
    "divreward_model_batch_seconds",
    "histogram",
    "Forward time of one batch in a model replica.",
    ("scorer",),
    where="model",
    buckets=_MODEL,
)
MODEL_IMAGE_SECONDS = MetricDef(
    "divreward_model_image_seconds",
    "histogram",
    "Forward time per image of one batch (the batch's time over its images), observed "
    "once per batch in a model replica.",
    ("scorer",),
    where="model",
    buckets=_PER_IMAGE,
)
MODEL_SECONDS = MetricDef(
    "divreward_model_seconds",
    "counter",
    "Forward time spent in a model replica's batches (an exact total).",
    ("scorer",),
    where="model",
)
MODEL_IMAGES = MetricDef(
    "divreward_model_images",
    "counter",
    "Images through a model replica's forward passes (readiness probes included).",
    ("scorer",),
    where="model",
)

#: Every metric the service records.
METRICS: tuple[MetricDef, ...] = (
    REQUESTS,
    REQUEST_SECONDS,
    ERRORS,
    REQUEST_IMAGES,
    IMAGES,
    BATCH_IMAGES,
    QUEUE_WAIT,
    REJECTED,
    REPLAYS,
    INFLIGHT,
    MODEL_BATCH_SECONDS,
    MODEL_IMAGE_SECONDS,
    MODEL_SECONDS,
    MODEL_IMAGES,
)


def exported_series() -> frozenset[str]:
    """Every series name of the service's metrics in Ray's Prometheus export."""
    return frozenset(s for m in METRICS for s in m.series())


class _Sinks:
    """This process's instruments of every metric: Ray's (exported, aggregated by
    Prometheus) and a local registry's (this process's /metrics)."""

    def __init__(self) -> None:
        from ray.serve import metrics as ray_metrics

        self.registry = CollectorRegistry()
        self.ray: dict[str, Any] = {}
        self.local: dict[str, Any] = {}
        for m in METRICS:
            # Ray annotates tag_keys as Tuple[str] but takes any tuple of str
            tag_keys: Any = m.labels
            if m.kind == "histogram":
                self.ray[m.name] = ray_metrics.Histogram(
                    m.name, m.help, boundaries=list(m.buckets), tag_keys=tag_keys
                )
                self.local[m.name] = PromHistogram(
                    m.name, m.help, m.labels, buckets=m.buckets, registry=self.registry
                )
            elif m.kind == "counter":
                self.ray[m.name] = ray_metrics.Counter(m.name, m.help, tag_keys=tag_keys)
                self.local[m.name] = PromCounter(m.name, m.help, m.labels, registry=self.registry)
            else:
                self.ray[m.name] = ray_metrics.Gauge(m.name, m.help, tag_keys=tag_keys)
                self.local[m.name] = PromGauge(m.name, m.help, m.labels, registry=self.registry)

    def record(self, m: MetricDef, value: float, tags: dict[str, str]) -> None:
        # tags always passed: Serve's metrics fill a declared `route` from the request
        # context, and raise TypeError on a call without tags (Ray 2.60).
        ray_metric, local = self.ray[m.name], self.local[m.name]
        child = local.labels(**tags) if tags else local
        if m.kind == "counter":
            if value == 0:  # nothing to add (and Ray refuses a 0 increment)
                return
            ray_metric.inc(value, tags=dict(tags))
            child.inc(value)
        elif m.kind == "histogram":
            ray_metric.observe(value, tags=dict(tags))
            child.observe(value)
        else:
            ray_metric.set(value, tags=dict(tags))
            child.set(value)


_SINKS: _Sinks | None = None


def _sinks() -> _Sinks:
    """Created on first use, in the process that records (a Serve replica: Ray then adds
    its application, deployment and replica labels)."""
    global _SINKS
    if _SINKS is None:
        _SINKS = _Sinks()
    return _SINKS


def _record(m: MetricDef, value: float, **tags: str) -> None:
    _sinks().record(m, value, tags)


# ------------------------------------------------------------------ what callers record
def record_queue_wait(route: str, tenant: str, seconds: float) -> None:
    """A request's wait in the ingress's tenant queue."""
    _record(QUEUE_WAIT, seconds, route=route, tenant=tenant)


def record_rejected(route: str, tenant: str) -> None:
    """A request refused with 429 (gRPC RESOURCE_EXHAUSTED) for its tenant's quota."""
    _record(REJECTED, 1, route=route, tenant=tenant)


def record_batch(scorer: str, n_images: int, seconds: float) -> None:
    """One batch's forward passes in a model replica: its time, per batch and per image."""
    _record(MODEL_BATCH_SECONDS, seconds, scorer=scorer)
    if n_images > 0:
        _record(MODEL_IMAGE_SECONDS, seconds / n_images, scorer=scorer)
    _record(MODEL_SECONDS, seconds, scorer=scorer)
    _record(MODEL_IMAGES, n_images, scorer=scorer)


def request_tenant(request: Any) -> str:
    """The tenant of an HTTP request (set on ``request.state`` by the auth middleware)."""
    return str(getattr(request.state, "tenant", DEFAULT_TENANT))


def status_class(status: int) -> str:
    return f"{status // 100}xx"


_INFLIGHT = [0]  # requests in flight in this process


def _set_inflight(step: int) -> None:
    _INFLIGHT[0] += step
    _record(INFLIGHT, _INFLIGHT[0])


class ServiceMetrics:
    """What an ingress replica records, by route and tenant, and its /metrics view."""

    def __init__(self, app_name: str) -> None:
        self.app = app_name

    def begin(self, route: str, tenant: str = DEFAULT_TENANT) -> Callable[[], None]:
        """A request starts: until the returned function is called, model calls
        (:meth:`observe_model`) of this task count for this route and tenant, and the
        request counts as in flight."""
        bind_call(tenant, route)
        _set_inflight(+1)

        def end() -> None:
            _set_inflight(-1)

        return end

    def count(
        self,
        route: str,
        status: int,
        seconds: float | None = None,
        kind: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """One finished request: its status, its time (when measured) and, when it
        failed, its error kind."""
        _record(REQUESTS, 1, route=route, tenant=tenant, status_class=status_class(status))
        if seconds is not None:
            _record(REQUEST_SECONDS, seconds, route=route, tenant=tenant)
        if kind is not None:
            self.error(route, kind, tenant)

    def error(self, route: str, kind: str, tenant: str = DEFAULT_TENANT) -> None:
        """A failure of this kind (also those refused before a route runs: auth)."""
        _record(ERRORS, 1, route=route, tenant=tenant, kind=kind)

    def images(self, route: str, n: int, tenant: str = DEFAULT_TENANT) -> None:
        _record(REQUEST_IMAGES, n, route=route, tenant=tenant)

    def replay(self, route: str, tenant: str = DEFAULT_TENANT) -> None:
        _record(REPLAYS, 1, route=route, tenant=tenant)

    def observe_model(
        self, name: str, n_images: int, batches: Sequence[int], seconds: float
    ) -> None:
        """The serving layer's observer (:data:`~divreward.services.common.serving.Observer`):
        a model call of this task's route and tenant; the model's time is recorded in
        the model replica (:func:`record_batch`)."""
        call = bound_call()
        route = (call.route if call else "") or "other"
        tenant = call.tenant if call else DEFAULT_TENANT
        _record(IMAGES, n_images, route=route, tenant=tenant, scorer=name)
        for b in batches:
            _record(BATCH_IMAGES, b, scorer=name)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text of this process's registry, and its content type."""
        return generate_latest(_sinks().registry), CONTENT_TYPE_LATEST
