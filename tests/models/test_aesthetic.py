"""The LAION aesthetic predictor on its tiny twin (random tiny CLIP + a random head in
the published file layout), loaded through the real loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images

from divreward.models import aesthetic
from divreward.models._checkpoint import CheckpointMismatchError
from divreward.models.base import LoadOptions
from divreward.models.registry import load_model

KEYS = sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


def _head(tiny_zoo: TinyZoo) -> Path:
    return tiny_zoo.build("aesthetic") / aesthetic.REPO / aesthetic.MLP_FILE


def test_head_file_has_the_published_keys(tiny_zoo: TinyZoo) -> None:
    state = torch.load(_head(tiny_zoo), weights_only=True)
    assert sorted(state) == KEYS
    # the published sizes, input = the tiny CLIP's projection (768 in the real one)
    shapes = [tuple(state[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    assert shapes == [(1024, 16), (128, 1024), (64, 128), (16, 64), (1, 16)]
    real = aesthetic.head_module(768).state_dict()
    assert sorted(real) == KEYS and tuple(real["layers.0.weight"].shape) == (1024, 768)


def test_score_is_the_head_of_the_unit_clip_features(tiny_zoo: TinyZoo) -> None:
    """By hand: transformers' CLIP image features of the PIL-processed images,
    L2-normalised, then the five affine maps of the head file (no activations)."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel

    model = tiny_zoo.load("aesthetic")
    images = make_images(5, seed=7)
    got = model.score(images, ["ignored"] * 5)

    clip_dir = tiny_zoo.root / aesthetic.CLIP_SOURCE
    clip = CLIPModel.from_pretrained(str(clip_dir)).eval()
    proc = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
    pixels = proc(images=[Image.fromarray(i) for i in images], return_tensors="pt")
    with torch.no_grad():
        e = clip.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
    x = (e / e.norm(dim=-1, keepdim=True)).double().numpy()
    state = torch.load(_head(tiny_zoo), weights_only=True)
    for i in (0, 2, 4, 6, 7):
        w = state[f"layers.{i}.weight"].double().numpy()
        b = state[f"layers.{i}.bias"].double().numpy()
        x = x @ w.T + b
    np.testing.assert_allclose(got, x[:, 0], rtol=1e-4, atol=1e-6)
    assert np.ptp(got) > 1e-6


def test_a_local_pth_file_is_a_source(tiny_zoo: TinyZoo) -> None:
    opts = tiny_zoo.options("aesthetic")
    by_path = load_model("aesthetic", LoadOptions(source=str(_head(tiny_zoo)), **_rest(opts)))
    images = make_images(3, seed=8)
    ref = tiny_zoo.load("aesthetic").score(images, ["a"] * 3)
    np.testing.assert_array_equal(by_path.score(images, ["a"] * 3), ref)
    assert by_path.info.source == str(_head(tiny_zoo))


def _rest(opts: LoadOptions) -> dict:
    return {"weights_dir": opts.weights_dir, "device": opts.device}


@pytest.mark.parametrize("change", ["rename", "drop", "reshape"])
def test_head_loads_strictly(tiny_zoo: TinyZoo, tmp_path: Path, change: str) -> None:
    state = torch.load(_head(tiny_zoo), weights_only=True)
    if change == "rename":
        state["mlp.0.weight"] = state.pop("layers.0.weight")
        match = "missing keys .*layers.0.weight.*unexpected keys .*mlp.0.weight"
    elif change == "drop":
        del state["layers.7.bias"]
        match = "missing keys .*layers.7.bias"
    else:
        state["layers.6.weight"] = torch.zeros(8, 64)
        match = r"shape mismatches .*layers.6.weight: checkpoint \(8, 64\) vs model \(16, 64\)"
    bad = tmp_path / "head.pth"
    torch.save(state, bad)
    opts = tiny_zoo.options("aesthetic")
    with pytest.raises(CheckpointMismatchError, match=match):
        load_model("aesthetic", LoadOptions(source=str(bad), **_rest(opts)))


def test_hub_files_name_what_load_reads() -> None:
    pairs = aesthetic.hub_files(LoadOptions(source=aesthetic.REPO))
    assert pairs[0] == ("trl-lib/ddpo-aesthetic-predictor", ["aesthetic-model.pth"])
    repo, files = pairs[1]
    assert repo == "openai/clip-vit-large-patch14"
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(files)
    local = aesthetic.hub_files(LoadOptions(source="/x/head.pth"))
    assert [repo for repo, _ in local] == ["openai/clip-vit-large-patch14"]
