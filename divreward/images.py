"""One canonical image form for the whole project, and the conversions into it.

Canonical form: a C-contiguous ``numpy.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``,
RGB. Every model, service and client converts to this form here and nowhere else.

Documented conversions (everything else is an error naming the image index):
- grayscale (``L``/``(H, W)``/``(H, W, 1)``) is replicated to three channels;
- RGBA / LA / palette images are composited on black (alpha is dropped after
  premultiplying), so a transparent pixel reads as black, never as garbage;
- 16-bit images (``I;16`` PNGs, ``uint16`` arrays) are scaled to 8 bits by ``>> 8``;
- float arrays/tensors must lie in [0, 1] and are rounded to ``uint8``;
- torch tensors are taken as ``(3, H, W)`` (one image) or ``(N, 3, H, W)`` (a batch).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageError",
    "decode_image",
    "encode_image",
    "pil_to_array",
    "to_canonical",
    "to_canonical_batch",
]

# Decompression-bomb guard for decoding untrusted bytes; the services apply their own,
# configurable pixel limit on top of this.
MAX_DECODE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS


class ImageError(ValueError):
    """An image could not be read or converted. ``index`` names the image in its batch."""

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        prefix = f"image {index}: " if index is not None else ""
        super().__init__(prefix + message)


def pil_to_array(img: Image.Image, index: int | None = None) -> np.ndarray:
    """Convert a PIL image of any mode to the canonical ``(H, W, 3) uint8`` array."""
    if img.width == 0 or img.height == 0:
        raise ImageError(f"has zero pixels ({img.width}x{img.height})", index)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16 and mode != "I":
            arr = arr.astype(np.uint16)
        if mode == "I":
            # 32-bit integer images from 16-bit PNGs carry values in [0, 65535].
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        return _from_array(arr, index)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = np.rint(rgba[..., :3] * alpha).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _from_array(arr: np.ndarray, index: int | None) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageError(f"expected an (H, W, C) array, got shape {tuple(arr.shape)}", index)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"has zero pixels (shape {tuple(arr.shape)})", index)
    channels = arr.shape[2]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageError("contains NaN or infinite values", index)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"float pixel values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]", index
            )
        out = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported pixel dtype {arr.dtype}", index)
    if channels == 1:
        out = np.repeat(out, 3, axis=2)
    elif channels == 4:
        alpha = out[..., 3:4].astype(np.float32) / 255.0
        out = np.rint(out[..., :3].astype(np.float32) * alpha).astype(np.uint8)
    elif channels == 2:  # grey + alpha
        alpha = out[..., 1:2].astype(np.float32) / 255.0
        grey = np.rint(out[..., :1].astype(np.float32) * alpha).astype(np.uint8)
        out = np.repeat(grey, 3, axis=2)
    elif channels != 3:
        raise ImageError(f"expected 1, 2, 3 or 4 channels, got {channels}", index)
    return np.ascontiguousarray(out)


def decode_image(data: bytes, index: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes to the canonical array; errors name ``index``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"expected encoded image bytes, got {type(data).__name__}", index)
    if len(data) == 0:
        raise ImageError("is empty (0 bytes)", index)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG", "WEBP"):
                raise ImageError(
                    f"format {img.format!r} is not accepted (use PNG, JPEG or WebP)", index
                )
            img.load()
            return pil_to_array(img, index)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels to decode ({exc})", index) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot be decoded as PNG, JPEG or WebP ({exc})", index) from exc


def encode_image(image: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode a canonical array as PNG (lossless, default), JPEG or WebP bytes."""
    arr = _from_array(np.asarray(image), None)
    buf = io.BytesIO()
    fmt = fmt.upper()
    kwargs: dict[str, Any] = {}
    if fmt == "PNG":
        kwargs["compress_level"] = 1  # speed over size: images are transient
    elif fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    else:
        raise ValueError(f"fmt must be PNG, JPEG or WEBP, got {fmt!r}")
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def to_canonical(image: Any, index: int | None = None) -> np.ndarray:
    """Convert one image (PIL, numpy HWC/HW, torch CHW float, bytes, path) to canonical."""
    if isinstance(image, Image.Image):
        return pil_to_array(image, index)
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), index)
    if isinstance(image, np.ndarray):
        return _from_array(image, index)
    if type(image).__module__.startswith("torch"):
        t = image.detach().to("cpu")
        if t.ndim != 3:
            raise ImageError(f"expected a (C, H, W) tensor, got shape {tuple(t.shape)}", index)
        if t.is_floating_point():
            t = t.float()
        arr = t.permute(1, 2, 0).numpy()
        return _from_array(arr, index)
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        try:
            with open(image, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ImageError(f"cannot read file {str(image)!r} ({exc.strerror})", index) from exc
        try:
            return decode_image(data, index)
        except ImageError as exc:
            raise ImageError(f"file {str(image)!r}: {exc}", None) from exc
    raise ImageError(f"unsupported image type {type(image).__name__}", index)


def to_canonical_batch(images: Any) -> list[np.ndarray]:
    """Convert a batch to a list of canonical arrays.

    Accepts a sequence of single images, a ``(N, H, W, C)`` numpy array (uint8 NHWC, as
    ddpo/Flow-GRPO pass it), or a ``(N, 3, H, W)`` torch tensor (float in [0, 1]).
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ImageError(f"a batch array must be (N, H, W, C), got shape {images.shape}")
        return [_from_array(images[i], i) for i in range(images.shape[0])]
    if type(images).__module__.startswith("torch") and hasattr(images, "ndim"):
        if images.ndim != 4:
            raise ImageError(f"a batch tensor must be (N, C, H, W), got {tuple(images.shape)}")
        return [to_canonical(images[i], i) for i in range(images.shape[0])]
    if isinstance(images, Sequence | Iterable) and not isinstance(images, str | bytes):
        return [to_canonical(img, i) for i, img in enumerate(images)]
    raise ImageError(f"unsupported batch type {type(images).__name__}")
