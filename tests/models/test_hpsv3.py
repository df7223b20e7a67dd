"""HPSv3 reimplementation: the reference's input text and resizing, the score as the
formula of MODELS.md recomputed from the underlying modules, sequential (not
multimodal-rope) positions, strict checkpoint loading, and the full-size key set of
``HPSv3.safetensors`` on the meta device (no 16 GB of weights in CI)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images
from safetensors import safe_open
from safetensors.torch import save_file

from divreward.images import ImageError
from divreward.models import hpsv3
from divreward.models._checkpoint import CheckpointMismatchError
from divreward.models.base import LoadOptions
from divreward.models.registry import load_model
from divreward.models.weights import WeightsNotFoundError, copy_into_hub_cache

PROMPTS = ["a red bicycle leaning on a wall", "two cats asleep on a sofa", "a bowl of ramen"]


@pytest.fixture(scope="module")
def model(tiny_zoo: TinyZoo) -> hpsv3.HPSv3:
    m = tiny_zoo.load("hpsv3")
    assert isinstance(m, hpsv3.HPSv3)
    return m


def _tiny_checkpoint(tiny_zoo: TinyZoo) -> Path:
    return tiny_zoo.build("hpsv3") / hpsv3.REPO / hpsv3.WEIGHTS_FILE


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iter)


def _load_from(tiny_zoo: TinyZoo, state: dict[str, torch.Tensor], tmp_path: Path) -> hpsv3.HPSv3:
    """Load a modified checkpoint (the tiny Qwen base files from the tiny directory)."""
    src = tmp_path / "hpsv3_src"
    src.mkdir()
    save_file(state, str(src / hpsv3.WEIGHTS_FILE))
    return hpsv3.load(LoadOptions(source=str(src), weights_dir=str(tiny_zoo.root)))


# ---------------------------------------------------------------------------------------
# The reference's input
# ---------------------------------------------------------------------------------------


def test_instruction_is_the_reference_template_byte_for_byte() -> None:
    text = hpsv3.INSTRUCTION
    assert text.startswith("\nYou are tasked with evaluating a generated image based on Visual")
    # Trailing spaces the model was trained with (hpsv3/dataset/data_collator_qwen.py).
    assert "with 0 being the worst and 10 being the best. \n\n**Visual Quality:**  \n" in text
    assert "should be the lowest possible. \n\n**Text Alignment:**  \nAssess how well" in text
    assert "- **Subject Relevance** Evaluate how accurately" in text  # no colon, as upstream
    assert text.endswith("the original description.\nTextual prompt - {text_prompt}\n\n\n")
    assert text.count("\n- **") == 10
    assert hpsv3.PROMPT_WITH_SPECIAL_TOKEN == (
        "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
    )
    # Pin the whole text: any edit must be deliberate.
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "0393599dad45a971"
    full = hpsv3.instruction_text("a {red} car")
    assert full.endswith(
        "Textual prompt - a {red} car\n\n\n\nPlease provide the overall ratings of this "
        "image: <|Reward|>\n\nEND\n"
    )


def test_rendered_chat_and_tokens(model: hpsv3.HPSv3) -> None:
    """Qwen2-VL chat template with the generation prompt; one image span whose pad
    tokens match the patch grid; exactly one <|Reward|>; right padding."""
    rendered = model.render("a cat")
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>"
        + hpsv3.instruction_text("a cat")
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    images = [model.resize(img, i) for i, img in enumerate(make_images(2))]
    enc = model.encode(images, ["a cat", "a much longer prompt about two cats on a sofa"])
    tok = model.tokenizer
    reward_id = tok.convert_tokens_to_ids(hpsv3.REWARD_TOKEN)
    assert reward_id == model.reward_token_id == len(tok) - 1
    assert model.model.language_model.config.vocab_size == len(tok)
    assert (enc.input_ids == reward_id).sum(dim=1).tolist() == [1, 1]
    n_image = (enc.input_ids == model.model.image_token_id).sum(dim=1)
    assert n_image.tolist() == (enc.image_grid_thw.prod(dim=1) // 4).tolist()
    assert enc.pixel_values.shape == (int(enc.image_grid_thw.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    # Right padding with <|endoftext|>: the short row ends in pads, the long one in none.
    lengths = enc.attention_mask.sum(dim=1)
    assert lengths[0] < lengths[1] == enc.input_ids.shape[1]
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    assert (
        enc.attention_mask[0, : lengths[0]].all() and not enc.attention_mask[0, lengths[0] :].any()
    )
    assert (enc.input_ids[0, lengths[0] :] == pad).all()
    text = tok.decode(enc.input_ids[1][enc.attention_mask[1].bool()])
    assert text.endswith("<|Reward|>\n\nEND\n<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("hw", "pixels", "expected"),
    [
        ((448, 448), hpsv3.PIXELS, (448, 448)),  # 256 visual tokens
        ((512, 768), hpsv3.PIXELS, (364, 532)),  # area above: floor after scaling down
        ((100, 50), hpsv3.PIXELS, (644, 336)),  # area below: ceil after scaling up
        ((48, 48), hpsv3.TINY_PIXELS, (56, 56)),
        ((33, 71), hpsv3.TINY_PIXELS, (56, 84)),
    ],
)
def test_smart_resize_matches_qwen_vl_utils(
    hw: tuple[int, int], pixels: int, expected: tuple[int, int]
) -> None:
    # Hand-computed with qwen_vl_utils' rule, e.g. (512, 768): beta = sqrt(512*768/200704)
    # = 1.3997; floor(512/beta/28)*28 = 13*28 = 364; floor(768/beta/28)*28 = 19*28 = 532.
    assert hpsv3.smart_resize(*hw, 28, pixels, pixels) == expected


def test_extreme_aspect_ratio_is_refused_naming_the_image(model: hpsv3.HPSv3) -> None:
    images = [*make_images(1), np.zeros((2, 500, 3), np.uint8)]
    with pytest.raises(ImageError, match=r"image 1: aspect ratio must be at most 200, got 250"):
        model.score(images, PROMPTS[:2])


def test_prompt_with_a_special_token_is_refused(model: hpsv3.HPSv3) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\] contains the special token '<\|Reward\|>'"):
        model.score(make_images(2), ["a cat", "a dog <|Reward|>"])
    with pytest.raises(
        ValueError, match=r"prompts\[0\] contains the special token '<\|image_pad\|>'"
    ):
        model.score(make_images(1), ["<|image_pad|>"])


# ---------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------


def test_score_is_mu_of_the_head_at_the_reward_token(model: hpsv3.HPSv3) -> None:
    """Recompute the reference's forward step by step from the modules: embed, scatter
    the vision tower's rows into the <|image_pad|> slots (a Python loop, not
    masked_scatter), decode with explicit positions 0..L-1, read the reward token's
    state, apply Linear-ReLU-Linear-ReLU-Linear by hand; score = output[0]."""
    images = make_images(3, seed=7)
    resized = [model.resize(img, i) for i, img in enumerate(images)]
    enc = model.encode(resized, PROMPTS)
    net = model.model
    with torch.no_grad():
        embeds = net.language_model.embed_tokens(enc.input_ids).clone()  # (B, L, H)
        vis = net.visual(enc.pixel_values, grid_thw=enc.image_grid_thw).pooler_output
        row = 0
        for b in range(embeds.shape[0]):
            for pos in range(embeds.shape[1]):
                if enc.input_ids[b, pos] == net.image_token_id:
                    embeds[b, pos] = vis[row]
                    row += 1
        assert row == vis.shape[0]
        length = enc.input_ids.shape[1]
        positions = torch.arange(length).unsqueeze(0).expand(embeds.shape[0], -1)
        hidden = net.language_model(
            inputs_embeds=embeds, attention_mask=enc.attention_mask, position_ids=positions
        ).last_hidden_state
        where = (enc.input_ids == model.reward_token_id).int().argmax(dim=1)
        h = hidden[torch.arange(len(images)), where].float()  # (B, H)
        w0, b0 = net.rm_head[0].weight, net.rm_head[0].bias
        w3, b3 = net.rm_head[3].weight, net.rm_head[3].bias
        w5, b5 = net.rm_head[5].weight, net.rm_head[5].bias
        out = torch.relu(torch.relu(h @ w0.T + b0) @ w3.T + b3) @ w5.T + b5  # (B, 2)
    assert net.rm_head[0].weight.dtype == torch.float32
    pred = model.predict(images, PROMPTS)
    np.testing.assert_allclose(pred, out.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.score(images, PROMPTS), pred[:, 0])


def test_positions_are_sequential_not_multimodal_rope(
    tiny_zoo: TinyZoo, model: hpsv3.HPSv3
) -> None:
    """transformers' own Qwen2VLModel, given our weights and explicit sequential
    position ids, reproduces our hidden states; left to its multimodal rope indices
    (the transformers default) it gives different numbers, which the reference never
    used."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    net = model.model
    config = hpsv3.read_config(tiny_zoo.root / hpsv3.BASE_REPO / "config.json")
    config.text_config.vocab_size = net.language_model.config.vocab_size
    full = Qwen2VLModel(config).float().eval()  # config.json says bf16: compare in fp32
    state = {f"visual.{k}": v for k, v in net.visual.state_dict().items()}
    state |= {f"language_model.{k}": v for k, v in net.language_model.state_dict().items()}
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k or "inv_freq" in k for k in missing)

    originals = make_images(2, seed=8)
    images = [model.resize(img, i) for i, img in enumerate(originals)]
    enc = model.encode(images, PROMPTS[:2])
    where = (enc.input_ids == model.reward_token_id).int().argmax(dim=1)
    rows = torch.arange(2)
    kwargs = {
        "input_ids": enc.input_ids,
        "attention_mask": enc.attention_mask,
        "pixel_values": enc.pixel_values,
        "image_grid_thw": enc.image_grid_thw,
    }
    with torch.no_grad():
        ours = net.rm_head(hidden_at(net, enc)[rows, where].float())[:, 0]
        seq = torch.arange(enc.input_ids.shape[1]).expand(2, -1)
        h_seq = full(**kwargs, position_ids=seq).last_hidden_state[rows, where]
        # image tokens are type 1 (video 2), as the processor marks them
        mm_types = (enc.input_ids == net.image_token_id).int()
        h_mrope = full(**kwargs, mm_token_type_ids=mm_types).last_hidden_state[rows, where]
        via_seq = net.rm_head(h_seq.float())[:, 0]
        via_mrope = net.rm_head(h_mrope.float())[:, 0]
    np.testing.assert_allclose(via_seq.numpy(), ours.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(via_mrope.numpy(), ours.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        model.score(originals, PROMPTS[:2]), ours.double().numpy(), rtol=1e-5
    )


def hidden_at(net: hpsv3.HPSv3RewardModel, enc: hpsv3.Encoded) -> torch.Tensor:
    """The decoder's last hidden states ``(B, L, H)`` through the module's own path."""
    embeds = net.language_model.embed_tokens(enc.input_ids)
    vis = net.visual(enc.pixel_values, grid_thw=enc.image_grid_thw).pooler_output
    mask = (enc.input_ids == net.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, vis)
    return net.language_model(
        inputs_embeds=embeds, attention_mask=enc.attention_mask
    ).last_hidden_state


def test_scores_pair_with_prompts_in_batch_order(model: hpsv3.HPSv3) -> None:
    img = make_images(1, seed=9)[0]
    a, b = model.score([img, img], ["a red car", "a bowl of soup"])
    assert abs(a - b) > 1e-6, "the prompt must change the score"
    images = make_images(3, seed=10)
    whole = model.score(images, PROMPTS)
    reversed_ = model.score(images[::-1], PROMPTS[::-1])
    np.testing.assert_allclose(reversed_[::-1], whole, rtol=1e-4, atol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(
            model.score([images[i]], [PROMPTS[i]])[0], whole[i], rtol=1e-4, atol=1e-6
        )


def test_chunking_by_pixels_gives_the_same_scores(tiny_zoo: TinyZoo, model: hpsv3.HPSv3) -> None:
    images = make_images(5, seed=11)
    prompts = [*PROMPTS, "a fox", "a bee"]
    small = load_model("hpsv3", tiny_zoo.options("hpsv3", options={"max_batch_pixels": 2 * 3136}))
    assert small.max_batch_pixels == 2 * 3136  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        small.score(images, prompts), model.score(images, prompts), rtol=1e-4, atol=1e-6
    )


def test_bf16_keeps_the_head_in_fp32(tiny_zoo: TinyZoo, model: hpsv3.HPSv3) -> None:
    """dtype applies to the vision tower and decoder only; the head stays fp32 (as the
    reference's rm_head.to(float32)); bf16 scores stay near the fp32 ones."""
    m = load_model("hpsv3", tiny_zoo.options("hpsv3", dtype="bfloat16"))
    assert m.info.dtype == "bfloat16"
    net = m.model  # type: ignore[attr-defined]
    assert net.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    assert net.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in net.rm_head.parameters()} == {torch.float32}
    images = make_images(4, seed=12)
    prompts = [*PROMPTS, "a fox"]
    ref = model.score(images, prompts)
    got = m.score(images, prompts)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref, atol=0.02 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------
