"""HPSv2/2.1: score = the reference's diag(image_features @ text_features.T) from open_clip's
forward; the longest-side resize + centred black pad on images of known geometry; the
ViT-H-14 key set (686 tensors) on the meta device; strict checkpoint loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from fixtures_models import TinyZoo, make_images

from divreward.models.base import LoadOptions
from divreward.models.hpsv2 import (
    HPSv2,
    build_model,
    longest_side_pad,
    model_config,
    preprocess,
)
from divreward.models.registry import load_model

PROMPTS = ["a red bicycle", "two cats asleep on a sofa", "a lighthouse at dusk", "ramen"]


@pytest.mark.parametrize("name", ["hpsv2", "hpsv21"])
def test_score_is_the_reference_cosine(tiny_zoo: TinyZoo, name: str) -> None:
    model = tiny_zoo.load(name)
    assert isinstance(model, HPSv2)
    images = make_images(4, seed=11)
    # hpsv2/img_score.py: outputs = model(image, text); diag(image_features @ text_features.T)
    tokens = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)  # the reference tokenizer
    with torch.no_grad():
        out = model.model(preprocess(images, model.image_size), tokens)
    expected = (out["image_features"] @ out["text_features"].T).diagonal().double().numpy()
    np.testing.assert_allclose(model.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(expected) <= 1.0)  # a cosine, no logit scale


def test_versions_load_their_own_files(tiny_zoo: TinyZoo) -> None:
    v20, v21 = tiny_zoo.load("hpsv2"), tiny_zoo.load("hpsv21")
    assert v20.info.options == {"version": "v2.0"} and v21.info.options == {"version": "v2.1"}
    assert v20.info.weights_hash != v21.info.weights_hash
    images = make_images(2, seed=12)
    assert not np.allclose(v20.score(images, PROMPTS[:2]), v21.score(images, PROMPTS[:2]))
    with pytest.raises(ValueError, match=r"option 'version' must be one of \['v2.0', 'v2.1'\]"):
        load_model("hpsv2", tiny_zoo.options("hpsv2", options={"version": "v3"}))


def _white_left(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 255
    return img


def test_longest_side_resize_and_centred_pad() -> None:
    # 100 wide x 50 high -> scale 2.24 -> 224 x 112 content, pad 112 rows: 56 top, 56 bottom.
    x = longest_side_pad(_white_left(50, 100), 224).mean(dim=0)  # (224, 224)
    assert x.shape == (224, 224)
    assert x[:56].abs().max() == 0 and x[168:].abs().max() == 0  # black pad
    assert x[60:164, :108].min() > 0.97  # white content, left half
    assert x[60:164, 116:].abs().max() < 0.03  # black content, right half
    # 45 high -> round(45 * 2.24) = 101 rows of content, pad 123: 61 top, 62 bottom.
    x = longest_side_pad(np.full((45, 100, 3), 255, np.uint8), 224).mean(dim=0)
    rows = (x > 0.5).any(dim=1).nonzero().flatten()
    assert (int(rows.min()), int(rows.max())) == (61, 161)
    # Tall: 100 high x 40 wide, all white -> 224 x 90 content, pad 134: 67 left, 67 right.
    x = longest_side_pad(np.full((100, 40, 3), 255, np.uint8), 224).mean(dim=0)
    cols = (x > 0.5).any(dim=0).nonzero().flatten()
    assert (int(cols.min()), int(cols.max())) == (67, 156)
    # Already 224 on the longest side: padded too (upstream would pass 224 x 112 on).
    x = longest_side_pad(np.full((112, 224, 3), 255, np.uint8), 224)
    assert x.shape == (3, 224, 224) and float(x[:, 56:168].min()) == 1.0


def test_preprocess_normalises_with_openai_stats() -> None:
    x = preprocess([np.zeros((30, 30, 3), np.uint8)], 32)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711))
    torch.testing.assert_close(x[0, :, 5, 5], -mean / std)


def test_vit_h14_key_set_on_meta_matches_the_hps_checkpoint() -> None:
    """open_clip's ViT-H-14 state dict = the HPS checkpoints' key set: 686 tensors."""
    arch, cfg = model_config(None)
    assert arch == "ViT-H-14"
    model = build_model(cfg, "meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # vision: 4 + ln_pre 2 + 32 blocks x 12 + ln_post 2; text: 6 + 24 blocks x 12
    assert len(shapes) == (4 + 2 + 32 * 12 + 2) + (6 + 24 * 12) == 686
    assert shapes["visual.conv1.weight"] == (1280, 3, 14, 14)
    assert shapes["visual.positional_embedding"] == (257, 1280)
    assert shapes["visual.proj"] == (1280, 1024)
    assert shapes["token_embedding.weight"] == (49408, 1024)
    assert shapes["positional_embedding"] == (77, 1024)
    assert shapes["text_projection"] == (1024, 1024)
    assert shapes["transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert shapes["visual.transformer.resblocks.31.mlp.c_fc.weight"] == (5120, 1280)


def _copy_hps(tiny_zoo: TinyZoo, dest: Path) -> Path:
    tiny_zoo.build("hpsv2")
    target = dest / "xswu" / "HPSv2"
    shutil.copytree(tiny_zoo.root / "xswu" / "HPSv2", target)
    return target


def test_loading_is_strict(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    target = _copy_hps(tiny_zoo, tmp_path)
    ckpt = torch.load(target / "HPS_v2_compressed.pt", weights_only=True)
    del ckpt["state_dict"]["visual.proj"]
    torch.save(ckpt, target / "HPS_v2_compressed.pt")
    with pytest.raises(
        ValueError, match=r"(?s)HPS_v2_compressed\.pt does not match .*Missing key.*visual\.proj"
    ):
        load_model("hpsv2", LoadOptions(weights_dir=str(tmp_path)))
    torch.save({"model": {}}, target / "HPS_v2_compressed.pt")
    with pytest.raises(FileNotFoundError, match="expected a dict with 'state_dict'"):
        load_model("hpsv2", LoadOptions(weights_dir=str(tmp_path)))


def test_architecture_file_is_read_only_if_present(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    target = _copy_hps(tiny_zoo, tmp_path)
    arch, cfg = model_config(target)
    assert arch.endswith("open_clip_config.json") and cfg["embed_dim"] == 16
    (target / "open_clip_config.json").unlink()
    assert model_config(target)[0] == "ViT-H-14"
    # Without it, the tiny checkpoint does not fit ViT-H-14: a loud error, no guessing.
    with pytest.raises(ValueError, match="does not match the open_clip ViT-H-14 architecture"):
        load_model("hpsv2", LoadOptions(weights_dir=str(tmp_path)))
    (target / "open_clip_config.json").write_text(json.dumps({"embed_dim": 16}))
    with pytest.raises(ValueError, match="expected an object with a 'model_cfg' entry"):
        load_model("hpsv2", LoadOptions(weights_dir=str(tmp_path)))
