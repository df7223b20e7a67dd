"""Decoding request images, with the service's limits, into the canonical form.

Each image is checked twice: its header first (format and width x height against
``max_pixels_per_image``, without decoding the pixels, so a decompression bomb costs
nothing), then a full decode through :func:`divreward.images.decode_image`, the one
conversion into ``(H, W, 3) uint8`` RGB. Errors name the group and image index.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from divreward.images import ImageError, decode_image
from divreward.services.common.errors import ServiceError

__all__ = ["decode_and_put", "decode_group", "image_size"]

_FORMATS = ("PNG", "JPEG", "WEBP")


def _where(group_index: int | None, image_index: int, field: str = "groups") -> str:
    return (
        f"{field}[{group_index}].images[{image_index}]"
        if group_index is not None
        else f"images[{image_index}]"
    )


def _too_many_pixels(
    where: str, pixels: str, max_pixels: int, group_index: int | None, image_index: int
) -> ServiceError:
    return ServiceError(
        413,
        "payload_too_large",
        f"{where}: {pixels} pixels exceeds the limit of {max_pixels} pixels per image "
        "(limits.max_pixels_per_image); downscale it (the models look at 224-448 px)",
        group_index=group_index,
        image_index=image_index,
    )


def image_size(
    data: bytes,
    group_index: int | None,
    image_index: int,
    field: str = "groups",
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """(width, height) from the file header; a 400 naming the image if unreadable, a
    413 if the header declares more than ``max_pixels`` pixels (checked before any
    pixel is decoded, so a decompression bomb costs nothing)."""
    where = _where(group_index, image_index, field)
    if len(data) == 0:
        raise ServiceError(
            400,
            "invalid_image",
            f"{where}: is empty (0 bytes)",
            group_index=group_index,
            image_index=image_index,
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            size = img.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses to even open an image of more than 2 * MAX_IMAGE_PIXELS pixels.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0)}"
        raise _too_many_pixels(
            where, pixels, max_pixels or Image.MAX_IMAGE_PIXELS or 0, group_index, image_index
        ) from None
    except UnidentifiedImageError:
        raise ServiceError(
            400,
            "invalid_image",
            f"{where}: cannot be decoded as PNG, JPEG or WebP (not a recognised image file)",
            group_index=group_index,
            image_index=image_index,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ServiceError(
            400,
            "invalid_image",
            f"{where}: cannot be decoded as PNG, JPEG or WebP ({exc})",
            group_index=group_index,
            image_index=image_index,
        ) from None
    if fmt not in _FORMATS:
        raise ServiceError(
            400,
            "invalid_image",
            f"{where}: format {fmt!r} is not accepted (use PNG, JPEG or WebP)",
            group_index=group_index,
            image_index=image_index,
        )
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise _too_many_pixels(where, f"{w}x{h} = {w * h}", max_pixels, group_index, image_index)
    return size


def decode_group(
    images: Sequence[bytes],
    group_index: int | None,
    max_pixels: int,
    field: str = "groups",
    offset: int = 0,
) -> list[np.ndarray]:
    """Decode one group's files to canonical arrays, all or nothing.

    A 400 ``invalid_image`` names ``groups[g].images[i]`` (or ``images[i]`` when the
    request has no groups; ``field`` names the list of groups) and why (undecodable,
    unsupported format); an image of more than ``max_pixels`` pixels is a 413
    ``payload_too_large`` naming it the same way. ``images`` may be a slice of the group
    that starts at image ``offset`` (a chunk): the errors name the group's own indices.
    """
    # Headers first, in order (cheap): a too-large or non-image file is reported before
    # any pixel is decoded, and always the lowest index first.
    for i, data in enumerate(images):
        image_size(data, group_index, offset + i, field, max_pixels)

    def one(i: int) -> np.ndarray:
        at = offset + i
        try:
            return decode_image(images[i], at)
        except ImageError as exc:
            # decode_image prefixes "image {i}: "; restate with the group as well.
            reason = str(exc).removeprefix(f"image {at}: ")
            raise ServiceError(
                400,
                "invalid_image",
                f"{_where(group_index, at, field)}: {reason}",
                group_index=group_index,
                image_index=at,
            ) from None

    if len(images) < 2:
        return [one(i) for i in range(len(images))]
    # The codecs release the GIL: decode the group's files in parallel threads. map()
    # returns in order and re-raises the first failure by index.
    return list(_decoder_pool().map(one, range(len(images))))


_POOL: ThreadPoolExecutor | None = None


def _decoder_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode"
        )
    return _POOL


def decode_and_put(
    images: Sequence[bytes],
    group_index: int | None,
    max_pixels: int,
    field: str = "groups",
    offset: int = 0,
) -> tuple[Any, int]:
    """Decode a group and put its pixels in Ray's object store once: (ObjectRef, count).

    Every model of the group then reads the same copy (zero-copy numpy on the same
    node). Meant to run in a worker thread: the put copies ~19 MB for 24 images of 512^2,
    which would otherwise block the ingress's event loop.
    """
    import ray

    arrays = decode_group(images, group_index, max_pixels, field, offset)
    return ray.put(arrays), len(arrays)
