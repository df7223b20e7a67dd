"""CLIP preprocessing: the default path equals transformers' PIL processor bit for bit
(in any thread count, with the processor's own padding path for small images); the
batched tensor operations (option ``preprocess: tensor``) equal it within 2 uint8 levels
per pixel, and scores agree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo
from model_images import SHAPES, photo_like, smooth_image
from transformers import CLIPImageProcessorPil

from divreward.models import _clip_common as clip
from divreward.models.registry import load_model

STD_MIN = 0.26130258  # the smallest OpenAI std: 1 uint8 level = 1/255/STD_MIN normalised
LEVELS = 2  # tolerance, in uint8 levels before normalisation


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("side", [224, 32])
def test_default_preprocessing_is_the_pil_processor_bit_for_bit(side: int, threads: int) -> None:
    proc = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=side)
    # SHAPES include images smaller than the crop (the processor pads those: its path),
    # a repeated size, odd sides, a long strip; grey and saturated levels 0 and 255.
    images = [*photo_like(), np.zeros((40, 50, 3), np.uint8), np.full((300, 300, 3), 255, np.uint8)]
    ref = clip.processor_preprocess(proc, images)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = clip.preprocess(proc, images)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == ref.dtype == torch.float32
    assert got.shape == ref.shape == (len(SHAPES) + 2, 3, side, side)
    assert torch.equal(got, ref)


def test_a_processor_configured_otherwise_goes_through_the_processor() -> None:
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32, resample=2)
    images = photo_like()[:3]
    assert clip._pil_table(proc) is None
    assert torch.equal(clip.preprocess(proc, images), clip.processor_preprocess(proc, images))


@pytest.mark.parametrize("side", [224, 32])
def test_tensor_preprocessing_matches_the_pil_processor(side: int) -> None:
    proc = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=side)
    shapes = [(512, 512), (512, 768), (768, 512), (512, 512), (300, 301), (side, side)]
    images = [smooth_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    ref = clip.processor_preprocess(proc, images)
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
