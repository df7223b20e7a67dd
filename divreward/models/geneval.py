"""GenEval (Ghosh et al. 2023) as a scorer: an instance-segmentation detector, a CLIP
colour classifier, and GenEval's rules (:mod:`divreward.models.geneval_rules`).

Each image comes with its prompt's metadata (GenEval's ``{"tag", "include",
"exclude"}``, see the rules module); without it the scorer refuses the image
(:class:`~divreward.models.base.MetadataError`, a 4xx in the services).

Pipeline per image:

1. **Detector**: a Mask2Former COCO instance-segmentation checkpoint through
   transformers (default ``facebook/mask2former-swin-small-coco-instance``; GenEval ran
   mmdet's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``, a different checkpoint
   and preprocessing, so absolute scores may differ). Its image processor
   preprocesses; its ``post_process_instance_segmentation`` (threshold 0, per-instance
   binary maps at the image's size) gives every query's label, score (class probability
   x mean mask probability, as mmdet's Mask2Former) and mask; boxes are the masks'
   extents (mmdet's ``mask2bbox``). Label ids index GenEval's 80 COCO names.
2. **Selection** (GenEval): score > 0.3 (> 0.9 for the counting tag), best first, at
   most 16 per class, no NMS.
3. **Colour** (GenEval): the object's mask composited onto a #999 grey canvas, cropped
   to its box, classified zero-shot by CLIP ViT-L/14 (OpenAI weights, here the
   transformers ``openai/clip-vit-large-patch14``, option ``clip_source``) among 10
   colours, each colour's text embedding the normalised mean of the 3 templates'
   (clip_benchmark's ``zero_shot_classifier``), argmax of the cosine.
4. **Rules**: GenEval's 0/1 decision, Flow-GRPO's strict 0/1 and Flow-GRPO's partial
   training reward (:func:`~divreward.models.geneval_rules.evaluate`).

Option ``score`` picks the served number: ``reward`` (default, Flow-GRPO's training
reward, which can be negative), ``strict`` (Flow-GRPO's strict 0/1) or ``geneval``
(GenEval's benchmark 0/1). :meth:`GenEval.decide` returns all three.

Images of one size are detected in one forward pass (as many as the batch limits
allow); every image's crops are classified in one CLIP pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models import _clip_common as clip
from divreward.models import geneval_rules as rules
from divreward.models._common import canonical, check_options, iter_chunks, option, seeded
from divreward.models._tensor_preprocess import by_size
from divreward.models.base import (
    LoadOptions,
    Metadata,
    MetadataError,
    ModelInfo,
    Scorer,
    check_prompts,
)
from divreward.models.weights import (
    WeightsNotFoundError,
    check_device,
    model_info,
    resolve_dir,
    resolve_dtype,
    resolve_first,
)

DETECTOR_REPO = "facebook/mask2former-swin-small-coco-instance"
DETECTOR_FILES = ("config.json", "preprocessor_config.json")
DETECTOR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CLIP_REPO = "openai/clip-vit-large-patch14"
BACKGROUND = "#999"  # GenEval's crop canvas
SCORES = ("reward", "strict", "geneval")
OPTIONS = ("score", "clip_source", "max_batch", "max_batch_pixels")
DEFAULT_MAX_BATCH = 8
MAX_RESOLUTION = 1024
PROBE_METADATA: Metadata = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """(repo id, allow patterns) of everything :func:`load` reads from the hub."""
    clip_source = option(opts.options, "clip_source", str, CLIP_REPO)
    return [
        (opts.source or DETECTOR_REPO, [*DETECTOR_FILES, *DETECTOR_WEIGHTS]),
        *clip.hub_files(replace(opts, source=clip_source), None),
    ]


class GenEval(Scorer):
    needs_metadata = True
    probe_metadata = PROBE_METADATA

    def __init__(
        self,
        detector: Any,
        processor: Any,
        bundle: clip.ClipBundle,
        mode: str,
        max_batch: int,
        max_batch_pixels: int,
        info: ModelInfo,
    ) -> None:
        self.detector = detector
        self.processor = processor
        self.bundle = bundle
        self.mode = mode
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.info = info
        self.device = bundle.device
        # The colour crops are cut from the image as sent (GenEval's 512x512 samples),
        # not from the detector's resized input: clients should not downsize below this.
        self.max_resolution = MAX_RESOLUTION
        self._classifiers: dict[str, Any] = {}

    # -- the models --------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every query's detection per image: ``boxes`` ``(K, 4)`` float32, ``scores``
        ``(K,)``, ``labels`` ``(K,)`` COCO ids, ``masks`` ``(K, H, W)`` bool, from the
        processor's instance post-processing (threshold 0, binary maps at the image's
        size). Images of one size share a forward pass."""
        import torch

        out: list[dict[str, np.ndarray]] = [{} for _ in images]
        for sl in iter_chunks(images, self.max_batch, self.max_batch_pixels):
            chunk = list(images[sl])
            for (h, w), idx in by_size(chunk).items():
                # the processor wraps arrays with torch.from_numpy: give it writable copies
                batch = [chunk[i] if chunk[i].flags.writeable else chunk[i].copy() for i in idx]
                inputs = self.processor(images=batch, return_tensors="pt")
                dtype = self.detector.dtype
                with torch.inference_mode():
                    outputs = self.detector(
                        **{
                            k: v.to(self.device, dtype)
                            if v.is_floating_point()
                            else v.to(self.device)
                            for k, v in inputs.items()
                        }
                    )
                outputs.class_queries_logits = outputs.class_queries_logits.float()
                outputs.masks_queries_logits = outputs.masks_queries_logits.float()
                post = self.processor.post_process_instance_segmentation(
                    outputs,
                    threshold=0.0,
                    target_sizes=[(h, w)] * len(idx),
                    return_binary_maps=True,
                )
                for j, res in zip(idx, post, strict=True):
                    out[sl.start + j] = _detections(res, h, w)
        return out

    def classifier(self, cls: str) -> Any:
        """clip_benchmark's zero-shot classifier for ``cls``: ``(10, P)`` unit rows, each
        the normalised mean of the 3 templates' unit text embeddings."""
        if cls not in self._classifiers:
            texts = [t.format(c=c, cls=cls) for c in rules.COLORS for t in rules.COLOR_TEMPLATES]
            emb = clip.text_features(self.bundle, texts, self.max_batch)  # (30, P) unit rows
            emb = emb.view(len(rules.COLORS), len(rules.COLOR_TEMPLATES), -1).mean(dim=1)
            self._classifiers[cls] = emb / emb.norm(dim=-1, keepdim=True)
        return self._classifiers[cls]

    def colours(self, image: np.ndarray, cls: str, objs: Sequence[rules.Obj]) -> list[str]:
        """GenEval's colour of each object: masked crop on #999, CLIP zero-shot argmax."""
        crops = [masked_crop(image, o) for o in objs]
        feats = clip.image_features(self.bundle, crops, self.max_batch, self.max_batch_pixels)
        logits = feats @ self.classifier(cls).T  # (n, 10)
        return [rules.COLORS[int(i)] for i in logits.argmax(dim=1)]

    # -- the scorer --------------------------------------------------------------
    def check_metadata(self, metadata: Sequence[Metadata | None] | None) -> None:
        self._specs(metadata, None)

    def _specs(self, metadata: Sequence[Metadata | None] | None, n: int | None) -> list[rules.Spec]:
        if metadata is None:
            raise MetadataError(
                "geneval needs each image's GenEval metadata {'tag', 'include', 'exclude'} "
                "and got none"
            )
        if n is not None and len(metadata) != n:
            raise ValueError(
                f"metadata has {len(metadata)} entries but images has {n}: give one "
                "metadata object per image"
            )
        specs = []
        for i, m in enumerate(metadata):
            try:
                specs.append(rules.parse_spec(m))
            except MetadataError as exc:
                raise MetadataError(exc.detail, i) from None
        return specs

    def decide(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None,
    ) -> list[rules.Decision]:
        """GenEval's 0/1, Flow-GRPO's strict 0/1 and Flow-GRPO's reward per image."""
        check_prompts(images, prompts)
        specs = self._specs(metadata, len(images))
        arrays = canonical(images)
        decisions = []
        for image, spec, det in zip(arrays, specs, self.detect(arrays), strict=True):
            objects = rules.keep_detections(
                det["boxes"], det["scores"], det["labels"], list(det["masks"]), spec.tag
            )
            decisions.append(rules.evaluate(spec, objects, functools.partial(self.colours, image)))
        return decisions

    def score_with_metadata(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> np.ndarray:
        decisions = self.decide(images, prompts, metadata)
        if self.mode == "reward":
            return np.array([d.reward for d in decisions], dtype=np.float64)
        attr = "strict" if self.mode == "strict" else "geneval"
        return np.array([float(getattr(d, attr)) for d in decisions], dtype=np.float64)

    def score_components(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """``reward``, ``strict`` and ``geneval`` per image (float64; 0/1 for the two
        decisions)."""
        decisions = self.decide(images, prompts, metadata)
        return {
            "reward": np.array([d.reward for d in decisions], dtype=np.float64),
            "strict": np.array([float(d.strict) for d in decisions], dtype=np.float64),
            "geneval": np.array([float(d.geneval) for d in decisions], dtype=np.float64),
        }

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        return self.score_with_metadata(images, prompts, None)


def _detections(res: dict[str, Any], h: int, w: int) -> dict[str, np.ndarray]:
    info = res["segments_info"]
    if not info:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0),
            "labels": np.zeros(0, np.int64),
            "masks": np.zeros((0, h, w), bool),
        }
    masks = res["segmentation"].cpu().numpy() > 0.5  # (K, H, W) binary maps
    return {
        "boxes": np.stack([rules.mask_box(m) for m in masks]),
        "scores": np.array([s["score"] for s in info], dtype=np.float64),
        "labels": np.array([s["label_id"] for s in info], dtype=np.int64),
        "masks": masks,
    }


