"""Helpers shared by the client and service tests: the running service's addresses and
small deterministic images."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Service:
    """The running reward service through its two front doors."""

    http_url: str
    grpc_url: str
    grpc_target: str  # host:port for raw grpcio stubs


def make_images(n: int, seed: int, size: int = 40) -> np.ndarray:
    """``(n, size, size + 8, 3)`` uint8 images: distinct, smooth enough to encode small."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    ramp = np.linspace(0, 1, size + 8)[None, None, :, None] * rng.integers(-120, 120, (n, 1, 1, 3))
    noise = rng.integers(-25, 25, size=(n, size, size + 8, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


Sample = tuple[str, dict[str, str], float]


def prom_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition: (series name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def prom_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of a series over the samples whose labels include ``labels`` (what
    PromQL's ``sum(name{labels})`` gives)."""
    return sum(
        v
        for n, have, v in samples
        if n == name and all(have.get(k) == want for k, want in labels.items())
    )


def load_dashboard() -> Any:
    """deploy/grafana/dashboard.py, the Grafana dashboard's generator, as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboard.py"
    spec = importlib.util.spec_from_file_location("divreward_grafana_dashboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
