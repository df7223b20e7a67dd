"""CLIP preprocessing as batched tensor operations (option ``preprocess: tensor``) equals
the reference PIL processor within 2 uint8 levels per pixel, and scores agree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fixtures_models import TinyZoo
from model_images import smooth_image
from transformers import CLIPImageProcessorPil

from divreward.models import _clip_common as clip
from divreward.models.registry import load_model

STD_MIN = 0.26130258  # the smallest OpenAI std: 1 uint8 level = 1/255/STD_MIN normalised
LEVELS = 2  # tolerance, in uint8 levels before normalisation


@pytest.mark.parametrize("side", [224, 32])
def test_tensor_preprocessing_matches_the_pil_processor(side: int) -> None:
    proc = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=side)
    shapes = [(512, 512), (512, 768), (768, 512), (512, 512), (300, 301), (side, side)]
    images = [smooth_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    ref = clip.preprocess(proc, images)
    got = clip.preprocess_tensor(proc, images, "cpu")
    assert got.shape == ref.shape == (len(images), 3, side, side)
    err = (got - ref).abs().max().item()
    assert err <= LEVELS / 255 / STD_MIN + 1e-6, err
    # Mostly exact to within one level: the kernels agree except for rounding.
    assert (got - ref).abs().mean().item() <= 1 / 255 / STD_MIN


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "clip_embedder"])
def test_tensor_preprocessing_gives_the_same_outputs(tiny_zoo: TinyZoo, name: str) -> None:
    pil = load_model(name, tiny_zoo.options(name))
    opts = tiny_zoo.options(name)
    fast = load_model(name, replace(opts, options={**opts.options, "preprocess": "tensor"}))
    assert fast.bundle.preprocess == "tensor"  # type: ignore[attr-defined]
    images = [smooth_image(96, 80, 1), smooth_image(96, 80, 2), smooth_image(64, 128, 3)]
    prompts = ["a red bicycle", "a cat", "a lighthouse"]
    if name == "clip_embedder":
        a, b = pil.embed(images), fast.embed(images)  # type: ignore[union-attr]
    else:
        a, b = pil.score(images, prompts), fast.score(images, prompts)  # type: ignore[union-attr]
    # The pixel values differ by <= 2 uint8 levels; the tiny random CLIP moves its
    # outputs by far less than their spread (stated tolerance: 1e-2 of the scale).
    scale = float(np.abs(a).max())
    np.testing.assert_allclose(b, a, atol=1e-2 * scale, rtol=0)


def test_preprocess_option_is_checked(tiny_zoo: TinyZoo) -> None:
    opts = tiny_zoo.options("pickscore")
    with pytest.raises(ValueError, match="option 'preprocess' must be one of"):
        load_model("pickscore", replace(opts, options={**opts.options, "preprocess": "gpu"}))
