"""The toy data: K clearly distinct, labelled modes of 16x16 RGB images.

A mode is a (shape, colour) pair: a filled square, a ring, a horizontal bar, a vertical
bar, a cross or a disc, in red, blue, green or yellow, on a dark background. Within a
mode, images vary in position (±2 px), size (±0.5 px), colour (±0.08 per channel) and
background noise, so a mode is a small cloud of images, not one point.

The K modes are the first K of the (shape, colour) grid taken in growing squares
(2x2, then 3x3, ...), so that any K mixes shapes and colours: K = 8 is squares, rings
and horizontal bars in red, blue and green, less the green horizontal bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["COLOURS", "MAX_MODES", "SHAPES", "SIZE", "Mode", "modes", "render", "sample_dataset"]

SIZE = 16
SHAPES = ("square", "ring", "hbar", "vbar", "cross", "disc")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.1),
    "blue": (0.15, 0.3, 0.95),
    "green": (0.1, 0.8, 0.2),
    "yellow": (0.95, 0.85, 0.1),
}
MAX_MODES = len(SHAPES) * len(COLOURS)
_BACKGROUND = 0.12  # grey level of the background


@dataclass(frozen=True)
class Mode:
    index: int
    shape: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def modes(k: int) -> list[Mode]:
    """The first ``k`` modes of the (shape, colour) grid, in growing squares."""
    if not 2 <= k <= MAX_MODES:
        raise ValueError(f"K must be in 2..{MAX_MODES} (6 shapes x 4 colours), got {k}")
    names = list(COLOURS)
    cells = [(s, c) for s in range(len(SHAPES)) for c in range(len(names))]
    cells.sort(key=lambda sc: (max(sc), sc[1], sc[0]))
    return [Mode(i, SHAPES[s], names[c]) for i, (s, c) in enumerate(cells[:k])]


def _mask(shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dy, dx = y - cy, x - cx
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "disc":
        return dy**2 + dx**2 <= (r + 0.5) ** 2
    if shape == "hbar":
        return (np.abs(dy) <= r * 0.45) & (np.abs(dx) <= r + 2.5)
    if shape == "vbar":
        return (np.abs(dx) <= r * 0.45) & (np.abs(dy) <= r + 2.5)
    if shape == "cross":
        arm = (np.abs(dy) <= 1.0) | (np.abs(dx) <= 1.0)
        return arm & (np.abs(dy) <= r + 1) & (np.abs(dx) <= r + 1)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= (r + 1.0) ** 2) & (d2 >= (r - 1.2) ** 2)
    raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")


def render(mode: Mode, rng: np.random.Generator, offset: float = 2.0) -> np.ndarray:
    """One (16, 16, 3) float32 image in [0, 1] of ``mode``, its centre shifted from the
    image's by up to ``offset`` px on each axis (uniform)."""
    cy, cx = SIZE / 2 + rng.uniform(-offset, offset, size=2)
    r = 3.5 + rng.uniform(-0.5, 0.5)
    colour = np.clip(np.asarray(COLOURS[mode.colour]) + rng.uniform(-0.08, 0.08, 3), 0, 1)
    img = np.full((SIZE, SIZE, 3), _BACKGROUND) + rng.normal(0, 0.02, (SIZE, SIZE, 3))
    img[_mask(mode.shape, cy, cx, r)] = colour
    return np.clip(img, 0, 1).astype(np.float32)


def sample_dataset(
    k: int, n: int, seed: int, offset: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 3, 16, 16) float32 in [0, 1] with balanced labels (n,) int64."""
    rng = np.random.default_rng(seed)
    ms = modes(k)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    imgs = np.stack([render(ms[int(lab)], rng, offset) for lab in labels])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
