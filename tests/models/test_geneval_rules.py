"""GenEval's rule engine against GenEval's own decisions (``evaluate_images.py``) and
Flow-GRPO's partial reward (``reward_server/gen_eval.py::evaluate_reward``), on
hand-made detections, case by case. Every expected value is worked out by hand from the
reference code in the comments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from divreward.models.geneval_rules import (
    COCO_CLASSES,
    MetadataError,
    Obj,
    evaluate,
    keep_detections,
    mask_box,
    parse_spec,
    relative_position,
)

DOG, CAT = COCO_CLASSES.index("dog"), COCO_CLASSES.index("cat")


def box(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def objs(*boxes: np.ndarray) -> list[Obj]:
    return [Obj(b, 0.95) for b in boxes]


def no_colours(cls: str, found: Sequence[Obj]) -> list[str]:
    raise AssertionError("no colour classification expected")


def fixed_colours(*names: str):
    calls: list[tuple[str, int]] = []

    def fn(cls: str, found: Sequence[Obj]) -> list[str]:
        calls.append((cls, len(found)))
        return list(names[: len(found)])

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def run(meta: dict, detected: dict[str, list[Obj]], colours=no_colours):
    d = evaluate(parse_spec(meta), detected, colours)
    return d.geneval, d.strict, d.reward


ONE_DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
B0 = box(10, 10, 30, 30)
B1 = box(50, 10, 70, 30)
B2 = box(10, 60, 30, 80)


# ------------------------------------------------------------------ selection
def test_threshold_is_strictly_above_0_3_and_0_9_for_counting() -> None:
    boxes = np.stack([B0, B1, B2])
    scores = np.array([0.3, 0.30001, 0.9])
    labels = np.array([DOG, DOG, DOG])
    kept = keep_detections(boxes, scores, labels, None, "single_object")
    # 0.3 is not > 0.3: dropped; the rest sorted best first
    assert [o.score for o in kept["dog"]] == [0.9, 0.30001]
    kept = keep_detections(boxes, np.array([0.9, 0.90001, 0.95]), labels, None, "counting")
    assert [o.score for o in kept["dog"]] == [0.95, 0.90001]
    assert keep_detections(boxes, np.array([0.1, 0.2, 0.3]), labels, None, "colors") == {}


def test_at_most_16_per_class_and_no_nms() -> None:
    n = 20
    boxes = np.tile(B0, (n, 1))  # identical boxes: NMS would keep one
    scores = np.linspace(0.5, 0.99, n)
    labels = np.array([CAT] * n)
    kept = keep_detections(boxes, scores, labels, None, "two_object")["cat"]
    assert len(kept) == 16
    np.testing.assert_allclose([o.score for o in kept], scores[::-1][:16])


def test_labels_map_to_geneval_class_names_and_masks_follow() -> None:
    masks = [np.full((4, 4), i, dtype=bool) for i in range(2)]
    kept = keep_detections(
        np.stack([B0, B1]), np.array([0.5, 0.6]), np.array([DOG, CAT]), masks, "colors"
    )
    assert set(kept) == {"dog", "cat"}
    assert kept["dog"][0].mask is masks[0] and kept["cat"][0].mask is masks[1]
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    assert len(COCO_CLASSES) == 80


def test_mask_box_is_mmdet_mask2bbox() -> None:
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:9] = True
    np.testing.assert_array_equal(mask_box(m), [3, 2, 9, 5])
    np.testing.assert_array_equal(mask_box(np.zeros((3, 3), bool)), [0, 0, 0, 0])


# ------------------------------------------------------------------ single / two objects
def test_single_object() -> None:
    assert run(ONE_DOG, {"dog": objs(B0)}) == (True, True, 1.0)
    assert run(ONE_DOG, {}) == (False, False, 0.0)  # 1 - |1-0|/1 = 0
    # two dogs: GenEval passes (>= 1); Flow-GRPO's exact count fails: 1 - 1/1 = 0
    assert run(ONE_DOG, {"dog": objs(B0, B1)}) == (True, False, 0.0)
    # three dogs: the partial reward goes negative: 1 - |1 - 3| / 1 = -1
    assert run(ONE_DOG, {"dog": objs(B0, B1, B2)}) == (True, False, -1.0)


def test_two_object() -> None:
    meta = {
        "tag": "two_object",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
    }
    assert run(meta, {"dog": objs(B0), "cat": objs(B1)}) == (True, True, 1.0)
    assert run(meta, {"dog": objs(B0)}) == (False, False, 0.5)  # (1 + 0) / 2


# ------------------------------------------------------------------ counting
COUNT_3 = {
    "tag": "counting",
    "include": [{"class": "dog", "count": 3}],
    "exclude": [{"class": "dog", "count": 4}],
}


def test_counting_exclude_makes_geneval_exact() -> None:
    three = objs(B0, B1, B2)
    assert run(COUNT_3, {"dog": three}) == (True, True, 1.0)
    # four dogs: include passes, exclude (>= 4) fails GenEval; Flow-GRPO: 1 - 1/3
    g, s, r = run(COUNT_3, {"dog": [*three, Obj(box(80, 80, 90, 90), 0.95)]})
    assert (g, s) == (False, False) and r == pytest.approx(2 / 3)
    # two dogs: 1 - 1/3
    g, s, r = run(COUNT_3, {"dog": objs(B0, B1)})
    assert (g, s) == (False, False) and r == pytest.approx(2 / 3)


def test_flow_grpo_ignores_exclude() -> None:
    meta = {**ONE_DOG, "exclude": [{"class": "cat", "count": 1}]}
    assert run(meta, {"dog": objs(B0), "cat": objs(B1)}) == (False, True, 1.0)


# ------------------------------------------------------------------ colours
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}


def test_colour_decisions() -> None:
    assert run(RED_CAR, {"car": objs(B0)}, fixed_colours("red")) == (True, True, 1.0)
    # wrong colour: count term 1, colour term 1 - |1 - 0| / 1 = 0 -> 0.5
    assert run(RED_CAR, {"car": objs(B0)}, fixed_colours("blue")) == (False, False, 0.5)
    # no car: count term 0 and one 0 for the colour -> 0
    assert run(RED_CAR, {}) == (False, False, 0.0)


def test_colour_counts_the_top_count_objects_once() -> None:
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "red"}]}
    fn = fixed_colours("red", "blue", "red")
    # 2 cars: one red, one blue. GenEval: 1 red < 2 -> fail. Flow-GRPO: 1, 1 - 1/2 -> 0.75
    assert run(meta, {"car": objs(B0, B1)}, fn) == (False, False, 0.75)
    assert fn.calls == [("car", 2)]  # one classification serves both decisions
    # 3 cars (top two red): GenEval passes on the top 2; Flow-GRPO: n != count -> 1-1/2, 0
    fn = fixed_colours("red", "red", "blue")
    assert run(meta, {"car": objs(B0, B1, B2)}, fn) == (True, False, 0.25)


def test_color_attr_two_items() -> None:
    meta = {
        "tag": "color_attr",
        "include": [
            {"class": "dog", "count": 1, "color": "brown"},
            {"class": "cat", "count": 1, "color": "white"},
        ],
    }

    def colours(cls: str, found: Sequence[Obj]) -> list[str]:
        return {"dog": ["brown"], "cat": ["black"]}[cls]

    # dog: 1, 1; cat: 1, 0 -> 3/4
    assert run(meta, {"dog": objs(B0), "cat": objs(B1)}, colours) == (False, False, 0.75)


# ------------------------------------------------------------------ position
RIGHT_OF = {
    "tag": "position",
    "include": [
        {"class": "cat", "count": 1},
        {"class": "dog", "count": 1, "position": ["right of", 0]},
    ],
}


def test_relative_position_margin_of_0_1_size() -> None:
    a, b = box(0, 0, 10, 10), box(0, 0, 10, 10)
    assert relative_position(a, b) == set()  # same centre
    # offset x = 2, margin 0.1 * (10 + 10) = 2: revised 0 -> no relation
    assert relative_position(box(2, 0, 12, 10), b) == set()
    # offset x = 2.5: revised 0.5, dx = 0.5 / 2.5 = 0.2 <= 0.5 -> still none
    assert relative_position(box(2.5, 0, 12.5, 10), b) == set()
    # offset x = 5: revised 3, dx = 0.6 -> right of
    assert relative_position(box(5, 0, 15, 10), b) == {"right of"}
    assert relative_position(b, box(5, 0, 15, 10)) == {"left of"}
    # y down: a lower box is "below"
    assert relative_position(box(0, 20, 10, 30), b) == {"below"}
    # diagonal offset (20, 20): revised (18, 18) / 28.28 = 0.636 each -> both relations
    assert relative_position(box(20, 20, 30, 30), b) == {"right of", "below"}


def test_position_pass_and_fail_with_the_2_3_quirk() -> None:
    cat, dog_right, dog_left = box(0, 0, 10, 10), box(30, 0, 40, 10), box(-30, 0, -20, 10)
    assert run(RIGHT_OF, {"cat": objs(cat), "dog": objs(dog_right)}) == (True, True, 1.0)
    # wrong side: cat item 1; dog item: count 1, then 0 AND the unconditional 1.0
    g, s, r = run(RIGHT_OF, {"cat": objs(cat), "dog": objs(dog_left)})
    assert (g, s) == (False, False)
    assert r == pytest.approx((1 + (1 + 0 + 1)) / 4)  # the dog item alone averages 2/3


def test_position_without_its_reference() -> None:
    # no cat: cat item 0; dog: count term 1, then "no target": 0 (no 1.0) -> 1/3
    g, s, r = run(RIGHT_OF, {"dog": objs(box(30, 0, 40, 10))})
    assert (g, s) == (False, False) and r == pytest.approx(1 / 3)
    # no dog: cat 1; dog count 0 and one 0 -> 1/3
    g, s, r = run(RIGHT_OF, {"cat": objs(box(0, 0, 10, 10))})
    assert (g, s) == (False, False) and r == pytest.approx(1 / 3)


def test_position_every_object_against_every_reference() -> None:
    meta = {
        "tag": "position",
        "include": [
            {"class": "cat", "count": 2},
            {"class": "dog", "count": 1, "position": ["above", 0]},
        ],
    }
    cats = objs(box(0, 50, 10, 60), box(40, 50, 50, 60))
    above_both = objs(box(20, 0, 30, 10))
    assert run(meta, {"cat": cats, "dog": above_both})[:2] == (True, True)
    # the dog is above the first cat only (same row as the second): fails
    beside = objs(box(0, 0, 10, 10))
    cats2 = objs(box(0, 50, 10, 60), box(30, 0, 40, 10))
    assert run(meta, {"cat": cats2, "dog": beside})[:2] == (False, False)


def test_colour_mismatch_skips_position_in_the_reward() -> None:
    meta = {
        "tag": "position",
        "include": [
            {"class": "cat", "count": 1},
            {"class": "dog", "count": 1, "color": "red", "position": ["right of", 0]},
        ],
    }
    detected = {"cat": objs(box(0, 0, 10, 10)), "dog": objs(box(-30, 0, -20, 10))}
    # cat 1; dog: 1, colour 0, position not checked (nothing appended) -> 2/3
    g, s, r = run(meta, detected, fixed_colours("blue"))
    assert (g, s) == (False, False) and r == pytest.approx(2 / 3)


# ------------------------------------------------------------------ metadata
@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (None, "got none"),
        ([], "must be an object"),
        ({"include": [{"class": "dog", "count": 1}]}, "tag must be one of"),
        ({"tag": "colors", "include": []}, "include must be a non-empty list"),
        ({"tag": "colors", "include": [{"class": "unicorn", "count": 1}]}, r"include\[0\].class"),
        ({"tag": "colors", "include": [{"class": "dog", "count": 0}]}, r"include\[0\].count"),
        ({"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "teal"}]}, "color"),
        (
            {"tag": "position", "include": [{"class": "dog", "count": 1, "position": ["near", 0]}]},
            "relation",
        ),
        (
            {
                "tag": "position",
                "include": [{"class": "dog", "count": 1, "position": ["above", 0]}],
            },
            "refers to include item 0",
        ),
        ({"tag": "colors", "include": [{"class": "dog", "count": 1, "size": 3}]}, "unknown key"),
        (
            {"tag": "counting", "include": [{"class": "dog", "count": 1}], "exclude": {}},
            "exclude must be a list",
        ),
    ],
)
def test_bad_metadata_names_the_field(meta: object, match: str) -> None:
    with pytest.raises(MetadataError, match=match):
        parse_spec(meta)


def test_a_geneval_jsonl_line_parses() -> None:
    line = {
        "tag": "counting",
        "prompt": "a photo of three dogs",
        "include": [{"class": "dog", "count": 3}],
        "exclude": [{"class": "dog", "count": 4}],
    }
    spec = parse_spec(line)
    assert spec.tag == "counting" and spec.include[0].count == 3 and spec.exclude[0].count == 4
