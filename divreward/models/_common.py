"""Helpers shared by the model modules: input checking, pixel-bounded chunking,
unit-normalisation, deterministic tiny-model seeding. Imports torch lazily."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from divreward.images import to_canonical_batch
from divreward.models.base import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_PIXELS",
    "canonical",
    "check_options",
    "iter_chunks",
    "option",
    "recording_passes",
    "seeded",
]

# The defaults (base.DEFAULT_MAX_BATCH / DEFAULT_MAX_PIXELS) bound host memory for the
# preprocessing copies (float32, 3 channels) as well as the model's activations; each
# model reads its own ``max_batch`` / ``max_batch_pixels`` (base.BatchLimits).

_recorder = threading.local()


@contextlib.contextmanager
def recording_passes() -> Iterator[list[int]]:
    """Collect the image count of every chunk that :func:`iter_chunks` yields in this
    thread while the block runs: the forward-pass sizes of a model call."""
    sizes: list[int] = []
    previous = getattr(_recorder, "sizes", None)
    _recorder.sizes = sizes
    try:
        yield sizes
    finally:
        _recorder.sizes = previous


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
    sizes: list[int] | None = getattr(_recorder, "sizes", None)
    start, pixels = 0, 0
    for i, img in enumerate(images):
        n = int(img.shape[0]) * int(img.shape[1])
        if i > start and (i - start >= max_batch or pixels + n > max_pixels):
            if sizes is not None:
                sizes.append(i - start)
            yield slice(start, i)
            start, pixels = i, 0
        pixels += n
    if start < len(images):
        if sizes is not None:
            sizes.append(len(images) - start)
        yield slice(start, len(images))


def unique_texts(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in first-seen order and, for each text, its row among them: a
    group's images share one prompt, so its text is encoded once, not once per image."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(t, len(rows)) for t in texts]
    return list(rows), index


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
