"""The tiny profile: deterministic builds, the marker, the load options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from divreward.models.tiny import build_all, tiny_load_options
from divreward.models.weights import TINY_MARKER, file_sha256_prefix

FILES = [
    "yuvalkirstain/PickScore_v1/model.safetensors",
    "yuvalkirstain/PickScore_v1/config.json",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/tokenizer.json",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/preprocessor_config.json",
    "xswu/HPSv2/HPS_v2_compressed.pt",
    "xswu/HPSv2/HPS_v2.1_compressed.pt",
    "xswu/HPSv2/open_clip_config.json",
]


def _hashes(root: Path) -> dict[str, str]:
    return {f: file_sha256_prefix(root / f) for f in FILES}


def test_build_is_deterministic_per_seed(tmp_path: Path) -> None:
    names = ["pickscore", "hpsv2", "hpsv21"]
    assert build_all(tmp_path / "a", seed=0, names=names) == names
    build_all(tmp_path / "b", seed=0, names=names)
    build_all(tmp_path / "c", seed=1, names=names)
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert a == b
    for f in ("yuvalkirstain/PickScore_v1/model.safetensors", "xswu/HPSv2/HPS_v2_compressed.pt"):
        assert a[f] != c[f], f"{f} does not depend on the seed"
    # v2.0 and v2.1 tiny checkpoints differ, as the real ones do.
    assert a["xswu/HPSv2/HPS_v2_compressed.pt"] != a["xswu/HPSv2/HPS_v2.1_compressed.pt"]
    marker = json.loads((tmp_path / "c" / TINY_MARKER).read_text())
    assert marker["seed"] == 1
    assert marker["models"] == names
    assert {"torch", "transformers", "open_clip_torch", "dreamsim"} <= set(marker["versions"])
    assert "meaningless" in marker["warning"]


def test_marker_lists_every_model_built_into_a_directory(tmp_path: Path) -> None:
    """Building more models into an existing tiny directory adds to the marker's list."""
    build_all(tmp_path, seed=0, names=["clipscore"])
    build_all(tmp_path, seed=0, names=["clip_embedder"])
    marker = json.loads((tmp_path / TINY_MARKER).read_text())
    assert marker["models"] == ["clipscore", "clip_embedder"]


def test_unknown_name_is_rejected_before_building(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'pickscor'; registered models: "):
        build_all(tmp_path / "x", names=["pickscore", "pickscor"])
    assert not (tmp_path / "x").exists()


def test_tiny_load_options_require_the_marker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"is not a tiny-model directory \\(no {TINY_MARKER}\\)"):
        tiny_load_options("pickscore", tmp_path)
    (tmp_path / TINY_MARKER).write_text("{}")
    opts = tiny_load_options("pickscore", tmp_path)
    assert opts.weights_dir == str(tmp_path) and opts.device == "cpu"
