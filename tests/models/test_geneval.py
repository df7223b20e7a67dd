"""The GenEval scorer's glue on its tiny twin (random Mask2Former + random CLIP through
the real loaders): detections are the image processor's own instance post-processing of
the detector's outputs, the colour classifier is clip_benchmark's zero-shot formula on
GenEval's masked crops, and the decisions are the rule engine's on those detections
(the rules themselves: tests/models/test_geneval_rules.py)."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images

from divreward.models import _clip_common as clip
from divreward.models import geneval
from divreward.models import geneval_rules as rules
from divreward.models.base import LoadOptions, MetadataError
from divreward.models.registry import load_model

PROMPTS = ["a photo of a car", "a photo of two cars", "a photo of a person"]
META = [
    {"tag": "single_object", "include": [{"class": "car", "count": 1}]},
    {"tag": "color_attr", "include": [
        {"class": "car", "count": 2, "color": "red"}, {"class": "person", "count": 1}]},
    {"tag": "position", "include": [
        {"class": "car", "count": 1}, {"class": "person", "count": 1, "position": ["above", 0]}]},
]  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_zoo: TinyZoo) -> geneval.GenEval:
    m = tiny_zoo.load("geneval")
    assert isinstance(m, geneval.GenEval)
    return m


def _hand_detections(model: geneval.GenEval, image: np.ndarray) -> dict:
    inputs = model.processor(images=[image.copy()], return_tensors="pt")
    with torch.no_grad():
        out = model.detector(**inputs)
    res = model.processor.post_process_instance_segmentation(
        out, threshold=0.0, target_sizes=[image.shape[:2]], return_binary_maps=True
    )[0]
    return res


def test_detections_are_the_processors_instance_post_processing(
    model: geneval.GenEval,
) -> None:
    images = make_images(4, seed=7)
    got = model.detect(images)
    kept_any = 0
    for image, det in zip(images, got, strict=True):
        res = _hand_detections(model, image)
        info = res["segments_info"]
        np.testing.assert_array_equal(det["labels"], [s["label_id"] for s in info])
        np.testing.assert_array_equal(det["scores"], [s["score"] for s in info])
        masks = res["segmentation"].numpy() > 0.5
        np.testing.assert_array_equal(det["masks"], masks)
        assert det["masks"].shape[1:] == image.shape[:2]
        for box, mask in zip(det["boxes"], masks, strict=True):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept_any += int((det["scores"] > rules.THRESHOLD).sum())
    # the tiny twin's detections pass GenEval's threshold: the tests below are not void
    assert kept_any > 0


def test_masked_crop_is_geneval_composite_on_grey() -> None:
    image = np.full((6, 8, 3), 200, np.uint8)
    image[2, 3] = (10, 20, 30)
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:5] = True
    mask[2, 2] = False
    crop = geneval.masked_crop(image, rules.Obj(np.array([2.0, 1.0, 5.0, 4.0]), 0.9, mask))
    assert crop.shape == (3, 3, 3)
    np.testing.assert_array_equal(crop[1, 1], (10, 20, 30))  # inside the mask: the image
    np.testing.assert_array_equal(crop[1, 0], (153, 153, 153))  # masked out: #999
    np.testing.assert_array_equal(crop[0, 0], (200, 200, 200))


def test_colours_are_clip_zero_shot_over_the_three_templates(model: geneval.GenEval) -> None:
    image = make_images(1, seed=3)[0]
    h, w = image.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[5:30, 4:40] = True
    objs = [rules.Obj(rules.mask_box(mask), 0.9, mask), rules.Obj(np.array([0, 0, w, h]), 0.8)]
    got = model.colours(image, "car", objs)
    clip_model, tok, proc = model.bundle.model, model.bundle.tokenizer, model.bundle.processor
    with torch.no_grad():
        rows = []
        for c in rules.COLORS:
            texts = [
                f"a photo of a {c} car",
                f"a photo of a {c}-colored car",
                f"a photo of a {c} object",
            ]
            t = tok(texts, padding=True, return_tensors="pt")
            e = clip_model.get_text_features(**t).pooler_output
            e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(e / e.norm())
        clf = torch.stack(rows)
        crops = [geneval.masked_crop(image, o) for o in objs]
        px = proc(images=crops, return_tensors="pt")["pixel_values"]
        f = clip_model.get_image_features(pixel_values=px).pooler_output
        f = f / f.norm(dim=-1, keepdim=True)
    expected = [rules.COLORS[int(i)] for i in (100 * f @ clf.T).argmax(1)]
    assert got == expected


def test_decisions_are_the_rules_on_the_detections(model: geneval.GenEval) -> None:
    images = make_images(3, seed=11)
    decisions = model.decide(images, PROMPTS, META)
    for image, meta, d in zip(images, META, decisions, strict=True):
        spec = rules.parse_spec(meta)
        res = _hand_detections(model, image)
        masks = res["segmentation"].numpy() > 0.5 if res["segments_info"] else []
        boxes = np.array([rules.mask_box(m) for m in masks]).reshape(-1, 4)
        scores = np.array([s["score"] for s in res["segments_info"]])
        labels = np.array([s["label_id"] for s in res["segments_info"]])
        objects = rules.keep_detections(boxes, scores, labels, list(masks), spec.tag)
        expected = rules.evaluate(spec, objects, functools.partial(model.colours, image))
        assert d == expected


def test_score_option_picks_the_decision(tiny_zoo: TinyZoo, model: geneval.GenEval) -> None:
    images = make_images(3, seed=11)
    decisions = model.decide(images, PROMPTS, META)
    np.testing.assert_array_equal(
        model.score_with_metadata(images, PROMPTS, META), [d.reward for d in decisions]
    )
    for mode in ("strict", "geneval"):
        m = load_model("geneval", tiny_zoo.options("geneval", options={"score": mode}))
        assert isinstance(m, geneval.GenEval)
        np.testing.assert_array_equal(
            m.score_with_metadata(images, PROMPTS, META),
            [float(getattr(d, mode)) for d in decisions],
        )
    with pytest.raises(ValueError, match="'score' must be one of"):
        load_model("geneval", tiny_zoo.options("geneval", options={"score": "binary"}))


def test_missing_or_bad_metadata_names_the_image(model: geneval.GenEval) -> None:
    images = make_images(2)
    with pytest.raises(MetadataError, match="needs each image's GenEval metadata"):
        model.score(images, PROMPTS[:2])
    bad = [META[0], {"tag": "colors", "include": [{"class": "unicorn", "count": 1}]}]
    with pytest.raises(MetadataError, match=r"metadata\[1\]: include\[0\].class") as info:
        model.score_with_metadata(images, PROMPTS[:2], bad)
    assert info.value.index == 1
    with pytest.raises(MetadataError, match=r"metadata\[0\]: GenEval needs .* got none"):
        model.check_metadata([None])


def test_hub_files_are_what_the_loader_reads() -> None:
    files = geneval.hub_files(LoadOptions())
    assert files == [
        (geneval.DETECTOR_REPO, [*geneval.DETECTOR_FILES, *geneval.DETECTOR_WEIGHTS]),
        *clip.hub_files(LoadOptions(source=geneval.CLIP_REPO), None),  # the zoo's CLIP files
    ]
    other = geneval.hub_files(LoadOptions(source="a/b", options={"clip_source": "c/d"}))
    assert [r for r, _ in other] == ["a/b", "c/d"]


def test_a_detector_without_the_80_coco_labels_is_refused(tiny_zoo: TinyZoo, tmp_path) -> None:
    det = geneval.tiny_detector(0, labels=("a", "b", "c"))
    det.save_pretrained(str(tmp_path))
    src = tiny_zoo.build("geneval") / geneval.DETECTOR_REPO / "preprocessor_config.json"
    (tmp_path / "preprocessor_config.json").write_text(src.read_text())
    opts = replace(tiny_zoo.options("geneval"), source=str(tmp_path))
    with pytest.raises(ValueError, match="has 3 labels"):
        load_model("geneval", opts)
