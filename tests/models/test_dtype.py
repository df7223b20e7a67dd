"""Reduced precision plumbing (what fp16/bf16 on CUDA exercises), checked with bfloat16 on
CPU: the dtype reaches every weight (DreamSim's CLIP projections are plain tensors outside
the module tree), is reported, and the numbers stay close to float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images

from divreward.models.base import Scorer
from divreward.models.dreamsim_embedder import DreamSimEmbedder
from divreward.models.registry import load_model

PROMPTS = ["a cat", "a dog", "a red car", "ramen"]


CASES = [
    ("pickscore", {}),
    ("clipscore", {}),
    ("hpsv2", {}),
    ("clip_embedder", {}),
    ("vqascore", {}),
    ("dreamsim", {"dreamsim_type": "dino_vitb16"}),
    # The ensemble's two ViT-B branches in bf16 on a CPU without bf16 matmuls: ~20 s.
    pytest.param("dreamsim", {"dreamsim_type": "ensemble"}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_bfloat16_on_cpu(tiny_zoo: TinyZoo, name: str, options: dict[str, str]) -> None:
    fp32 = load_model(name, tiny_zoo.options(name, options=options))
    bf16 = load_model(name, tiny_zoo.options(name, dtype="bfloat16", options=options))
    assert bf16.info.dtype == "bfloat16" and bf16.info.weights_hash == fp32.info.weights_hash
    images = make_images(4, seed=30)
    if isinstance(fp32, Scorer):
        assert isinstance(bf16, Scorer)
        a, b = fp32.score(images, PROMPTS), bf16.score(images, PROMPTS)
        assert b.dtype == np.float64
        # bf16 keeps ~3 significant digits; PickScore multiplies cos by 100.
        np.testing.assert_allclose(b, a, atol=0.05 * np.abs(a).max())
    else:
        a, b = fp32.embed(images), bf16.embed(images)  # type: ignore[union-attr]
        assert b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(b, a, atol=0.02)
    if isinstance(bf16, DreamSimEmbedder):
        for extractor in bf16.model.base_model.model.extractor_list:
            proj = getattr(extractor, "proj", None)
            if isinstance(proj, torch.Tensor):
                assert proj.dtype == torch.bfloat16
