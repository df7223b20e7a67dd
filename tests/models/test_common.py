"""Shared model helpers: pixel-bounded chunking, option checking."""

from __future__ import annotations

import numpy as np
import pytest

from divreward.models._common import check_options, iter_chunks, option


def _imgs(*sides: int) -> list[np.ndarray]:
    return [np.zeros((s, s, 3), np.uint8) for s in sides]


def test_chunks_bound_count_and_pixels_and_keep_order() -> None:
    images = _imgs(10, 10, 10, 20, 10, 30, 10)  # pixels 100,100,100,400,100,900,100
    chunks = list(iter_chunks(images, max_batch=3, max_pixels=500))
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 5), (5, 6), (6, 7)]
    for c in chunks:
        sizes = [img.shape[0] * img.shape[1] for img in images[c]]
        assert len(sizes) <= 3 and (sum(sizes) <= 500 or len(sizes) == 1)
    # one image over the pixel bound forms its own chunk (the model resizes it down)
    assert [(c.start, c.stop) for c in iter_chunks(_imgs(5, 100, 5), 8, 1000)] == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    assert list(iter_chunks([], 4, 10)) == []
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        list(iter_chunks(images, 0, 10))
    with pytest.raises(ValueError, match="max_pixels must be >= 1, got 0"):
        list(iter_chunks(images, 1, 0))


def test_option_checks() -> None:
    assert option({"a": 2}, "a", float, 1.0) == 2.0  # ints are accepted as floats
    assert option({}, "a", float, 1.0) == 1.0
    with pytest.raises(ValueError, match="option 'a' must be a float, got bool True"):
        option({"a": True}, "a", float, 1.0)
    with pytest.raises(ValueError, match=r"m: unknown option\(s\) 'b', 'c'; valid options: a"):
        check_options("m", {"a": 1, "b": 2, "c": 3}, ["a"])