def masked_crop(image: np.ndarray, obj: rules.Obj) -> np.ndarray:
    """GenEval's ``ImageCrops``: the object's mask composited onto a #999 canvas, cropped
    to its box (PIL's crop rounds the box), as an ``(h, w, 3)`` uint8 array."""
    from PIL import Image

    pil = Image.fromarray(image)
    if obj.mask is not None:
        blank = Image.new("RGB", pil.size, color=BACKGROUND)
        pil = Image.composite(pil, blank, Image.fromarray(np.asarray(obj.mask, dtype=bool)))
    box = tuple(float(v) for v in obj.box[:4])
    return np.asarray(pil.crop(box))  # type: ignore[arg-type]


def load(opts: LoadOptions) -> GenEval:
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    check_options("geneval", opts.options, OPTIONS)
    mode = option(opts.options, "score", str, "reward")
    if mode not in SCORES:
        raise ValueError(f"geneval: option 'score' must be one of {list(SCORES)}, got {mode!r}")
    clip_source = option(opts.options, "clip_source", str, CLIP_REPO)
    max_batch = option(opts.options, "max_batch", int, DEFAULT_MAX_BATCH)
    max_batch_pixels = option(opts.options, "max_batch_pixels", int, clip.DEFAULT_MAX_PIXELS)
    device = check_device(opts.device)
    dtype = resolve_dtype(opts)
    source = opts.source or DETECTOR_REPO
    weights = resolve_first(source, DETECTOR_WEIGHTS, opts)
    det_dir = resolve_dir(source, opts, DETECTOR_FILES)
    if det_dir.path != weights.path.parent:
        raise WeightsNotFoundError(
            f"the config and the weights of {source!r} resolved to different directories "
            f"({det_dir.path} vs {weights.path.parent})"
        )
    detector: Any = Mask2FormerForUniversalSegmentation.from_pretrained(
        str(det_dir.path), dtype=dtype
    )
    detector = detector.to(device).eval()
    n_labels = int(detector.config.num_labels)
    if n_labels != len(rules.COCO_CLASSES):
        raise ValueError(
            f"geneval: the detector {source!r} has {n_labels} labels; GenEval needs a COCO "
            f"instance-segmentation checkpoint with the {len(rules.COCO_CLASSES)} COCO classes"
        )
    processor = Mask2FormerImageProcessor.from_pretrained(str(det_dir.path))
    bundle = clip.load_clip(replace(opts, source=clip_source, options={}), None, "geneval")
    info = model_info(
        "geneval", "scorer", opts, [weights, det_dir, *bundle.resolved], device, dtype
    )
    return GenEval(detector, processor, bundle, mode, max_batch, max_batch_pixels, info)


