"""Plugin factories for tests/models/test_plugins.py: good ones and contract breakers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from divreward.models.base import Embedder, LoadOptions, ModelInfo, Scorer, check_prompts


class Brightness(Scorer):
    """Score = mean pixel value in [0, 1] times ``scale``."""

    max_resolution = 64

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.info = ModelInfo(name="brightness", kind="scorer", source="formula")

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        return np.array([self.scale * np.asarray(im).mean() / 255.0 for im in images])


class ColourHistogram(Embedder):
    """Unit-normalised mean RGB (3-d)."""

    dim = 3

    def __init__(self) -> None:
        self.info = ModelInfo(name="colours", kind="embedder", source="formula")

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        m = np.array([np.asarray(im, dtype=np.float64).mean(axis=(0, 1)) + 1 for im in images])
        m = m.reshape(-1, 3)
        return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def brightness(opts: LoadOptions) -> Brightness:
    return Brightness(float(opts.options.get("scale", 1.0)))


def colours(opts: LoadOptions) -> ColourHistogram:
    return ColourHistogram()


def not_a_model(opts: LoadOptions) -> object:
    return object()


def wrong_kind(opts: LoadOptions) -> ColourHistogram:  # an embedder where a scorer is due
    return ColourHistogram()


def raises(opts: LoadOptions) -> Scorer:
    raise RuntimeError("weights not found")


class _NoInfo(Brightness):
    def __init__(self) -> None:
        self.scale = 1.0
        self.info = {"name": "x"}  # type: ignore[assignment]


def no_info(opts: LoadOptions) -> Scorer:
    return _NoInfo()


class _BadShape(Brightness):
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(images), 2))


def bad_shape(opts: LoadOptions) -> Scorer:
    return _BadShape(1.0)


class _NotUnit(ColourHistogram):
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return 2 * super().embed(images)


def not_unit(opts: LoadOptions) -> Embedder:
    return _NotUnit()


class _NaN(Brightness):
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        return np.full(len(images), np.nan)


def nan_scores(opts: LoadOptions) -> Scorer:
    return _NaN(1.0)


NOT_CALLABLE = 3