# Strict loading and weight resolution
# ---------------------------------------------------------------------------------------


def test_checkpoint_is_in_the_445_layout(tiny_zoo: TinyZoo) -> None:
    with safe_open(str(_tiny_checkpoint(tiny_zoo)), framework="pt") as fh:
        keys = set(fh.keys())
        dtypes = {k: fh.get_slice(k).get_dtype() for k in keys}
    assert {k.split(".")[0] for k in keys} == {"visual", "model", "lm_head", "rm_head"}
    assert {k for k in keys if k.startswith("rm_head.")} == {
        f"rm_head.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")
    }
    assert "model.embed_tokens.weight" in keys and "model.layers.1.mlp.up_proj.weight" in keys
    assert dtypes["rm_head.0.weight"] == "F32" and dtypes["model.norm.weight"] == "BF16"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop", r"missing keys \(1\): visual\.blocks\.1\.attn\.qkv\.weight"),
        ("extra", r"unexpected keys \(1\): rm_head\.7\.weight"),
        (
            "shape",
            r"shape mismatches \(1\): rm_head\.5\.weight: checkpoint \(3, 16\) vs model \(2, 16\)",
        ),
        ("drop_lm_head", r"missing keys \(1\): lm_head\.weight"),
    ],
)
def test_strict_loading_names_the_offending_key(
    tiny_zoo: TinyZoo, tmp_path: Path, edit: str, message: str
) -> None:
    state = _read(_tiny_checkpoint(tiny_zoo))
    if edit == "drop":
        del state["visual.blocks.1.attn.qkv.weight"]
    elif edit == "extra":
        state["rm_head.7.weight"] = torch.zeros(2, 2)
    elif edit == "shape":
        state["rm_head.5.weight"] = torch.zeros(3, 16)
    else:
        del state["lm_head.weight"]
    with pytest.raises(CheckpointMismatchError, match=message) as err:
        _load_from(tiny_zoo, state, tmp_path)
    assert "does not match the HPSv3 architecture" in str(err.value)


