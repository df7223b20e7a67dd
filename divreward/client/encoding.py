"""Turning a trainer's images into bytes on the wire.

Accepted inputs are whatever :func:`divreward.images.to_canonical_batch` accepts: a
torch tensor ``(N, 3, H, W)`` float in [0, 1] (diffusers' output), a numpy array
``(N, H, W, 3)`` uint8 (ddpo/Flow-GRPO), a list of PIL images, arrays or encoded bytes.
Conversion to the canonical ``(H, W, 3) uint8`` form happens there and only there.

Downsizing: the server advertises the largest input resolution its models look at
(``max_resolution`` in ``GET /v1/models``). Every model resizes its input itself, and
the most demanding ones (CLIP-style centre crop, DreamSim's squash to a square) need
that many pixels along the *shorter* side. So an image whose shorter side exceeds
``max_side`` is scaled (aspect ratio kept, bicubic with antialiasing) until its shorter
side equals ``max_side``; smaller images are never upsampled. This is not bit-exact:
the model then resizes an already resized image (two resamplings instead of one), which
moves scores slightly; pass ``max_side=None`` (client ``downsize=False``) to send full
resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from divreward.images import encode_image, to_canonical_batch

__all__ = ["WIRE_FORMATS", "downsize", "encode_images", "prepare_images"]

WIRE_FORMATS = ("PNG", "JPEG", "WEBP")


def downsize(image: np.ndarray, max_side: int) -> np.ndarray:
    """Scale a canonical ``(H, W, 3)`` uint8 image so that ``min(H, W) <= max_side``."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = image.shape[:2]
    short = min(h, w)
    if short <= max_side:
        return image
    scale = max_side / short
    # round() keeps the shorter side exactly max_side; max(1, .) guards extreme ratios.
    new_w = max(1, round(w * scale))
    new_h = max(1, round(h * scale))
    if w <= h:
        new_w = max_side
    else:
        new_h = max_side
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def prepare_images(images: Any, *, max_side: int | None = None) -> list[np.ndarray]:
    """Canonical arrays, each downsized to ``max_side`` on its shorter side if given."""
    arrays = to_canonical_batch(images)
    if not arrays:
        raise ValueError("images is empty: give at least one image")
    if max_side is None:
        return arrays
    return [downsize(a, max_side) for a in arrays]


def encode_images(
    images: Any | Sequence[np.ndarray],
    *,
    max_side: int | None = None,
    fmt: str = "PNG",
    quality: int = 95,
) -> list[bytes]:
    """Encode images for the wire: PNG (lossless, default), JPEG or WebP bytes."""
    fmt = fmt.upper()
    if fmt not in WIRE_FORMATS:
        raise ValueError(f"image_format must be one of {WIRE_FORMATS}, got {fmt!r}")
    return [
        encode_image(a, fmt=fmt, quality=quality) for a in prepare_images(images, max_side=max_side)
    ]
