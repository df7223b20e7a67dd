"""Bad input to a scorer and an embedder (tiny PickScore, tiny DreamSim-DINO): clear
errors naming the image, or the documented conversions of divreward.images, never a
crash deep in torch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fixtures_models import TinyZoo, make_images
from PIL import Image

from divreward.images import ImageError
from divreward.models.base import Embedder, Scorer
from divreward.models.registry import load_model


@pytest.fixture(scope="module")
def scorer(tiny_zoo: TinyZoo) -> Scorer:
    model = tiny_zoo.load("pickscore")
    assert isinstance(model, Scorer)
    return model


@pytest.fixture(scope="module")
def embedder(tiny_zoo: TinyZoo) -> Embedder:
    model = load_model(
        "dreamsim", tiny_zoo.options("dreamsim", options={"dreamsim_type": "dino_vitb16"})
    )
    assert isinstance(model, Embedder)
    return model


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_unreadable_file(scorer: Scorer, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"image 1: cannot read file '.*nope\.png'"):
        scorer.score([make_images(1)[0], tmp_path / "nope.png"], ["a", "b"])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"file '.*junk\.png': image 0: cannot be decoded"):
        scorer.score([junk], ["a"])


def test_truncated_png(scorer: Scorer, embedder: Embedder) -> None:
    data = _png(Image.fromarray(make_images(1)[0]))[:100]
    with pytest.raises(ImageError, match="image 0: cannot be decoded as PNG, JPEG or WebP"):
        scorer.score([data], ["a"])
    with pytest.raises(ImageError, match="image 2: cannot be decoded"):
        embedder.embed([*make_images(2), data])


def test_zero_pixel_images(scorer: Scorer, embedder: Embedder) -> None:
    with pytest.raises(ImageError, match=r"image 0: has zero pixels \(shape \(0, 8, 3\)\)"):
        scorer.score([np.zeros((0, 8, 3), np.uint8)], ["a"])
    with pytest.raises(ImageError, match=r"image 1: has zero pixels"):
        embedder.embed([make_images(1)[0], np.zeros((8, 0), np.uint8)])


def test_grayscale_rgba_and_16_bit_are_converted_as_documented(
    scorer: Scorer, embedder: Embedder
) -> None:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    rgb_of_grey = np.repeat(grey[..., None], 3, axis=2)
    rgba = rng.integers(0, 256, (40, 52, 4), dtype=np.uint8)
    premultiplied = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    deep = rng.integers(0, 65536, (40, 52), dtype=np.uint16)
    png16 = _png(Image.fromarray(deep))  # an I;16 PNG
    as8 = np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, axis=2)
    odd = [grey, Image.fromarray(rgba, "RGBA"), png16]
    plain = [rgb_of_grey, premultiplied, as8]
    prompts = ["a", "b", "c"]
    np.testing.assert_array_equal(scorer.score(odd, prompts), scorer.score(plain, prompts))
    np.testing.assert_array_equal(embedder.embed(odd), embedder.embed(plain))


def test_prompt_list_of_the_wrong_length(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="prompts has 1 entries but images has 2"):
        scorer.score(make_images(2), ["a"])
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a str, got int"):
        scorer.score(make_images(2), ["a", 3])  # type: ignore[list-item]


def test_float_images_out_of_range(scorer: Scorer) -> None:
    bad = np.full((10, 10, 3), 1.5, np.float32)
    with pytest.raises(ImageError, match=r"image 0: float pixel values must lie in \[0, 1\]"):
        scorer.score([bad], ["a"])
