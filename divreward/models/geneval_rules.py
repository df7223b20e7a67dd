"""GenEval's rules as pure functions on detections (no model, no torch).

Sources: GenEval ``evaluation/evaluate_images.py`` (Ghosh et al. 2023, the benchmark's
0/1 decision) and Flow-GRPO's reward server ``reward_server/gen_eval.py``
(``evaluate_reward``: the partial score Flow-GRPO trains on, and its "strict" 0/1).

A prompt's metadata (GenEval's ``evaluation_metadata.jsonl`` format, one line per
prompt; Flow-GRPO's ``dataset/geneval/*_metadata.jsonl`` is the same)::

    {"tag": "position", "prompt": "a photo of a dog right of a cat",
     "include": [{"class": "cat", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "exclude": [{"class": "dog", "count": 2}]}

``include`` items may carry ``"color"`` (one of :data:`COLORS`) and/or ``"position"``
(``[relation, index of an earlier include item]``). Other top-level keys (``prompt``)
are allowed and not read.

Detections kept per class (:func:`keep_detections`): score > 0.3 (> 0.9 when the tag is
``counting``), sorted by score, at most 16, no NMS (GenEval's ``max_overlap`` 1.0).

Decisions (:func:`evaluate`), all from the same kept detections:

- ``geneval`` (GenEval's ``evaluate``): every include item needs >= count objects (its
  top-``count`` ones are checked for colour and position), every exclude item fails the
  image if the class has >= its count objects (so counting = exactly N).
- ``strict`` (Flow-GRPO's ``strict_rewards``): the same logic with exact counts
  (n == count, and exactly ``count`` crops of the colour); exclude is ignored.
- ``reward`` (Flow-GRPO's training reward, its ``scores``): the mean of values appended
  per include item: ``1 - |count - n| / count`` (n = all kept objects of the class;
  **negative** when n > 2 * count); if n != count and the item has a colour or a
  position, one 0; else a colour appends ``1 - |count - n_colour| / count``; a position
  whose reference item failed appends 0; a checked position appends 0 on the first
  failing pair **and then 1.0 unconditionally** (Flow-GRPO's quirk: a failed position
  item averages (count term + 0 + 1) / 3, e.g. 2/3 when the count is right), 1.0 when
  every pair holds. A colour mismatch skips the position (nothing appended for it).
  No include items -> 0. Exclude items are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from divreward.models.base import MetadataError

__all__ = [
    "COCO_CLASSES",
    "COLORS",
    "COLOR_TEMPLATES",
    "COUNTING_THRESHOLD",
    "MAX_OBJECTS",
    "POSITION_THRESHOLD",
    "RELATIONS",
    "TAGS",
    "THRESHOLD",
    "Decision",
    "Item",
    "MetadataError",
    "Obj",
    "Spec",
    "evaluate",
    "keep_detections",
    "mask_box",
    "parse_spec",
    "relative_position",
]

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# GenEval's colour classifier templates ({c}: colour, {cls}: the object's class name).
COLOR_TEMPLATES = (
    "a photo of a {c} {cls}",
    "a photo of a {c}-colored {cls}",
    "a photo of a {c} object",
)

# GenEval's object_names.txt: the 80 COCO classes in the detector's label order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
    "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One include/exclude clause."""

    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None  # (relation, index of an earlier include item)


@dataclass(frozen=True)
class Spec:
    """A prompt's parsed metadata."""

    tag: str
    include: tuple[Item, ...]
    exclude: tuple[Item, ...] = ()


@dataclass(frozen=True)
class Obj:
    """One kept detection: ``box`` = ``[x1, y1, x2, y2]`` (pixels, y down), its score and
    its binary mask (``(H, W)`` bool, or None)."""

    box: np.ndarray
    score: float
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    geneval: bool  # GenEval's 0/1 benchmark decision
    strict: bool  # Flow-GRPO's strict_rewards 0/1 (exact counts, exclude ignored)
    reward: float  # Flow-GRPO's partial training reward
    reasons: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------ metadata
def _item(raw: Any, where: str, position_ok: int | None) -> Item:
    if not isinstance(raw, Mapping):
        raise MetadataError(f"{where} must be an object, got {type(raw).__name__}")
    allowed = {"class", "count"} | ({"color", "position"} if position_ok is not None else set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MetadataError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    cls = raw.get("class")
    if cls not in COCO_CLASSES:
        raise MetadataError(
            f"{where}.class must be one of GenEval's 80 COCO class names, got {cls!r}"
        )
    count = raw.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MetadataError(f"{where}.count must be an int >= 1, got {count!r}")
    color = raw.get("color")
    if color is not None and color not in COLORS:
        raise MetadataError(f"{where}.color must be one of {list(COLORS)}, got {color!r}")
    position = raw.get("position")
    pos: tuple[str, int] | None = None
    if position is not None:
        ok = (
            isinstance(position, list | tuple)
            and len(position) == 2
            and position[0] in RELATIONS
            and isinstance(position[1], int)
            and not isinstance(position[1], bool)
        )
        if not ok:
            raise MetadataError(
                f"{where}.position must be [relation, index] with relation in "
                f"{list(RELATIONS)}, got {position!r}"
            )
        assert position_ok is not None
        if not 0 <= position[1] < position_ok:
            raise MetadataError(
                f"{where}.position refers to include item {position[1]}, but only items "
                f"0..{position_ok - 1} come before it"
            )
        pos = (str(position[0]), int(position[1]))
    return Item(str(cls), int(count), color, pos)


def parse_spec(metadata: Any) -> Spec:
    """GenEval metadata -> :class:`Spec` (``MetadataError`` naming the bad field)."""
    if metadata is None:
        raise MetadataError(
            "GenEval needs the prompt's metadata {'tag', 'include': [...], 'exclude': [...]} "
            "and got none"
        )
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"must be an object, got {type(metadata).__name__}")
    tag = metadata.get("tag")
    if tag not in TAGS:
        raise MetadataError(f"tag must be one of {list(TAGS)}, got {tag!r}")
    include = metadata.get("include")
    if not isinstance(include, list) or not include:
        raise MetadataError("include must be a non-empty list of {class, count} items")
    exclude = metadata.get("exclude", [])
    if not isinstance(exclude, list):
        raise MetadataError(f"exclude must be a list, got {type(exclude).__name__}")
    inc = tuple(_item(r, f"include[{i}]", i) for i, r in enumerate(include))
    exc = tuple(_item(r, f"exclude[{i}]", None) for i, r in enumerate(exclude))
    return Spec(str(tag), inc, exc)