def test_the_452_key_layout_loads_to_the_same_scores(
    tiny_zoo: TinyZoo, model: hpsv3.HPSv3, tmp_path: Path
) -> None:
    state = _read(_tiny_checkpoint(tiny_zoo))
    renamed = {}
    for k, v in state.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k.removeprefix("model.")
        renamed[k] = v
    other = _load_from(tiny_zoo, renamed, tmp_path)
    images = make_images(2, seed=13)
    np.testing.assert_array_equal(
        other.score(images, PROMPTS[:2]), model.score(images, PROMPTS[:2])
    )


def test_missing_weights_name_the_files(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"MizzenAI/HPSv3.*HPSv3\.safetensors"):
        load_model("hpsv3", LoadOptions(weights_dir=str(empty)))
    # Weights present but the Qwen base files missing: named, with how to get them.
    shutil.copytree(tiny_zoo.build("hpsv3") / hpsv3.REPO, empty / hpsv3.REPO)
    with pytest.raises(
        WeightsNotFoundError, match=r"Qwen/Qwen2-VL-7B-Instruct.*config\.json"
    ) as err:
        load_model("hpsv3", LoadOptions(weights_dir=str(empty)))
    # the exact command: `hpsv3`'s pull fetches only the base's small files (hub_files)
    assert f"`divreward weights pull hpsv3 --weights-dir {empty}`" in str(err.value)
    ((_, main), (base, small)) = hpsv3.hub_files(LoadOptions())
    assert main == [hpsv3.WEIGHTS_FILE] and base == hpsv3.BASE_REPO
    assert not any(p.endswith((".safetensors", ".bin")) for p in small)


