"""PickScore (Kirstain et al. 2023): CLIP ViT-H/14 fine-tuned on Pick-a-Pic.

score_i = logit_scale.exp() * cos(text_emb_i, image_emb_i) / scale_divisor

with ``logit_scale.exp()`` ≈ 100 in the real checkpoint (real scores ≈ 18-23);
Flow-GRPO uses ``scale_divisor=26`` to bring them near 1. Weights
``yuvalkirstain/PickScore_v1`` (transformers ``CLIPModel``); processor and tokenizer
from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` as in the reference code.
Preprocessing: see :mod:`divreward.models._clip_common`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models import _clip_common as clip
from divreward.models._common import check_options, option
from divreward.models.base import LoadOptions, ModelInfo
from divreward.models.weights import model_info

PROCESSOR_SOURCE = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPTIONS = ("scale_divisor", "processor_source", "preprocess")


class PickScore(clip.ClipScorer):
    def __init__(self, bundle: clip.ClipBundle, scale_divisor: float, info: ModelInfo) -> None:
        super().__init__(bundle, info)
        self.scale_divisor = scale_divisor

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        cos = self.cosine(images, prompts)
        return clip.logit_scale(self.bundle) * cos / self.scale_divisor


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    return clip.hub_files(opts, option(opts.options, "processor_source", str, PROCESSOR_SOURCE))


def load(opts: LoadOptions) -> PickScore:
    check_options("pickscore", opts.options, OPTIONS)
    divisor = option(opts.options, "scale_divisor", float, 1.0)
    if not divisor > 0:
        raise ValueError(f"pickscore: option 'scale_divisor' must be > 0, got {divisor}")
    proc_src = option(opts.options, "processor_source", str, PROCESSOR_SOURCE)
    bundle = clip.load_clip(opts, proc_src, "pickscore")
    info = model_info("pickscore", "scorer", opts, bundle.resolved, bundle.device, bundle.dtype)
    return PickScore(bundle, divisor, info)


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/yuvalkirstain/PickScore_v1/{config.json, model.safetensors}`` (random
    CLIP, logit scale 100 like the real one) and the laion processor/tokenizer files
    (32 px instead of 224)."""
    clip.write_tiny_clip(out_dir / "yuvalkirstain" / "PickScore_v1", seed, float(np.log(100.0)))
    clip.write_processor(out_dir / PROCESSOR_SOURCE, side=32)
