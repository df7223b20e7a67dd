"""Helpers of the client tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Service:
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
