"""ImageReward reimplementation: the standardised MLP score recomputed from the
underlying BLIP modules, the vision tower against timm's ViT loaded with the original
keys, the reference's preprocessing and tokenization, strict loading of the original
key layout, and the full-size key set of ``ImageReward.pt`` on the meta device."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images
from PIL import Image

from divreward.images import ImageError
from divreward.models import imagereward as ir
from divreward.models._checkpoint import CheckpointMismatchError
from divreward.models.base import LoadOptions
from divreward.models.registry import load_model
from divreward.models.weights import WeightsNotFoundError, copy_into_hub_cache

PROMPTS = ["a red bicycle leaning on a wall", "two cats asleep on a sofa", "a bowl of ramen"]
GREEN = np.array(
    [
        (0.0 - 0.48145466) / 0.26862954,
        (1.0 - 0.4578275) / 0.26130258,
        (0.0 - 0.40821073) / 0.27577711,
    ]
)


@pytest.fixture(scope="module")
def model(tiny_zoo: TinyZoo) -> ir.ImageReward:
    m = tiny_zoo.load("imagereward")
    assert isinstance(m, ir.ImageReward)
    return m


def _checkpoint(tiny_zoo: TinyZoo) -> Path:
    return tiny_zoo.build("imagereward") / ir.REPO / ir.WEIGHTS_FILE


def _load_from(tiny_zoo: TinyZoo, state: dict[str, torch.Tensor], tmp_path: Path) -> ir.ImageReward:
    """Load a modified ImageReward.pt (med_config and tiny vision config copied)."""
    src = tmp_path / "imagereward_src"
    shutil.copytree(tiny_zoo.build("imagereward") / ir.REPO, src)
    torch.save(state, str(src / ir.WEIGHTS_FILE))
    return ir.load(LoadOptions(source=str(src), weights_dir=str(tiny_zoo.root)))


# ---------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------


def test_score_is_the_standardised_mlp_of_the_first_text_state(model: ir.ImageReward) -> None:
    """(mlp(text_hidden[:, 0]) - 0.16717362830052426) / 1.0333394966054072, with the MLP
    applied by hand as five affine maps without activations."""
    images = make_images(3, seed=20)
    pixels = model.pixel_values(images)
    ids, mask = model.tokens(PROMPTS)
    net = model.model
    with torch.no_grad():
        image_embeds = net.vision(pixels).last_hidden_state  # (3, 1 + 49, 64)
        hidden = net.text(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
        ).last_hidden_state
        x = hidden[:, 0].double()
        for i in (0, 2, 4, 6, 7):  # Linear layers; 1, 3, 5 are dropouts
            x = x @ net.mlp[i].weight.double().T + net.mlp[i].bias.double()
        expected = ((x.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072).numpy()
    assert not any(isinstance(m, torch.nn.ReLU | torch.nn.GELU) for m in net.mlp)
    np.testing.assert_allclose(model.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-6)


def test_text_self_attention_is_bidirectional(model: ir.ImageReward) -> None:
    """BLIP's multimodal encoder attends both ways: the first token's state depends on
    the words after it (a causal mask would make it prompt-independent)."""
    img = make_images(1, seed=21)[0]
    a, b = model.score([img, img], ["a red car", "a red bicycle"])
    assert abs(a - b) > 1e-6


def test_vision_tower_equals_timm_vit_with_the_original_keys(
    tiny_zoo: TinyZoo, model: ir.ImageReward
) -> None:
    """BLIP's ViT is timm's VisionTransformer: load the checkpoint's original
    ``blip.visual_encoder.*`` tensors into timm (strict) and compare token states with
    transformers' BlipVisionModel fed through the rename."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = ir.TINY_VISION
    vit = VisionTransformer(
        img_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["hidden_size"],
        depth=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_ratio=cfg["intermediate_size"] / cfg["hidden_size"],
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0,
        global_pool="",
    ).eval()
    state = torch.load(str(_checkpoint(tiny_zoo)), weights_only=True)
    prefix = "blip.visual_encoder."
    vit.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    )
    pixels = model.pixel_values(make_images(2, seed=22))
    with torch.no_grad():
        ref = vit.forward_features(pixels)  # (2, 50, 64), after the final norm
        ours = model.model.vision(pixels).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_scores_pair_with_prompts_in_batch_order(model: ir.ImageReward) -> None:
    images = make_images(3, seed=23)
    whole = model.score(images, PROMPTS)
    np.testing.assert_allclose(
        model.score(images[::-1], PROMPTS[::-1])[::-1], whole, rtol=1e-5, atol=1e-6
    )
    swapped = model.score(images[:2], PROMPTS[1::-1])
    assert not np.allclose(swapped, whole[:2])
    np.testing.assert_allclose(
        swapped[0], model.score([images[0]], [PROMPTS[1]])[0], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------------------
# Preprocessing and tokenization
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("portrait", [True, False])
def test_shorter_side_resize_then_centre_crop(model: ir.ImageReward, portrait: bool) -> None:
    """A 300x150 image (or 150x300) whose middle half along the long side is green and
    the outer quarters red: Resize(224) of the shorter side makes it 448x224 and
    CenterCrop(224) keeps exactly the green middle, normalised with the CLIP mean/std."""
    img = np.zeros((300, 150, 3), np.uint8)
    img[:, :, 0] = 255
    img[75:225] = (0, 255, 0)
    if not portrait:
        img = np.ascontiguousarray(img.transpose(1, 0, 2))
    px = model.pixel_values([img])[0].numpy()  # (3, 224, 224)
    assert px.shape == (3, 224, 224)
    inner = px[:, 4:-4, :] if portrait else px[:, :, 4:-4]  # bicubic ringing at the seams
    np.testing.assert_allclose(inner, np.broadcast_to(GREEN[:, None, None], inner.shape), atol=0.05)
    # A square image is only resized (bicubic), never cropped: a uniform one stays uniform.
    flat = model.pixel_values([np.full((50, 50, 3), (0, 255, 0), np.uint8)])[0].numpy()
    np.testing.assert_allclose(flat, np.broadcast_to(GREEN[:, None, None], flat.shape), atol=1e-5)


def test_tokens_are_cls_first_padded_to_35(model: ir.ImageReward) -> None:
    tok = model.tokenizer
    ids, mask = model.tokens(["a red bicycle", "a " * 60])
    assert ids.shape == mask.shape == (2, 35)
    cls, sep, pad = tok.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]"])
    # [CLS] stays at position 0: the reference's score() does not put [ENC] there.
    assert ids[:, 0].tolist() == [cls, cls]
    assert tok.convert_ids_to_tokens(ids[0][:5].tolist()) == [
        "[CLS]",
        "a",
        "red",
        "bicycle",
        "[SEP]",
    ]
    assert mask[0].tolist() == [1] * 5 + [0] * 30 and (ids[0, 5:] == pad).all()
    # A long prompt is cut to 35 tokens, ending in [SEP] (as the reference truncates).
    assert mask[1].all() and ids[1, -1] == sep
    # [DEC] (bos) and [ENC] follow the BERT vocabulary, as in BLIP's init_tokenizer.
    n = len(tok)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n - 2, n - 1]
    assert tok.bos_token == "[DEC]" and n == model.model.text.config.vocab_size


