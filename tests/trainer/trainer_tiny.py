"""Tiny trainer models for tests: one entry per registered model family.

``TINY_TEST_ENTRIES`` says how the tests load and sample each family's tiny pipeline
(built by :mod:`divreward.trainer.models.tiny`); a test fails if a family registered in
:data:`divreward.trainer.models.registry.ADAPTERS` has no entry here. The session fixture
``tiny_pipeline_dir`` (tests/trainer/conftest.py) builds the directories once per session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from divreward.trainer.models.base import DiffusionAdapter
from divreward.trainer.models.registry import get_adapter
from experiments.collapse.family import register as register_toy_family

# The collapse experiment's toy family is registered at runtime (it ships outside the
# package); the contract tests cover it like the built-in families.
register_toy_family()


@dataclass(frozen=True)
class TinyEntry:
    guidance: float  # the family's paper guidance (CFG for SD3, embedded for Flux)
    height: int = 16
    width: int = 16
    # Short text sequences keep the tiny models fast; the loaders' defaults are the
    # real models' (SD3: 256 T5 tokens, Flux: 512).
    load_options: dict[str, Any] = field(default_factory=lambda: {"max_sequence_length": 32})
    # A diffusers pipeline behind the adapter (checked against the pipeline's own sampling
    # and load_lora_weights); False for families outside diffusers (the toy MLP).
    diffusers_pipeline: bool = True


TINY_TEST_ENTRIES: dict[str, TinyEntry] = {
    "sd3": TinyEntry(guidance=4.5),
    "flux": TinyEntry(guidance=3.5),
    "toy": TinyEntry(guidance=0.0, load_options={}, diffusers_pipeline=False),
}


def load_tiny_adapter(
    family: str, pipeline_dir: Path, *, dtype: torch.dtype = torch.float32, **options: Any
) -> DiffusionAdapter:
    """A fresh adapter (CPU, float32 unless ``dtype``) over the tiny pipeline of ``family``."""
    opts = {**TINY_TEST_ENTRIES[family].load_options, **options}
    return get_adapter(family).from_pretrained(str(pipeline_dir), device="cpu", dtype=dtype, **opts)


def perturb_lora(adapter: DiffusionAdapter, seed: int = 0, scale: float = 0.05) -> None:
    """Stand-in for a training update: random LoRA B matrices (A stays as initialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
