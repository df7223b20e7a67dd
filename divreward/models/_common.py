"""Helpers shared by the model modules: input checking, pixel-bounded chunking,
unit-normalisation, deterministic tiny-model seeding. Imports torch lazily."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from divreward.images import to_canonical_batch

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_PIXELS",
    "canonical",
    "check_options",
    "iter_chunks",
    "option",
    "seeded",
]

# A forward pass never sees more than this many images, nor (summed over the chunk)
# more decoded input pixels than DEFAULT_MAX_PIXELS: bounds host memory for the
# preprocessing copies (float32, 3 channels) as well as the model's activations.
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_PIXELS = 32 * 1024 * 1024


def canonical(images: Any) -> list[np.ndarray]:
    """The one conversion to ``(H, W, 3) uint8`` arrays (errors name the image index)."""
    return to_canonical_batch(images)


def iter_chunks(
    images: Sequence[np.ndarray],
    max_batch: int = DEFAULT_MAX_BATCH,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[slice]:
    """Consecutive slices of ``images`` with at most ``max_batch`` images and at most
    ``max_pixels`` input pixels (H*W summed) each; a single larger image is its own
    chunk (it is resized down by the model's preprocessing)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    start, pixels = 0, 0
    for i, img in enumerate(images):
        n = int(img.shape[0]) * int(img.shape[1])
        if i > start and (i - start >= max_batch or pixels + n > max_pixels):
            yield slice(start, i)
            start, pixels = i, 0
        pixels += n
    if start < len(images):
        yield slice(start, len(images))


def option(options: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``options[key]`` checked against ``kind`` (ValueError naming the option)."""
    value = options.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if value is not None and not isinstance(value, kind):
        raise ValueError(
            f"option {key!r} must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a tiny-model build without leaking the state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_options(model: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    """Reject option names a model does not know (a typo must not pass silently)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{model}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )
