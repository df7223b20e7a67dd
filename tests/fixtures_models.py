"""Model fixtures (pytest plugin loaded by tests/conftest.py).

- ``tiny_zoo``: one tiny-model directory per test session; builds a model's tiny twin
  on first use (``tiny_zoo.build(name)``) and caches loaded models
  (``tiny_zoo.load(name)``), so a test file that needs one model builds only that one.
- ``tiny_models_dir``: the same directory with **every** registered model built (what
  the services' tiny profile loads).
- ``sample_images``: deterministic canonical images of assorted sizes.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from divreward.models.base import Embedder, LoadOptions, Scorer
from divreward.models.registry import REGISTRY, get_spec, load_model
from divreward.models.tiny import tiny_load_options
from divreward.models.weights import write_tiny_marker

TINY_SEED = 0


class TinyZoo:
    """Builds tiny models into one directory on demand and caches loaded ones."""

    def __init__(self, root: Path, seed: int = TINY_SEED) -> None:
        self.root = root
        self.seed = seed
        self._built_modules: set[str] = set()
        self._loaded: dict[str, Scorer | Embedder] = {}
        write_tiny_marker(root, seed, [])

    def build(self, name: str) -> Path:
        module = get_spec(name).module
        if module not in self._built_modules:
            importlib.import_module(f"divreward.models.{module}").build_tiny(self.root, self.seed)
            self._built_modules.add(module)
            # The marker lists what is built (the services' tiny profile reads it).
            built = [n for n, s in REGISTRY.items() if s.module in self._built_modules]
            write_tiny_marker(self.root, self.seed, built)
        return self.root

    def build_all(self) -> Path:
        for name in REGISTRY:
            self.build(name)
        write_tiny_marker(self.root, self.seed, list(REGISTRY))
        return self.root

    def options(self, name: str, **overrides: Any) -> LoadOptions:
        self.build(name)
        opts = tiny_load_options(name, self.root)
        return replace(opts, **overrides) if overrides else opts

    def load(self, name: str) -> Scorer | Embedder:
        """The tiny model, loaded once per session through the real loader."""
        if name not in self._loaded:
            self._loaded[name] = load_model(name, self.options(name))
        return self._loaded[name]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> TinyZoo:
    return TinyZoo(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_zoo: TinyZoo) -> Path:
    return tiny_zoo.build_all()


def make_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct random (H, W, 3) uint8 images of assorted sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 48), (40, 64), (64, 40), (56, 56), (33, 71), (80, 52), (45, 45), (60, 30)]
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        # Smooth-ish content (a random colour gradient plus noise) so different images
        # differ at every resolution the tiny models look at.
        base = rng.integers(0, 256, size=(1, 1, 3))
        grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(-128, 128, size=(1, 1, 3))
        noise = rng.integers(-40, 40, size=(h, w, 3))
        out.append(np.clip(base + grad + noise, 0, 255).astype(np.uint8))
    return out


#: Words for rendered-text images (the OCR scorer's tests): distinct enough that no word
#: reads as another.
WORDS = ["Hello", "Spring Sale", "OPEN 24", "diverse", "Bakery", "Zebra", "Quantum", "MIX 7"]


def text_image(text: str, seed: int = 0, size: tuple[int, int] = (96, 320)) -> np.ndarray:
    """``text`` in black in PIL's default font (40 px) on a light background, ``(H, W, 3)``
    uint8; the seed shifts the text and tints the background."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(215, 256, size=3))
    img = Image.new("RGB", (size[1], size[0]), bg)
    xy = (int(rng.integers(6, 20)), int(rng.integers(10, max(11, size[0] - 60))))
    ImageDraw.Draw(img).text(xy, text, fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    return np.asarray(img)


def make_text_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` images of WORDS (cycled) and their prompts, each quoting its own word."""
    words = [WORDS[i % len(WORDS)] for i in range(n)]
    images = [text_image(w, seed + i) for i, w in enumerate(words)]
    return images, [f'a shop sign that says "{w}"' for w in words]


@pytest.fixture
def sample_images() -> list[np.ndarray]:
    return make_images(8)
