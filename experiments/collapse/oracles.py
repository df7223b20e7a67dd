"""Pixel-level quality oracles: functions of an image's pixels only, no network, so that
a world's quality cannot be entangled with its mode classifier.

Every function takes images ``x`` of shape (N, 3, H, W) in [0, 1] and the background
grey level, and returns (N,) float64.

- :func:`foreground`: how much each pixel is "ink": ``clip((|x - bg| - 0.1) / 0.2, 0, 1)``
  with ``|.|`` the RGB distance to the background grey (background noise of std 0.02 per
  channel is ~0.035 away: no ink; a shape colour is >= 0.5 away: full ink).
- :func:`centroid_offset`: the distance in pixels of the ink's centroid (pixel moments,
  pixel (i, j) at (i + 0.5, j + 0.5)) from the image centre (H / 2, W / 2); ``inf`` for
  an image with no ink.
- :func:`centring`: ``exp(-d^2 / (2 sigma^2))``, d the centroid offset: 1 for a centred
  shape, 0 for an empty image.
- :func:`redness`: ``clip((R - max(G, B)) / 0.5, 0, 1)`` of the ink-weighted mean colour:
  1 for the toy's red (0.9, 0.15, 0.1) even with its ±0.08 jitter, 0 for blue, green or
  an empty image.
"""

from __future__ import annotations

import torch

__all__ = ["centring", "centroid", "centroid_offset", "foreground", "redness"]

_THRESHOLD, _RAMP = 0.1, 0.2


def foreground(x: torch.Tensor, background: float) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) ink weights in [0, 1]."""
    dist = (x.double() - background).pow(2).sum(1).sqrt()
    return ((dist - _THRESHOLD) / _RAMP).clamp(0.0, 1.0)


def centroid(x: torch.Tensor, background: float) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 2) ink centroid (y, x) in pixels relative to the image centre, (N,) ink mass)."""
    f = foreground(x, background)
    h, w = f.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64) + 0.5 - h / 2
    xs = torch.arange(w, dtype=torch.float64) + 0.5 - w / 2
    mass = f.sum((1, 2))
    safe = mass.clamp_min(1e-12)
    cy = (f.sum(2) * ys).sum(1) / safe
    cx = (f.sum(1) * xs).sum(1) / safe
    return torch.stack([cy, cx], dim=1), mass


def centroid_offset(x: torch.Tensor, background: float) -> torch.Tensor:
    """(N,) distance in pixels of the ink centroid from the image centre (inf: no ink)."""
    c, mass = centroid(x, background)
    d = c.norm(dim=1)
    return torch.where(mass > 1e-6, d, torch.full_like(d, float("inf")))


def centring(x: torch.Tensor, background: float, sigma: float) -> torch.Tensor:
    """(N,) exp(-d^2 / (2 sigma^2)) of the centroid offset d (0 for an empty image)."""
    d = centroid_offset(x, background)
    return torch.exp(-(d**2) / (2 * sigma**2))


def redness(x: torch.Tensor, background: float) -> torch.Tensor:
    """(N,) clip((R - max(G, B)) / 0.5, 0, 1) of the ink-weighted mean colour."""
    f = foreground(x, background)
    mass = f.sum((1, 2))
    rgb = (x.double() * f[:, None]).sum((2, 3)) / mass.clamp_min(1e-12)[:, None]
    r = ((rgb[:, 0] - rgb[:, 1:].max(1).values) / 0.5).clamp(0.0, 1.0)
    return torch.where(mass > 1e-6, r, torch.zeros_like(r))