# --------------------------------------------------------------------------- tiny twin
TINY_SIDE = 64
# Classes the tiny detector favours (person, car, cat, dog), so that its random
# detections pass GenEval's 0.3 threshold and vary with the image.
TINY_FAVOURED = (0, 2, 15, 16)


def tiny_detector(seed: int, labels: Sequence[str] = rules.COCO_CLASSES) -> Any:
    """A random Mask2Former (Swin backbone, 10 queries, 80 COCO labels); the class head's
    weights are scaled up and the favoured classes' biases raised, so that some queries
    score above 0.3 and which ones depends on the image."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin: dict[str, Any] = dict(
        image_size=TINY_SIDE,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    m2f: dict[str, Any] = dict(
        backbone_config=SwinConfig(**swin),
        num_labels=len(labels),
        num_queries=10,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        common_stride=4,
        use_pretrained_backbone=False,
        backbone=None,
        id2label=dict(enumerate(labels)),
        label2id={c: i for i, c in enumerate(labels)},
    )
    config = Mask2FormerConfig(**m2f)
    with seeded(seed):
        model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        model.class_predictor.weight.mul_(30.0)
        for c in (c for c in TINY_FAVOURED if c < len(labels)):
            model.class_predictor.bias[c] = 5.0
    return model


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/facebook/mask2former-swin-small-coco-instance/`` (tiny Mask2Former,
    64x64 processor) and ``out_dir/openai/clip-vit-large-patch14/`` (tiny CLIP, real
    tokenizer, 32 px processor), in the real repositories' layouts."""
    from transformers import Mask2FormerImageProcessor

    det_dir = out_dir / DETECTOR_REPO
    tiny_detector(seed).save_pretrained(str(det_dir))
    Mask2FormerImageProcessor(size={"height": TINY_SIDE, "width": TINY_SIDE}).save_pretrained(
        str(det_dir)
    )
    clip_dir = out_dir / CLIP_REPO
    clip.write_tiny_clip(clip_dir, seed, float(np.log(100.0)))
    clip.write_processor(clip_dir, side=32)