def test_hub_ids_resolve_through_the_hf_cache_offline(
    tiny_zoo: TinyZoo, model: hpsv3.HPSv3, tmp_path: Path
) -> None:
    """The real profile's configuration: MizzenAI/HPSv3 and Qwen/Qwen2-VL-7B-Instruct
    found by huggingface_hub in its cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    copy_into_hub_cache(tiny_zoo.root / hpsv3.REPO, cache, hpsv3.REPO, "a" * 40)
    copy_into_hub_cache(tiny_zoo.root / hpsv3.BASE_REPO, cache, hpsv3.BASE_REPO, "b" * 40)
    m = load_model("hpsv3", LoadOptions(cache_dir=str(cache)))
    assert (m.info.source, m.info.revision, m.info.profile) == (hpsv3.REPO, "a" * 40, "real")
    assert m.info.weights_hash == model.info.weights_hash
    images = make_images(2, seed=15)
    np.testing.assert_array_equal(m.score(images, PROMPTS[:2]), model.score(images, PROMPTS[:2]))


def test_unknown_option_is_refused(tiny_zoo: TinyZoo) -> None:
    with pytest.raises(ValueError, match=r"hpsv3: unknown option\(s\) 'pixel'"):
        load_model("hpsv3", tiny_zoo.options("hpsv3", options={"pixel": 10}))


def test_tiny_build_is_deterministic(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    hpsv3.build_tiny(tmp_path, seed=0)
    root = tiny_zoo.build("hpsv3")
    for rel in (
        f"{hpsv3.REPO}/{hpsv3.WEIGHTS_FILE}",
        f"{hpsv3.BASE_REPO}/tokenizer.json",
        f"{hpsv3.BASE_REPO}/config.json",
    ):
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
    hpsv3.build_tiny(tmp_path / "seed1", seed=1)
    weights = f"{hpsv3.REPO}/{hpsv3.WEIGHTS_FILE}"
    assert (tmp_path / "seed1" / weights).read_bytes() != (root / weights).read_bytes()


# ---------------------------------------------------------------------------------------
# Full size, on the meta device
# ---------------------------------------------------------------------------------------

# Qwen/Qwen2-VL-7B-Instruct config.json (the hub's flat form).
QWEN2_VL_7B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
# Qwen2-VL's 151657 tokens + <|Reward|>: the reference's resize_token_embeddings.
HPSV3_VOCAB = 151658


def hpsv3_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of HPSv3.safetensors, written out from Qwen2-VL-7B's architecture
    in transformers 4.45 (Qwen2VLForConditionalGeneration: visual / model / lm_head)
    plus Qwen2VLRewardModelBT's ranknet head."""
    h, v, inter, e = 3584, HPSV3_VOCAB, 18944, 1280
    kv = 4 * (3584 // 28)  # 4 key-value heads of 128
    keys: dict[str, tuple[int, ...]] = {"visual.patch_embed.proj.weight": (e, 3, 2, 14, 14)}
    for b in range(32):
        p = f"visual.blocks.{b}."
        keys |= {
            p + "norm1.weight": (e,),
            p + "norm1.bias": (e,),
            p + "norm2.weight": (e,),
            p + "norm2.bias": (e,),
            p + "attn.qkv.weight": (3 * e, e),
            p + "attn.qkv.bias": (3 * e,),
            p + "attn.proj.weight": (e, e),
            p + "attn.proj.bias": (e,),
            p + "mlp.fc1.weight": (4 * e, e),
            p + "mlp.fc1.bias": (4 * e,),
            p + "mlp.fc2.weight": (e, 4 * e),
            p + "mlp.fc2.bias": (e,),
        }
    keys |= {
        "visual.merger.ln_q.weight": (e,),
        "visual.merger.ln_q.bias": (e,),
        "visual.merger.mlp.0.weight": (4 * e, 4 * e),
        "visual.merger.mlp.0.bias": (4 * e,),
        "visual.merger.mlp.2.weight": (h, 4 * e),
        "visual.merger.mlp.2.bias": (h,),
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
        "rm_head.0.weight": (1024, h),
        "rm_head.0.bias": (1024,),
        "rm_head.3.weight": (16, 1024),
        "rm_head.3.bias": (16,),
        "rm_head.5.weight": (2, 16),
        "rm_head.5.bias": (2,),
    }
    for n in range(28):
        p = f"model.layers.{n}."
        keys |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return keys


def test_full_size_key_set_on_the_meta_device(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN2_VL_7B_CONFIG))
    config = hpsv3.read_config(path, HPSV3_VOCAB)
    model = hpsv3.build_meta_model(config)
    assert all(p.is_meta for p in model.parameters())
    got = hpsv3.expected_checkpoint_shapes(model, HPSV3_VOCAB)
    want = hpsv3_checkpoint_shapes()
    assert len(want) == 736
    assert sorted(set(got) ^ set(want)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    # The parameters the scorer holds: ~7.75e9 (the 7B backbone with the 151658-row
    # embedding, without lm_head), every one of them read from the checkpoint.
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(int(np.prod(s)) for k, s in want.items() if k != "lm_head.weight")
    assert 7.7e9 < n_params < 7.8e9
    for key in want:
        assert hpsv3.checkpoint_key(hpsv3.module_key(key, "4.45") or key) == key


def test_full_size_load_path_on_meta_checks_every_key(tmp_path: Path) -> None:
    """The strict check runs before any tensor is read: a full-size file whose header
    lacks one key is refused, naming it (a header-only check, nothing materialised)."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(QWEN2_VL_7B_CONFIG))
    model = hpsv3.build_meta_model(hpsv3.read_config(config_path, HPSV3_VOCAB))
    want = hpsv3_checkpoint_shapes()
    from divreward.models._checkpoint import check_keys_and_shapes

    found = dict(want)
    del found["model.layers.27.mlp.down_proj.weight"]
    with pytest.raises(
        CheckpointMismatchError, match=r"missing keys \(1\): model\.layers\.27\.mlp"
    ):
        check_keys_and_shapes(
            hpsv3.expected_checkpoint_shapes(model, HPSV3_VOCAB), found, model="HPSv3", path="x"
        )


def test_options_round_trip_in_info(tiny_zoo: TinyZoo) -> None:
    opts = tiny_zoo.options("hpsv3", options={"max_batch": 2})
    m = load_model("hpsv3", opts)
    assert m.info.options == {"max_batch": 2}
    again = load_model("hpsv3", replace(opts, options=m.info.options))
    images = make_images(3, seed=14)
    np.testing.assert_array_equal(again.score(images, PROMPTS), m.score(images, PROMPTS))
