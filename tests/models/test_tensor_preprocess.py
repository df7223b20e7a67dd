"""Preprocessing as batched tensor operations (option ``preprocess: tensor``) for HPSv2,
ImageReward, DreamSim and HPSv3 equals each model's reference preprocessing within a
stated tolerance, resizes each group of same-size images in one call, and gives the
same outputs as the reference on the tiny models. (CLIP: test_clip_preprocess.py.)"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo
from model_images import photo_like, smooth_image
from PIL import Image
from transformers import Qwen2VLImageProcessor

from divreward.models import dreamsim_embedder as ds
from divreward.models import hpsv2, hpsv3
from divreward.models import imagereward as ir
from divreward.models.registry import load_model

STD_MIN = 0.26130258  # the smallest OpenAI std: 1 uint8 level = 1/255/STD_MIN normalised
LEVEL = 1 / 255  # one uint8 level in [0, 1] units
# Tolerance for the PIL-resizing references: 2 uint8 levels per value at most (1 level
# measured: PIL rounds in fixed point) and on average under 0.05 level (about 1e-4
# measured: nearly every value is exact).
LEVELS = 2
MEAN_LEVELS = 0.05


def _check_levels(got: torch.Tensor, ref: torch.Tensor, level: float) -> None:
    """``got`` within LEVELS (max) and MEAN_LEVELS (mean) uint8 levels of ``ref``, a
    level being ``level`` in the tensors' units."""
    assert got.shape == ref.shape
    diff = (got.float().cpu() - ref.float()).abs() / level
    assert diff.max().item() <= LEVELS + 1e-3, diff.max().item()
    assert diff.mean().item() <= MEAN_LEVELS, diff.mean().item()


@pytest.mark.parametrize("size", [224, 32])
def test_hpsv2_tensor_preprocessing_equals_the_reference(size: int) -> None:
    """The same float operations as the reference, batched: equal up to float rounding
    (stated tolerance 1e-5 on normalised values; 0 measured on the CPU)."""
    images = photo_like()
    ref = hpsv2.preprocess(images, size)
    got = hpsv2.preprocess_tensor(images, size, "cpu")
    assert got.shape == ref.shape == (len(images), 3, size, size)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [224, 32])
def test_imagereward_tensor_preprocessing_matches_the_reference(size: int) -> None:
    images = photo_like()
    transform = ir.preprocess_transform(size)
    ref = torch.stack([transform(Image.fromarray(img)) for img in images])
    got = ir.preprocess_tensor(images, size, "cpu")
    _check_levels(got, ref, LEVEL / STD_MIN)


@pytest.mark.parametrize("size", [224, 32])
def test_dreamsim_tensor_preprocessing_matches_the_reference(size: int) -> None:
    images = photo_like()
    ref = torch.stack([ds.squash_resize(img, size) for img in images])
    got = ds.preprocess_tensor(images, size, "cpu")
    _check_levels(got, ref, LEVEL)


def _qwen_image_processor(pixels: int) -> Any:
    """Qwen2-VL-7B-Instruct's image processor settings with a ``pixels`` budget."""
    return Qwen2VLImageProcessor(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


@pytest.mark.parametrize("pixels", [hpsv3.PIXELS, hpsv3.TINY_PIXELS])
def test_hpsv3_tensor_patches_match_the_reference(pixels: int) -> None:
    """The reference: fetch_image's smart_resize with PIL bicubic, then the processor's
    rescale/normalise/patchify (do_resize=False), at the real budget (448 x 448) and the
    tiny one (56 x 56)."""
    images = photo_like()
    proc = _qwen_image_processor(pixels)
    sizes = [hpsv3.smart_resize(i.shape[0], i.shape[1], 28, pixels, pixels) for i in images]
    resized = [
        np.array(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
        for img, (h, w) in zip(images, sizes, strict=True)
    ]
    ref = proc(images=resized, do_resize=False, return_tensors="pt")
    got, grid = hpsv3.pixels_tensor(proc, images, sizes, "cpu")
    torch.testing.assert_close(grid, ref["image_grid_thw"], atol=0, rtol=0)
    _check_levels(got, ref["pixel_values"], LEVEL / STD_MIN)


def test_resizes_are_batched_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images of one size are resized in one call (per pass), not one by one."""
    calls: list[tuple[int, int, int]] = []
    real = torch.nn.functional.interpolate

    def counting(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((int(x.shape[0]), int(x.shape[2]), int(x.shape[3])))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    images = [smooth_image(64, 48, i) for i in range(5)] + [smooth_image(40, 40, 9)]
    ds.preprocess_tensor(images, 32, "cpu")
    # Two separable passes (as PIL) per size group: the five 64x48 images together.
    assert calls == [(5, 64, 48), (5, 64, 32), (1, 40, 40), (1, 40, 32)]


TINY_IMAGES = [(96, 80), (96, 80), (64, 128), (40, 30)]
PROMPTS = ["a red bicycle", "a cat", "a lighthouse at dusk", "two cats on a sofa"]


def _pair(tiny_zoo: TinyZoo, name: str) -> tuple[Any, Any]:
    opts = tiny_zoo.options(name)
    pil = load_model(name, opts)
    fast = load_model(name, replace(opts, options={**opts.options, "preprocess": "tensor"}))
    assert (pil.preprocess, fast.preprocess) == ("pil", "tensor")  # type: ignore[union-attr]
    assert fast.info.options["preprocess"] == "tensor"
    return pil, fast


@pytest.mark.parametrize("name", ["hpsv2", "imagereward", "hpsv3"])
def test_tensor_preprocessing_gives_the_same_scores(tiny_zoo: TinyZoo, name: str) -> None:
    pil, fast = _pair(tiny_zoo, name)
    images = [smooth_image(h, w, i) for i, (h, w) in enumerate(TINY_IMAGES)]
    a, b = pil.score(images, PROMPTS), fast.score(images, PROMPTS)
    # Stated tolerance: 1e-2 of the largest score (the pixels differ by <= 1 uint8 level
    # here; the tiny random models move their scores by far less).
    np.testing.assert_allclose(b, a, atol=1e-2 * float(np.abs(a).max()), rtol=0)


def test_tensor_preprocessing_gives_the_same_dreamsim_embeddings(tiny_zoo: TinyZoo) -> None:
    pil, fast = _pair(tiny_zoo, "dreamsim")
    images = [smooth_image(h, w, i) for i, (h, w) in enumerate(TINY_IMAGES)]
    a, b = pil.embed(images), fast.embed(images)
    # Unit rows: stated tolerance 1e-2 per coordinate and cosine > 0.9999.
    np.testing.assert_allclose(b, a, atol=1e-2, rtol=0)
    assert float((a * b).sum(axis=1).min()) > 0.9999


@pytest.mark.parametrize("name", ["hpsv2", "imagereward", "dreamsim", "hpsv3"])
def test_preprocess_option_is_checked(tiny_zoo: TinyZoo, name: str) -> None:
    opts = tiny_zoo.options(name)
    bad = replace(opts, options={**opts.options, "preprocess": "gpu"})
    with pytest.raises(ValueError, match=rf"{name}: option 'preprocess' must be one of"):
        load_model(name, bad)
