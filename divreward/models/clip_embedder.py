"""CLIP image embeddings (unit rows), for the CLIP-diversity metric.

embed(images)[i] = normalise(visual_projection(vision_model(pixels_i).pooler_output)),
float32, dim = the checkpoint's ``projection_dim`` (512 for ViT-B/32). Preprocessing as
in :mod:`divreward.models._clip_common` (shortest side, bicubic, centre crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models import _clip_common as clip
from divreward.models._common import canonical, check_options, option
from divreward.models.base import Embedder, LoadOptions, ModelInfo
from divreward.models.weights import model_info

OPTIONS = ("processor_source", "preprocess")
DEFAULT_SOURCE = "openai/clip-vit-base-patch32"


class CLIPEmbedder(Embedder):
    def __init__(self, bundle: clip.ClipBundle, info: ModelInfo) -> None:
        self.bundle = bundle
        self.info = info
        self.dim = int(bundle.model.config.projection_dim)
        self.max_resolution = bundle.max_resolution

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        imgs = canonical(images)
        emb = clip.image_features(self.bundle, imgs, self.max_batch, self.max_batch_pixels)
        return emb.numpy().astype(np.float32)  # (N, dim)


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    return clip.hub_files(opts, option(opts.options, "processor_source", str, None))


def load(opts: LoadOptions) -> CLIPEmbedder:
    check_options("clip_embedder", opts.options, OPTIONS)
    bundle = clip.load_clip(
        opts, option(opts.options, "processor_source", str, None), "clip_embedder"
    )
    info = model_info(
        "clip_embedder", "embedder", opts, bundle.resolved, bundle.device, bundle.dtype
    )
    return CLIPEmbedder(bundle, info)


def build_tiny(out_dir: Path, seed: int) -> None:
    """Same tiny CLIP as clipscore's (same default repository, same seed -> same bytes)."""
    target = out_dir / DEFAULT_SOURCE
    clip.write_tiny_clip(target, seed, float(np.log(100.0)))
    clip.write_processor(target, side=32)
