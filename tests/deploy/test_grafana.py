"""deploy/grafana/: the committed dashboard is its generator's output, and every query
names only series that the service (services/common/metrics.py) or Ray Serve
(``RAY_SERVE_SERIES``, found in Ray's live export by
tests/services/test_services_metrics_export.py) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import load_dashboard

from divreward.services.common.metrics import METRICS, exported_series

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dash() -> ModuleType:
    return load_dashboard()  # type: ignore[no-any-return]


#: PromQL words that are not series names (functions, keywords).
_PROMQL_WORDS = {"sum", "rate", "histogram_quantile", "by"}


def series_in(expr: str) -> set[str]:
    """The series names a PromQL expression reads: its identifiers, less label matchers
    (``{...}``), grouping labels (``by (...)``), ranges (``[...]``), numbers and
    PromQL's own words."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby\s*\([^)]*\)", " ", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)) - _PROMQL_WORDS
    return names


def test_series_in_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(ray_a_bucket{tenant=~"$tenant", '
        'x!="2xx"}[$__rate_interval]))) / sum by (scorer) (rate(ray_b_total[5m]))'
    )
    assert series_in(expr) == {"ray_a_bucket", "ray_b_total"}


def test_committed_dashboard_is_the_generators_output(dash: ModuleType) -> None:
    assert (GRAFANA / "divreward.json").read_text() == dash.render(), (
        "deploy/grafana/divreward.json is stale: run `make grafana`"
    )


def _queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"])
            assert m, var
            series, label = m.groups()
            metric = next(d for d in METRICS if series in d.series())
            assert label in metric.labels, (var, metric)
            out.append((f"variable {var['name']}", series))
    return out


def test_every_query_reads_only_exported_series(dash: ModuleType) -> None:
    board = json.loads((GRAFANA / "divreward.json").read_text())
    known = exported_series() | set(dash.RAY_SERVE_SERIES)
    queries = _queries(board)
    assert len(queries) > 10
    for title, expr in queries:
        names = series_in(expr)
        assert names, f"{title}: no series in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} not exported ({expr})"
    used = {n for _, expr in queries for n in series_in(expr)}
    # every Ray Serve name listed is used, and the metrics the issue names are on it
    assert set(dash.RAY_SERVE_SERIES) <= used
    for name in ("requests", "images", "queue_wait_seconds", "model_batch_seconds", "rejected"):
        metric = next(m for m in METRICS if m.name == f"divreward_{name}")
        assert set(metric.series()) & used, metric.name


def test_exported_names_follow_rays_export() -> None:
    """Ray prefixes ``ray_``; counters end ``_total``; histograms export ``_bucket``,
    ``_count``, ``_sum`` (checked against the live export in
    tests/services/test_services_metrics_export.py)."""
    by_name = {m.name: m for m in METRICS}
    assert by_name["divreward_requests"].series() == ("ray_divreward_requests_total",)
    assert by_name["divreward_queue_wait_seconds"].series() == (
        "ray_divreward_queue_wait_seconds_bucket",
        "ray_divreward_queue_wait_seconds_count",
        "ray_divreward_queue_wait_seconds_sum",
    )
    assert by_name["divreward_inflight_requests"].series() == ("ray_divreward_inflight_requests",)
    assert all(m.name.startswith("divreward_") for m in METRICS)
    assert len(by_name) == len(METRICS)


def test_dashboard_is_templated(dash: ModuleType) -> None:
    board = dash.dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tenant"]["includeAll"] and variables["tenant"]["multi"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    # tenant-labelled series are filtered by the tenant variable
    for p in panels:
        for t in p["targets"]:
            if any(
                "tenant" in m.labels and set(m.series()) & series_in(t["expr"]) for m in METRICS
            ):
                assert 'tenant=~"$tenant"' in t["expr"], (p["title"], t["expr"])


def test_operations_doc_lists_every_metric_with_its_labels() -> None:
    doc = (GRAFANA.parents[1] / "docs" / "operations.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `(ray_divreward_\w+)` \| (\w+) \| ([^|]+) \|", doc, re.M)
    }
    for metric in METRICS:
        name = metric.series()[0].removesuffix("_bucket")
        assert name in rows, f"docs/operations.md does not list {name}"
        kind, labels = rows[name]
        assert kind == metric.kind, name
        assert labels.strip() == (", ".join(metric.labels) or "(Ray's)"), name
    assert len(rows) == len(METRICS)