def test_grayscale_rgba_and_16_bit_follow_the_documented_conversion(model: ir.ImageReward) -> None:
    rng = np.random.default_rng(24)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    rgb_of_grey = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb_of_grey, np.full((40, 40, 1), 255, np.uint8)], axis=2)
    deep = grey.astype(np.uint16) << 8
    scores = model.score([grey, Image.fromarray(rgba), deep, rgb_of_grey], ["a cat"] * 4)
    np.testing.assert_allclose(scores, scores[3], rtol=1e-6, atol=1e-7)


def test_unreadable_and_truncated_files_name_the_image(
    model: ir.ImageReward, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(make_images(1)[0]).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"truncated\.png.*image 1: cannot be decoded"):
        model.score([str(good), str(truncated)], ["a", "b"])
    with pytest.raises(ImageError, match=r"image 0: cannot read file .*missing\.png"):
        model.score([str(tmp_path / "missing.png")], ["a"])


# ---------------------------------------------------------------------------------------
# Strict loading and weight resolution
# ---------------------------------------------------------------------------------------


def test_checkpoint_is_in_the_original_layout(tiny_zoo: TinyZoo) -> None:
    state = torch.load(str(_checkpoint(tiny_zoo)), weights_only=True)
    tops = {k.split(".")[0] + "." + k.split(".")[1] for k in state}
    assert tops == {
        "blip.visual_encoder",
        "blip.text_encoder",
        "blip.vision_proj",
        "blip.text_proj",
        "mlp.layers",
    }
    assert {k for k in state if k.startswith("mlp.")} == {
        f"mlp.layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    }
    assert "blip.visual_encoder.blocks.1.attn.proj.weight" in state
    assert "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight" in state


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop", r"missing keys \(1\): blip\.visual_encoder\.blocks\.1\.attn\.qkv\.weight"),
        ("extra", r"unexpected keys \(1\): blip\.itm_head\.weight"),
        (
            "shape",
            r"shape mismatches \(1\): mlp\.layers\.7\.weight: "
            r"checkpoint \(2, 16\) vs model \(1, 16\)",
        ),
        ("drop_proj", r"missing keys \(1\): blip\.text_proj\.weight"),
        ("position_ids", r"blip\.text_encoder\.embeddings\.position_ids is not 0\.\.63"),
    ],
)
def test_strict_loading_names_the_offending_key(
    tiny_zoo: TinyZoo, tmp_path: Path, edit: str, message: str
) -> None:
    state = torch.load(str(_checkpoint(tiny_zoo)), weights_only=True)
    if edit == "drop":
        del state["blip.visual_encoder.blocks.1.attn.qkv.weight"]
    elif edit == "extra":
        state["blip.itm_head.weight"] = torch.zeros(2, 32)
    elif edit == "shape":
        state["mlp.layers.7.weight"] = torch.zeros(2, 16)
    elif edit == "drop_proj":
        del state["blip.text_proj.weight"]
    else:
        state["blip.text_encoder.embeddings.position_ids"] = torch.zeros(1, 64, dtype=torch.long)
    with pytest.raises(CheckpointMismatchError, match=message):
        _load_from(tiny_zoo, state, tmp_path)


