"""Helpers shared by the client and service tests: the running service's addresses and
small deterministic images."""

from __future__ import annotations

import dataclasses

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