# ---------------------------------------------------------------------- detections
def mask_box(mask: np.ndarray) -> np.ndarray:
    """mmdet's ``mask2bbox``: ``[x_min, y_min, x_max + 1, y_max + 1]`` of a binary mask
    (zeros for an empty mask), float32."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def keep_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: Sequence[np.ndarray | None] | None,
    tag: str,
) -> dict[str, list[Obj]]:
    """GenEval's per-class selection: ``(N, 4)`` boxes, ``(N,)`` scores and COCO label
    ids (and per-detection masks) -> class name -> kept objects, best first (score >
    0.3, or > 0.9 for the counting tag; at most 16 per class; no NMS)."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    out: dict[str, list[Obj]] = {}
    for index, name in enumerate(COCO_CLASSES):
        rows = np.flatnonzero(labels == index)
        if len(rows) == 0:
            continue
        ordering = np.argsort(scores[rows])[::-1]  # as GenEval: argsort, reversed
        ordering = ordering[scores[rows][ordering] > threshold][:MAX_OBJECTS]
        kept = [
            Obj(boxes[r], float(scores[r]), None if masks is None else masks[r])
            for r in rows[ordering]
        ]
        if kept:
            out[name] = kept
    return out


def relative_position(box_a: np.ndarray, box_b: np.ndarray) -> set[str]:
    """GenEval's ``relative_position``: the relations of A to B, the centre offset
    shrunk by 0.1 * (size_A + size_B) per axis, then normalised by the offset's norm."""
    boxes = np.array([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


# ------------------------------------------------------------------------ decisions
ColourFn = Callable[[str, Sequence[Obj]], Sequence[str]]


def _position_holds(objs: Sequence[Obj], targets: Sequence[Obj], relation: str) -> bool:
    """Every object against every reference object (GenEval's loops, first failure)."""
    return all(relation in relative_position(a.box, b.box) for a in objs for b in targets)


def evaluate(spec: Spec, objects: Mapping[str, Sequence[Obj]], colours: ColourFn) -> Decision:
    """The three decisions for one image's kept detections. ``colours(cls, objs)``
    classifies the colour of each object (called at most once per include item: GenEval
    and Flow-GRPO classify the same top-``count`` objects)."""
    cache: dict[int, list[str]] = {}

    def colours_of(i: int, item: Item, objs: Sequence[Obj]) -> list[str]:
        if i not in cache:
            cache[i] = list(colours(item.cls, objs))
        return cache[i]

    reasons: list[str] = []
    # -- GenEval's evaluate
    geneval = True
    groups: list[Sequence[Obj] | None] = []
    for i, item in enumerate(spec.include):
        found = list(objects.get(item.cls, []))[: item.count]
        matched = True
        if len(found) < item.count:
            geneval = matched = False
            reasons.append(f"expected {item.cls}>={item.count}, found {len(found)}")
        else:
            if item.color is not None:
                n_col = colours_of(i, item, found).count(item.color)
                if n_col < item.count:
                    geneval = matched = False
                    reasons.append(f"expected {item.color} {item.cls}>={item.count}, found {n_col}")
            if item.position is not None and matched:
                relation, target = item.position
                ref = groups[target]
                if ref is None or not _position_holds(found, ref, relation):
                    geneval = matched = False
                    reasons.append(f"expected {item.cls} {relation} target")
        groups.append(found if matched else None)
    for item in spec.exclude:
        n = len(objects.get(item.cls, []))
        if n >= item.count:
            geneval = False
            reasons.append(f"expected {item.cls}<{item.count}, found {n}")

    # -- Flow-GRPO's evaluate_reward
    strict = True
    values: list[float] = []
    groups = []
    for i, item in enumerate(spec.include):
        found = list(objects.get(item.cls, []))
        matched = True
        values.append(1 - abs(item.count - len(found)) / item.count)
        if len(found) != item.count:
            strict = matched = False
            if item.color is not None or item.position is not None:
                values.append(0.0)
        else:
            if item.color is not None:
                n_col = colours_of(i, item, found).count(item.color)
                values.append(1 - abs(item.count - n_col) / item.count)
                if n_col != item.count:
                    strict = matched = False
            if item.position is not None and matched:
                relation, target = item.position
                ref = groups[target]
                if ref is None:
                    strict = matched = False
                    values.append(0.0)
                else:
                    if not _position_holds(found, ref, relation):
                        strict = matched = False
                        values.append(0.0)
                    values.append(1.0)  # Flow-GRPO appends 1.0 after the loop, always
        groups.append(found if matched else None)
    reward = sum(values) / len(values) if values else 0.0
    return Decision(geneval, strict, float(reward), tuple(reasons))