def test_position_ids_buffer_is_optional(
    tiny_zoo: TinyZoo, model: ir.ImageReward, tmp_path: Path
) -> None:
    state = torch.load(str(_checkpoint(tiny_zoo)), weights_only=True)
    del state["blip.text_encoder.embeddings.position_ids"]
    other = _load_from(tiny_zoo, state, tmp_path)
    images = make_images(2, seed=25)
    np.testing.assert_array_equal(
        other.score(images, PROMPTS[:2]), model.score(images, PROMPTS[:2])
    )


def test_a_pickled_object_is_not_executed(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    """ImageReward.pt is read with weights_only=True: anything but tensors is refused."""
    src = tmp_path / "evil"
    shutil.copytree(tiny_zoo.build("imagereward") / ir.REPO, src)
    torch.save({"x": partial(print, "pwned")}, str(src / ir.WEIGHTS_FILE))
    with pytest.raises(
        CheckpointMismatchError, match=r"cannot read .*ImageReward\.pt as a weights-only"
    ):
        ir.load(LoadOptions(source=str(src), weights_dir=str(tiny_zoo.root)))


def test_missing_weights_name_the_files(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"THUDM/ImageReward.*ImageReward\.pt"):
        load_model("imagereward", LoadOptions(weights_dir=str(empty)))
    shutil.copytree(tiny_zoo.build("imagereward") / ir.REPO, empty / ir.REPO)
    with pytest.raises(WeightsNotFoundError, match=r"google-bert/bert-base-uncased.*vocab\.txt"):
        load_model("imagereward", LoadOptions(weights_dir=str(empty)))


def test_hub_ids_resolve_through_the_hf_cache_offline(
    tiny_zoo: TinyZoo, model: ir.ImageReward, tmp_path: Path
) -> None:
    """The real profile's configuration: THUDM/ImageReward and
    google-bert/bert-base-uncased found by huggingface_hub in its cache, offline."""
    cache = tmp_path / "hub"
    copy_into_hub_cache(tiny_zoo.root / ir.REPO, cache, ir.REPO, "c" * 40)
    copy_into_hub_cache(tiny_zoo.root / ir.TOKENIZER_REPO, cache, ir.TOKENIZER_REPO, "d" * 40)
    m = load_model("imagereward", LoadOptions(cache_dir=str(cache)))
    assert (m.info.source, m.info.revision, m.info.profile) == (ir.REPO, "c" * 40, "real")
    images = make_images(2, seed=26)
    np.testing.assert_array_equal(m.score(images, PROMPTS[:2]), model.score(images, PROMPTS[:2]))


def test_tokenizer_must_match_the_text_vocabulary(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    src = tmp_path / "ir"
    shutil.copytree(tiny_zoo.build("imagereward") / ir.REPO, src)
    med = json.loads((src / ir.MED_CONFIG).read_text())
    med["vocab_size"] += 1
    (src / ir.MED_CONFIG).write_text(json.dumps(med))
    with pytest.raises(
        ValueError, match=r"has \d+ tokens with \[DEC\] and \[ENC\] but .*vocab_size"
    ):
        ir.load(LoadOptions(source=str(src), weights_dir=str(tiny_zoo.root)))


def test_tiny_build_is_deterministic(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    ir.build_tiny(tmp_path, seed=0)
    root = tiny_zoo.build("imagereward")
    mine = torch.load(str(tmp_path / ir.REPO / ir.WEIGHTS_FILE), weights_only=True)
    ref = torch.load(str(root / ir.REPO / ir.WEIGHTS_FILE), weights_only=True)
    assert mine.keys() == ref.keys()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    for rel in (f"{ir.REPO}/{ir.MED_CONFIG}", f"{ir.TOKENIZER_REPO}/vocab.txt"):
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
    ir.build_tiny(tmp_path / "seed1", seed=1)
    other = torch.load(str(tmp_path / "seed1" / ir.REPO / ir.WEIGHTS_FILE), weights_only=True)
    key = "blip.visual_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(other[key], ref[key]), "the tiny weights must depend on the seed"


# ---------------------------------------------------------------------------------------
# Full size, on the meta device
# ---------------------------------------------------------------------------------------

# THUDM/ImageReward med_config.json (BLIP's BERT-base config with cross-attention).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,  # BLIP_Pretrain overrides it with the vision width (1024)
    "add_cross_attention": True,
}


def imagereward_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ImageReward.pt, written out from the reference modules: BLIP's
    ``VisionTransformer`` (ViT-L/16 at 224), ``BertModel(add_pooling_layer=False)`` of
    med.py with cross-attention to the 1024-wide image tokens, BLIP_Pretrain's two
    projections and the 5-Linear MLP (``position_ids`` aside: optional)."""
    v, t, ff = 1024, 768, 3072
    keys: dict[str, tuple[int, ...]] = {
        "blip.visual_encoder.cls_token": (1, 1, v),
        "blip.visual_encoder.pos_embed": (1, 197, v),
        "blip.visual_encoder.patch_embed.proj.weight": (v, 3, 16, 16),
        "blip.visual_encoder.patch_embed.proj.bias": (v,),
        "blip.visual_encoder.norm.weight": (v,),
        "blip.visual_encoder.norm.bias": (v,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, t),
        "blip.text_encoder.embeddings.position_embeddings.weight": (512, t),
        "blip.text_encoder.embeddings.LayerNorm.weight": (t,),
        "blip.text_encoder.embeddings.LayerNorm.bias": (t,),
        "blip.vision_proj.weight": (256, v),
        "blip.vision_proj.bias": (256,),
        "blip.text_proj.weight": (256, t),
        "blip.text_proj.bias": (256,),
    }
    for b in range(24):
        p = f"blip.visual_encoder.blocks.{b}."
        keys |= {
            p + "norm1.weight": (v,),
            p + "norm1.bias": (v,),
            p + "attn.qkv.weight": (3 * v, v),
            p + "attn.qkv.bias": (3 * v,),
            p + "attn.proj.weight": (v, v),
            p + "attn.proj.bias": (v,),
            p + "norm2.weight": (v,),
            p + "norm2.bias": (v,),
            p + "mlp.fc1.weight": (4 * v, v),
            p + "mlp.fc1.bias": (4 * v,),
            p + "mlp.fc2.weight": (v, 4 * v),
            p + "mlp.fc2.bias": (v,),
        }
    for n in range(12):
        p = f"blip.text_encoder.encoder.layer.{n}."
        for att, kv_width in (("attention", t), ("crossattention", v)):
            keys |= {
                f"{p}{att}.self.query.weight": (t, t),
                f"{p}{att}.self.query.bias": (t,),
                f"{p}{att}.self.key.weight": (t, kv_width),
                f"{p}{att}.self.key.bias": (t,),
                f"{p}{att}.self.value.weight": (t, kv_width),
                f"{p}{att}.self.value.bias": (t,),
                f"{p}{att}.output.dense.weight": (t, t),
                f"{p}{att}.output.dense.bias": (t,),
                f"{p}{att}.output.LayerNorm.weight": (t,),
                f"{p}{att}.output.LayerNorm.bias": (t,),
            }
        keys |= {
            p + "intermediate.dense.weight": (ff, t),
            p + "intermediate.dense.bias": (ff,),
            p + "output.dense.weight": (t, ff),
            p + "output.dense.bias": (t,),
            p + "output.LayerNorm.weight": (t,),
            p + "output.LayerNorm.bias": (t,),
        }
    for i, (out_f, in_f) in zip(
        (0, 2, 4, 6, 7), ((1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)), strict=True
    ):
        keys[f"mlp.layers.{i}.weight"] = (out_f, in_f)
        keys[f"mlp.layers.{i}.bias"] = (out_f,)
    return keys


def test_full_size_key_set_on_the_meta_device(tmp_path: Path) -> None:
    vcfg = ir.vision_config(tmp_path)  # no tiny config file here: BLIP ViT-L/16
    assert (vcfg.hidden_size, vcfg.num_hidden_layers, vcfg.patch_size, vcfg.layer_norm_eps) == (
        1024,
        24,
        16,
        1e-6,
    )
    tcfg = ir.text_config(MED_CONFIG, vcfg.hidden_size, bos_token_id=30522)
    with torch.device("meta"):
        model = ir.ImageRewardModel(vcfg, tcfg)
    got = ir.expected_checkpoint_shapes(model)
    want = imagereward_checkpoint_shapes()
    assert len(want) == 624
    assert sorted(set(got) ^ set(want)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    for key in want:  # the rename is a bijection on the real key set
        if key.startswith(("blip.vision_proj", "blip.text_proj")):
            assert ir.module_key(key) is None
        else:
            assert ir.checkpoint_key(ir.module_key(key) or "") == key
