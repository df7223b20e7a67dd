"""The divreward Grafana dashboard, from a small definition: ``python
deploy/grafana/dashboard.py`` (``make grafana``) writes ``deploy/grafana/divreward.json``.

The queries read Prometheus as it scrapes Ray's metrics export (docs/operations.md):
divreward's own metrics, named ``ray_divreward_*`` there (services/common/metrics.py
defines them), and a few of Ray Serve's built-in ``ray_serve_*`` metrics
(:data:`RAY_SERVE_SERIES`). tests/deploy/test_grafana.py checks that the committed JSON is
this script's output and that every query names only series the service exports.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("divreward.json")
UID = "divreward"

#: Ray Serve's built-in series (Ray 2.60) that the dashboard reads; the live test in
#: tests/services/test_services_metrics_export.py finds each in Ray's export.
RAY_SERVE_SERIES = (
    "ray_serve_num_http_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_queued_queries",
    "ray_serve_num_ongoing_requests_at_replicas",
    "ray_serve_deployment_processing_latency_ms_bucket",
)

TENANT = 'tenant=~"$tenant"'
RATE = "[$__rate_interval]"


def rate(series: str, by: str, match: str = TENANT) -> str:
    """Per-second rate of a counter, summed by labels."""
    selector = f"{series}{{{match}}}" if match else series
    return f"sum by ({by}) (rate({selector}{RATE}))"


def quantile(q: float, histogram: str, by: str, match: str = TENANT) -> str:
    """A quantile of a histogram's buckets, by labels."""
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', 'le, ' + by, match)})"


@dataclass
class Target:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    unit: str
    targets: list[Target]
    description: str = ""


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def legend(by: str) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in by.split(", "))


def rates(series: str, by: str, match: str = TENANT) -> list[Target]:
    return [Target(rate(series, by, match), legend(by))]


def p50_p95(histogram: str, by: str, match: str = TENANT) -> list[Target]:
    return [
        Target(quantile(q, histogram, by, match), f"p{round(q * 100)} {legend(by)}")
        for q in (0.5, 0.95)
    ]


def sums(series: str, by: str) -> list[Target]:
    """A gauge summed by labels."""
    return [Target(f"sum by ({by}) ({series})", legend(by))]


ROWS = [
    Row(
        "Requests",
        [
            Panel(
                "Request rate by route and tenant",
                "reqps",
                rates("ray_divreward_requests_total", "route, tenant"),
            ),
            Panel(
                "Failed requests by route and status class",
                "reqps",
                rates(
                    "ray_divreward_requests_total",
                    "route, status_class",
                    f'{TENANT}, status_class!="2xx"',
                ),
            ),
            Panel(
                "429s (over quota) by tenant",
                "reqps",
                rates("ray_divreward_rejected_total", "tenant"),
            ),
            Panel(
                "Request time p50/p95 by route",
                "s",
                p50_p95("ray_divreward_request_seconds", "route"),
            ),
        ],
    ),
    Row(
        "Images and fair queueing",
        [
            Panel(
                "Images/s by tenant and scorer",
                "short",
                rates("ray_divreward_images_total", "tenant, scorer"),
            ),
            Panel(
                "Images received/s by tenant",
                "short",
                rates("ray_divreward_request_images_total", "tenant"),
            ),
            Panel(
                "Queue wait p50/p95 by tenant",
                "s",
                p50_p95("ray_divreward_queue_wait_seconds", "tenant"),
                "Time in the ingress's weighted fair queue before the images go to the models.",
            ),
        ],
    ),
    Row(
        "Models",
        [
            Panel(
                "Model time per batch p50/p95 by scorer",
                "s",
                p50_p95("ray_divreward_model_batch_seconds", "scorer", ""),
            ),
            Panel(
                "Model time per image p50/p95 by scorer",
                "s",
                p50_p95("ray_divreward_model_image_seconds", "scorer", ""),
            ),
            Panel(
                "Mean model time per image by scorer",
                "s",
                [
                    Target(
                        f"{rate('ray_divreward_model_seconds_total', 'scorer', '')}"
                        f" / {rate('ray_divreward_model_images_total', 'scorer', '')}",
                        legend("scorer"),
                    )
                ],
                "Exact totals (counters); Ray's histogram _sum is approximated from buckets.",
            ),
            Panel(
                "Images per forward pass p50/p95 by scorer",
                "short",
                p50_p95("ray_divreward_batch_images", "scorer", ""),
            ),
        ],
    ),
    Row(
        "Ray Serve",
        [
            Panel(
                "Healthy replicas by deployment",
                "short",
                sums("ray_serve_deployment_replica_healthy", "application, deployment"),
            ),
            Panel(
                "Requests queued in Serve's routers by deployment",
                "short",
                sums("ray_serve_deployment_queued_queries", "application, deployment"),
            ),
            Panel(
                "Requests ongoing at replicas by deployment",
                "short",
                sums("ray_serve_num_ongoing_requests_at_replicas", "application, deployment"),
            ),
            Panel(
                "In-flight requests by ingress replica",
                "short",
                sums("ray_divreward_inflight_requests", "application, replica"),
            ),
            Panel(
                "Serve HTTP proxy requests by application",
                "reqps",
                rates("ray_serve_num_http_requests_total", "application", ""),
            ),
            Panel(
                "Serve HTTP proxy latency p95 by application",
                "ms",
                [
                    Target(
                        quantile(0.95, "ray_serve_http_request_latency_ms", "application", ""),
                        legend("application"),
                    )
                ],
            ),
            Panel(
                "Replica processing latency p95 by deployment",
                "ms",
                [
                    Target(
                        quantile(
                            0.95, "ray_serve_deployment_processing_latency_ms", "deployment", ""
                        ),
                        legend("deployment"),
                    )
                ],
            ),
        ],
    ),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH, HEIGHT = 12, 8  # two panels per line (Grafana's grid is 24 wide)


def _panel(panel: Panel, pid: int, y: int, x: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend,
                "refId": chr(65 + i),
            }
            for i, t in enumerate(panel.targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        for i, panel in enumerate(row.panels):
            panels.append(_panel(panel, pid, y + (i // 2) * HEIGHT, (i % 2) * WIDTH))
            pid += 1
        y += ((len(row.panels) + 1) // 2) * HEIGHT
    return {
        "uid": UID,
        "title": "divreward",
        "tags": ["divreward", "ray-serve"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "tenant",
                    "label": "Tenant",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(ray_divreward_requests_total, tenant)",
                        "refId": "tenant",
                    },
                    "definition": "label_values(ray_divreward_requests_total, tenant)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
