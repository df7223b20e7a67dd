"""Stable Diffusion 3 / 3.5 through diffusers' ``StableDiffusion3Pipeline``.

- Prompts: the pipeline's own ``encode_prompt`` (two CLIPs + T5; without T5 —
  ``text_encoder_3=False`` — the T5 part is zeros, as the pipeline does).
- CFG (the adapter base's): ``uncond + g * (text - uncond)`` in one batched forward of
  ``[uncond; text]``, as the pipeline runs it; the empty negative prompt is encoded once.
  In the training step the unconditional half is detached (gradients through the
  conditional branch only).
- Timestep: ``sigma * 1000`` (the scheduler's timesteps); latents are
  ``(B, C, H / f, W / f)``, decoded with the VAE's scaling and shift factors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from divreward.trainer.models import tiny
from divreward.trainer.models.base import (
    ATTENTION_LORA_TARGETS,
    LatentDiffusionAdapter,
    PromptEmbeds,
)

__all__ = ["SD3Adapter"]


def _saved_without_t5(model: str) -> bool:
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return False
    entry = json.loads(index.read_text()).get("text_encoder_3")
    return entry is None or entry == [None, None]


class SD3Adapter(LatentDiffusionAdapter):
    family: ClassVar[str] = "sd3"
    # Flow-GRPO's SD3 targets (TRAINER.md).
    default_lora_targets: ClassVar[tuple[str, ...]] = ATTENTION_LORA_TARGETS

    def __init__(self, pipeline: Any, *, max_sequence_length: int = 256, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.max_sequence_length = max_sequence_length
        self._negative: PromptEmbeds | None = None

    @classmethod
    def from_pretrained(
        cls, model: str, *, text_encoder_3: bool | None = None, **options: Any
    ) -> SD3Adapter:
        """``model``: a hub id or a local pipeline directory. ``text_encoder_3=False``
        skips T5 (zeros in its place, as the pipeline does without it); None: skip it when
        a local directory has none (its ``model_index.json`` lists ``text_encoder_3`` as
        null), load it otherwise. ``options``: :meth:`DiffusionAdapter.from_diffusers`'s
        (device, dtype, vae_dtype, autocast_dtype, gradient_checkpointing,
        prompt_cache_size) and ``max_sequence_length`` (default 256)."""
        from diffusers import StableDiffusion3Pipeline

        no_t5 = cls.skipped_components(model, text_encoder_3=text_encoder_3)
        return cls.from_diffusers(StableDiffusion3Pipeline, model, components=no_t5, **options)

    @classmethod
    def skipped_components(
        cls, model: str, *, text_encoder_3: bool | None = None, **options: Any
    ) -> dict[str, None]:
        """T5 and its tokenizer when ``text_encoder_3`` is False (None: when a local
        directory was saved without it)."""
        if text_encoder_3 is None:
            text_encoder_3 = not _saved_without_t5(model)
        return {} if text_encoder_3 else {"text_encoder_3": None, "tokenizer_3": None}

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int = 0) -> Path:
        """A random tiny ``StableDiffusion3Pipeline`` (no T5) in ``out_dir``; returns it."""
        return tiny.build_pipeline_dir("sd3", _tiny_pipeline, out_dir, seed)

    def _encode_uncached(self, prompts: list[str]) -> dict[str, Tensor]:
        with self._autocast():
            pe, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
        return {
            "prompt_embeds": pe.to(self.dtype),  # (B, 77 + T5 tokens, joint_attention_dim)
            "pooled_prompt_embeds": pooled.to(self.dtype),  # (B, 2 x CLIP projection_dim)
        }

    def negative_embeds(self) -> PromptEmbeds:
        if self._negative is None:
            self._negative = PromptEmbeds([""], self._encode_uncached([""]))
        return self._negative

    def _latent_patch(self) -> tuple[int, str]:
        p = self.transformer_config.patch_size
        return p, f"patch size {p}"

    def _latent_channels(self) -> int:
        return int(self.transformer_config.in_channels)

    def sigmas(self, num_steps: int, *, height: int, width: int) -> Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
        )

        # A fresh scheduler from the pipeline's config, set as the pipeline sets it.
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)
        kwargs: dict[str, Any] = {}
        if sched.config.get("use_dynamic_shifting", None):
            h, w = self._latent_hw(height, width)
            p = self.transformer_config.patch_size
            kwargs["mu"] = calculate_shift(
                (h // p) * (w // p),
                sched.config.get("base_image_seq_len", 256),
                sched.config.get("max_image_seq_len", 4096),
                sched.config.get("base_shift", 0.5),
                sched.config.get("max_shift", 1.16),
            )
        sched.set_timesteps(num_steps, device="cpu", **kwargs)
        return sched.sigmas.float().clone()

    def _denoise(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, guidance: float) -> Tensor:
        with self._autocast():
            return self.transformer(
                hidden_states=x.to(self.dtype),
                timestep=t * 1000,  # the scheduler's timesteps
                encoder_hidden_states=embeds.tensors["prompt_embeds"],
                pooled_projections=embeds.tensors["pooled_prompt_embeds"],
                return_dict=False,
            )[0]


def _tiny_pipeline(seed: int) -> Any:
    """SD3 at diffusers' test sizes (TRAINER.md), without T5."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(tiny.clip_config())
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(tiny.clip_config())
    torch.manual_seed(seed + 3)
    vae = tiny.tiny_vae(latent_channels=4)
    tokenizer = tiny.clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3.5's schedule
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
