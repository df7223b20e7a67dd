"""Photo-like test images for the preprocessing tests: smooth gradients plus mild noise,
as a photograph's statistics (a resize of pure noise is dominated by rounding)."""

from __future__ import annotations

import numpy as np

# Several sizes and aspect ratios: square, landscape, portrait, odd sides, one size
# repeated (a batched resize), smaller than every model's target (an upscale), and a
# long strip.
SHAPES = [
    (512, 512),
    (512, 768),
    (768, 512),
    (512, 512),
    (300, 301),
    (100, 80),
    (224, 224),
    (60, 200),
]


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like ``(h, w, 3) uint8`` image: smooth gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + c) + np.cos(4 * y - c) for c in (0.0, 1.0, 2.0)], -1)
    img = 127 + 60 * base + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def photo_like(shapes: list[tuple[int, int]] = SHAPES) -> list[np.ndarray]:
    return [smooth_image(h, w, i) for i, (h, w) in enumerate(shapes)]
