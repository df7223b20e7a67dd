"""Stable Diffusion 3 / 3.5 through diffusers' ``StableDiffusion3Pipeline``.

- Prompts: the pipeline's own ``encode_prompt`` (two CLIPs + T5; without T5 —
  ``text_encoder_3=False`` — the T5 part is zeros, as the pipeline does).
- CFG: ``uncond + g * (text - uncond)`` in one batched forward of ``[uncond; text]``, as
  the pipeline runs it; the empty negative prompt is encoded once. In the training step
  the unconditional half is detached (gradients through the conditional branch only).
- Timestep: ``sigma * 1000`` (the scheduler's timesteps); latents are
  ``(B, C, H / f, W / f)``, decoded with the VAE's scaling and shift factors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from divreward.trainer.models.base import (
    ATTENTION_LORA_TARGETS,
    DiffusionAdapter,
    PromptEmbeds,
    load_pipeline,
)

__all__ = ["SD3Adapter"]


def _saved_without_t5(model: str) -> bool:
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return False
    entry = json.loads(index.read_text()).get("text_encoder_3")
    return entry is None or entry == [None, None]


class SD3Adapter(DiffusionAdapter):
    family: ClassVar[str] = "sd3"
    # Flow-GRPO's SD3 targets (TRAINER.md).
    default_lora_targets: ClassVar[tuple[str, ...]] = ATTENTION_LORA_TARGETS

    def __init__(self, pipeline: Any, *, max_sequence_length: int = 256, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.max_sequence_length = max_sequence_length
        self._negative: PromptEmbeds | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        device: str | torch.device,
        dtype: torch.dtype,
        text_encoder_3: bool | None = None,
        max_sequence_length: int = 256,
        vae_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        prompt_cache_size: int = 256,
    ) -> SD3Adapter:
        """``model``: a hub id or a local pipeline directory. ``text_encoder_3=False``
        skips T5 (zeros in its place, as the pipeline does without it); None: skip it when
        a local directory has none (its ``model_index.json`` lists ``text_encoder_3`` as
        null), load it otherwise."""
        from diffusers import StableDiffusion3Pipeline

        if text_encoder_3 is None:
            text_encoder_3 = not _saved_without_t5(model)
        no_t5: dict[str, Any] = {}
        if not text_encoder_3:
            no_t5 = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = load_pipeline(
            StableDiffusion3Pipeline,
            model,
            device=device,
            dtype=dtype,
            vae_dtype=vae_dtype,
            autocast_dtype=autocast_dtype,
            gradient_checkpointing=gradient_checkpointing,
            **no_t5,
        )
        return cls(
            pipe,
            device=device,
            dtype=dtype,
            autocast_dtype=autocast_dtype,
            prompt_cache_size=prompt_cache_size,
            max_sequence_length=max_sequence_length,
        )

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

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        f = self.pipeline.vae_scale_factor
        p = self.transformer.config.patch_size
        if height % (f * p) or width % (f * p):
            raise ValueError(
                f"height and width must be multiples of {f * p} (VAE factor {f} x patch "
                f"size {p}); got {height}x{width}"
            )
        return height // f, width // f

    def initial_latents(self, n: int, *, height: int, width: int, generator: Any = None) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self._latent_hw(height, width)
        shape = (n, self.transformer.config.in_channels, h, w)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

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
            p = self.transformer.config.patch_size
            kwargs["mu"] = calculate_shift(
                (h // p) * (w // p),
                sched.config.get("base_image_seq_len", 256),
                sched.config.get("max_image_seq_len", 4096),
                sched.config.get("base_shift", 0.5),
                sched.config.get("max_shift", 1.16),
            )
        sched.set_timesteps(num_steps, device="cpu", **kwargs)
        return sched.sigmas.float().clone()

    def velocity(
        self,
        x: Tensor,
        sigma: Tensor,
        embeds: PromptEmbeds,
        *,
        guidance: float,
        detach_uncond: bool = False,
    ) -> Tensor:
        n = x.shape[0]
        if len(embeds) != n:
            raise ValueError(f"velocity: {len(embeds)} prompt rows for {n} latents")
        t = torch.as_tensor(sigma, device=self.device, dtype=torch.float32) * 1000
        timestep = t.expand(n) if t.ndim == 0 else t  # (B,) as the scheduler's timesteps
        pe = embeds.tensors["prompt_embeds"]
        pooled = embeds.tensors["pooled_prompt_embeds"]
        cfg = guidance > 1.0  # the pipeline's rule
        hidden = x.to(self.dtype)
        if cfg:
            neg = self.negative_embeds()
            neg_pe = neg.tensors["prompt_embeds"].expand(n, *pe.shape[1:])
            neg_pooled = neg.tensors["pooled_prompt_embeds"].expand(n, *pooled.shape[1:])
            hidden = torch.cat([hidden, hidden])
            timestep = torch.cat([timestep, timestep])
            pe = torch.cat([neg_pe, pe])
            pooled = torch.cat([neg_pooled, pooled])
        with self._autocast():
            out = self.transformer(
                hidden_states=hidden,
                timestep=timestep,
                encoder_hidden_states=pe,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        out = out.float()
        if not cfg:
            return out
        uncond, text = out.chunk(2)
        if detach_uncond:
            uncond = uncond.detach()
        return uncond + guidance * (text - uncond)

    def _decode_latents(self, x: Tensor) -> Tensor:
        vae = self.pipeline.vae
        x = x / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(x.to(vae.dtype), return_dict=False)[0]
