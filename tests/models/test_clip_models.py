"""PickScore, CLIPScore and the CLIP embedder: each output equals the MODELS.md formula
computed directly from transformers' CLIPModel forward; CLIP's shortest-side resize +
centre crop on images of known geometry; ViT-H/14 key set on the meta device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from divreward.models import _clip_common as clip
from divreward.models.clip_embedder import CLIPEmbedder
from divreward.models.clipscore import CLIPScore
from divreward.models.pickscore import PickScore
from divreward.models.registry import load_model

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red bicycle", "two cats asleep on a sofa", "a lighthouse at dusk", "ramen"]


def _reference_logits(
    model: CLIPModel, proc_dir: Path, images: list[np.ndarray], texts: list[str]
) -> torch.Tensor:
    """The reference computation: processor + tokenizer + CLIPModel.forward, whose
    logits_per_image = logit_scale.exp() * cos(image_i, text_j); diagonal -> (N,)."""
    processor = CLIPImageProcessorPil.from_pretrained(str(proc_dir))
    tokenizer = CLIPTokenizer.from_pretrained(str(proc_dir))
    pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")
    tok = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=tok["input_ids"],
            attention_mask=tok["attention_mask"],
            pixel_values=pixels["pixel_values"],
        )
    return out.logits_per_image.diagonal().double()


def test_pickscore_is_logit_scale_times_cosine(tiny_zoo: TinyZoo) -> None:
    model = tiny_zoo.load("pickscore")
    assert isinstance(model, PickScore)
    images = make_images(4)
    proc_dir = tiny_zoo.root / "laion" / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    expected = _reference_logits(model.bundle.model, proc_dir, images, PROMPTS).numpy()
    np.testing.assert_allclose(model.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    # The tiny twin carries the real checkpoint's logit scale (exp = 100).
    assert clip.logit_scale(model.bundle) == pytest.approx(100.0, rel=1e-5)
    # Flow-GRPO's divisor.
    scaled = load_model("pickscore", tiny_zoo.options("pickscore", options={"scale_divisor": 26}))
    np.testing.assert_allclose(scaled.score(images, PROMPTS), expected / 26, rtol=1e-5)


def test_pickscore_rejects_bad_options(tiny_zoo: TinyZoo) -> None:
    with pytest.raises(ValueError, match=r"'scale_divisor' must be > 0, got 0\.0"):
        load_model("pickscore", tiny_zoo.options("pickscore", options={"scale_divisor": 0}))
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'scale'; valid options: "):
        load_model("pickscore", tiny_zoo.options("pickscore", options={"scale": 26}))
    with pytest.raises(ValueError, match="option 'scale_divisor' must be a float, got str"):
        load_model("pickscore", tiny_zoo.options("pickscore", options={"scale_divisor": "26"}))


@pytest.mark.parametrize(
    ("form", "weight", "prefix"), [("hessel", 2.5, "A photo depicts "), ("torchmetrics", 100, "")]
)
def test_clipscore_forms(tiny_zoo: TinyZoo, form: str, weight: float, prefix: str) -> None:
    model = load_model("clipscore", tiny_zoo.options("clipscore", options={"form": form}))
    assert isinstance(model, CLIPScore)
    images = make_images(4, seed=7)
    proc_dir = tiny_zoo.root / "openai" / "clip-vit-base-patch32"
    logits = _reference_logits(model.bundle.model, proc_dir, images, [prefix + p for p in PROMPTS])
    cos = logits.numpy() / clip.logit_scale(model.bundle)
    expected = weight * np.maximum(cos, 0.0)
    assert expected.max() > 0, "tiny CLIP should give positive cosines (see write_tiny_clip)"
    np.testing.assert_allclose(model.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-6)


def test_clipscore_prefix_is_applied(tiny_zoo: TinyZoo) -> None:
    images = make_images(4, seed=8)
    hessel = tiny_zoo.load("clipscore")
    no_prefix = load_model("clipscore", tiny_zoo.options("clipscore", options={"prefix": ""}))
    with_prefix_by_hand = no_prefix.score(images, ["A photo depicts " + p for p in PROMPTS])
    np.testing.assert_allclose(hessel.score(images, PROMPTS), with_prefix_by_hand, rtol=1e-6)
    assert not np.allclose(hessel.score(images, PROMPTS), no_prefix.score(images, PROMPTS))


def test_clipscore_clamps_negative_cosines_to_zero(tiny_zoo: TinyZoo) -> None:
    model = load_model("clipscore", tiny_zoo.options("clipscore"))  # a private copy
    assert isinstance(model, CLIPScore)
    images = make_images(4, seed=9)
    positive = model.score(images, PROMPTS)
    assert (positive > 0).all()
    with torch.no_grad():
        model.bundle.model.text_projection.weight.neg_()  # cos -> -cos
    np.testing.assert_array_equal(model.score(images, PROMPTS), np.zeros(4))


def test_clip_embedder_is_the_unit_projected_image_embedding(tiny_zoo: TinyZoo) -> None:
    model = tiny_zoo.load("clip_embedder")
    assert isinstance(model, CLIPEmbedder)
    images = make_images(5, seed=10)
    proc = CLIPImageProcessorPil.from_pretrained(
        str(tiny_zoo.root / "openai/clip-vit-base-patch32")
    )
    pixels = proc(images=[Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        vision = model.bundle.model.vision_model(pixel_values=pixels).pooler_output  # (5, 32)
        emb = model.bundle.model.visual_projection(vision)  # (5, 16)
    expected = (emb / emb.norm(dim=-1, keepdim=True)).numpy()
    out = model.embed(images)
    assert out.shape == (5, 16) and model.dim == 16
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _half_white(h: int, w: int, left: bool) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    if left:
        img[:, : w // 2] = 255
    else:
        img[: h // 2] = 255
    return img


@pytest.fixture(scope="module")
def real_clip_processor(tmp_path_factory: pytest.TempPathFactory) -> CLIPImageProcessorPil:
    """The processor exactly as the real checkpoints configure it (224, bicubic, crop)."""
    out = tmp_path_factory.mktemp("clip_proc")
    clip.write_processor(out, side=224)
    return CLIPImageProcessorPil.from_pretrained(str(out))


def test_clip_preprocessing_resizes_shortest_side_and_centre_crops(
    real_clip_processor: CLIPImageProcessorPil,
) -> None:
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    # 100 wide x 50 high, left half white: shortest side 50 -> 224 makes it 448 wide;
    # the centre crop keeps resized columns 112..335 = original columns 25..75, so the
    # crop's left half is white and its right half black, on every row (no padding).
    wide = clip.preprocess(real_clip_processor, [_half_white(50, 100, left=True)])
    assert wide.shape == (1, 3, 224, 224)
    px = (wide[0] * std + mean).mean(dim=0)  # (224, 224) back in [0, 1]
    assert px[:, :108].min() > 0.98 and px[:, 116:].max() < 0.02
    assert 0.3 < float(px[112, 111:113].mean()) < 0.7  # the edge sits at the centre
    # 50 wide x 100 high, top half white: same along the other axis.
    tall = clip.preprocess(real_clip_processor, [_half_white(100, 50, left=False)])
    px = (tall[0] * std + mean).mean(dim=0)
    assert px[:108, :].min() > 0.98 and px[116:, :].max() < 0.02
    # Normalisation: black -> -mean/std per channel.
    np.testing.assert_allclose(
        tall[0, :, 200, 100].numpy(), (-mean / std).flatten().numpy(), rtol=1e-5
    )


def test_tokenizer_truncates_at_77_and_matches_open_clip(tiny_zoo: TinyZoo) -> None:
    import open_clip

    model = tiny_zoo.load("pickscore")
    assert isinstance(model, PickScore)
    text = "a photo of " + "very " * 100 + "big cat, Hello!!"
    ours = model.bundle.tokenizer(
        [text, "a cat"], padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )["input_ids"]
    ref = open_clip.tokenize([text, "a cat"])  # OpenAI CLIP's tokenizer, 77 tokens
    assert ours.shape == (2, 77)
    assert ours[0].tolist() == ref[0].tolist()  # truncated, ends with <eot>
    assert ours[1, :4].tolist() == ref[1, :4].tolist() == [49406, 320, 2368, 49407]


def test_pickscore_vit_h14_key_set_on_meta() -> None:
    """PickScore_v1's architecture (the laion ViT-H/14 config) as transformers builds it:
    910 tensors; the shapes the real checkpoint carries."""
    cfg = CLIPConfig(
        text_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_attention_heads": 16,
            "num_hidden_layers": 32,
            "patch_size": 14,
            "image_size": 224,
        },
        projection_dim=1024,
    )
    with torch.device("meta"):
        model = CLIPModel(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # text: 2 embeddings + 24 layers x 16 + final LN 2; vision: 3 embeddings + pre LN 2
    # + 32 layers x 16 + post LN 2; 2 projections + logit_scale.
    assert len(shapes) == (2 + 24 * 16 + 2) + (3 + 2 + 32 * 16 + 2) + 3 == 910
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 1024)
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1280, 3, 14, 14)
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1280)
    assert shapes["visual_projection.weight"] == (1024, 1280)
    assert shapes["text_projection.weight"] == (1024, 1024)
    assert shapes["vision_model.encoder.layers.31.mlp.fc1.weight"] == (5120, 1280)
    assert shapes["logit_scale"] == ()


def _torchmetrics_text_features(bundle: clip.ClipBundle, texts: list[str]) -> torch.Tensor:
    """torchmetrics' text path (``functional/multimodal/clip_score.py``, ``_get_features``):
    tokenise with padding and no truncation, then cut ``input_ids`` and ``attention_mask``
    to ``max_position_embeddings`` (77): a longer caption loses its end-of-text token."""
    tok = bundle.tokenizer(texts, padding=True, return_tensors="pt")
    n = bundle.model.config.text_config.max_position_embeddings
    with torch.no_grad():
        emb = bundle.model.get_text_features(
            input_ids=tok["input_ids"][..., :n], attention_mask=tok["attention_mask"][..., :n]
        ).pooler_output
    return emb / emb.norm(dim=-1, keepdim=True)


def test_clipscore_torchmetrics_form_keeps_the_end_token_past_77_tokens(
    tiny_zoo: TinyZoo,
) -> None:
    """The documented divergence from torchmetrics: equal up to 77 tokens; beyond, the
    prompt is truncated as CLIP was trained (75 tokens + <eot>, open_clip's tokenize),
    where torchmetrics pools a token-cut sequence that has no <eot>."""
    import open_clip

    model = load_model("clipscore", tiny_zoo.options("clipscore", options={"form": "torchmetrics"}))
    assert isinstance(model, CLIPScore)
    bundle = model.bundle
    short = "a red bicycle"
    long = "a red bicycle " * 30  # 90 word tokens
    assert (
        len(bundle.tokenizer(short)["input_ids"]) <= 77 < len(bundle.tokenizer(long)["input_ids"])
    )
    images = make_images(2, seed=1)
    img = clip.image_features(bundle, images)
    ours = model.score(images, [short, long])

    torchmetrics = (
        100 * (img * _torchmetrics_text_features(bundle, [short, long])).sum(-1)
    ).double()
    torchmetrics = np.maximum(torchmetrics.numpy(), 0.0)  # one image per call: max(mean, 0)
    # up to 77 tokens the two agree
    np.testing.assert_allclose(ours[0], torchmetrics[0], rtol=1e-5, atol=1e-5)

    # beyond: divreward scores the prompt truncated to 77 tokens ending with <eot>...
    ids = open_clip.tokenize([long])  # (1, 77), OpenAI CLIP's truncation
    assert int(ids[0, -1]) == 49407
    with torch.no_grad():
        txt = bundle.model.get_text_features(input_ids=ids).pooler_output
    txt = txt / txt.norm(dim=-1, keepdim=True)
    expected = 100 * max(float((img[1] * txt[0]).sum()), 0.0)
    assert expected > 1.0  # not clamped: the comparison below means something
    np.testing.assert_allclose(ours[1], expected, rtol=1e-5, atol=1e-5)
    # ...which is not torchmetrics' number for it
    assert abs(ours[1] - torchmetrics[1]) > 1.0
