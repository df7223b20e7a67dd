"""Flux.1 through diffusers' ``FluxPipeline``.

- Prompts: the pipeline's ``encode_prompt`` (CLIP pooled + T5 sequence).
- Guidance: Flux.1-dev's guidance *embedding* (a transformer input), no CFG and no
  negative prompt.
- Latents: held **unpacked** ``(B, C, h, w)`` in float32 (the layout the pipeline draws its
  noise in); :meth:`velocity` packs them into 2x2 patches ``(B, h/2 * w/2, 4C)`` with the
  pipeline's ``img_ids``/``txt_ids`` and unpacks the velocity. Packing is a permutation,
  so the element-wise SDE step and its per-element mean log-prob are the same as on
  packed latents.
- Schedule: the pipeline's ``linspace(1, 1/T, T)`` shifted with ``mu`` from the packed
  image sequence length; timestep ``(sigma * 1000) / 1000`` as the pipeline computes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from divreward.trainer.models import tiny
from divreward.trainer.models.base import (
    ATTENTION_LORA_TARGETS,
    LatentDiffusionAdapter,
    PromptEmbeds,
)

__all__ = ["FluxAdapter"]


class FluxAdapter(LatentDiffusionAdapter):
    family: ClassVar[str] = "flux"
    # Flow-GRPO's Flux targets: SD3's attention projections plus the feed-forwards.
    default_lora_targets: ClassVar[tuple[str, ...]] = (
        *ATTENTION_LORA_TARGETS,
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )

    def __init__(self, pipeline: Any, *, max_sequence_length: int = 512, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pretrained(cls, model: str, **options: Any) -> FluxAdapter:
        """``model``: a hub id or a local pipeline directory. ``options``:
        :meth:`DiffusionAdapter.from_diffusers`'s (device, dtype, vae_dtype, autocast_dtype,
        gradient_checkpointing, prompt_cache_size) and ``max_sequence_length`` (default
        512)."""
        from diffusers import FluxPipeline

        return cls.from_diffusers(FluxPipeline, model, **options)

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int = 0) -> Path:
        """A random tiny ``FluxPipeline`` (guidance-embedded, like Flux.1-dev) in ``out_dir``."""
        return tiny.build_pipeline_dir("flux", _tiny_pipeline, out_dir, seed)

    def _encode_uncached(self, prompts: list[str]) -> dict[str, Tensor]:
        with self._autocast():
            pe, pooled, _text_ids = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
        return {
            "prompt_embeds": pe.to(self.dtype),  # (B, T5 tokens, joint_attention_dim)
            "pooled_prompt_embeds": pooled.to(self.dtype),  # (B, CLIP hidden)
        }

    def negative_embeds(self) -> None:
        return None  # guidance is embedded: no CFG, no negative prompt

    def _latent_patch(self) -> tuple[int, str]:
        return 2, "2x2 packing"

    def _latent_channels(self) -> int:
        return int(self.transformer_config.in_channels) // 4  # packed 2x2

    def sigmas(self, num_steps: int, *, height: int, width: int) -> Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        h, w = self._latent_hw(height, width)
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)
        cfg = sched.config
        mu = calculate_shift(
            (h // 2) * (w // 2),  # the packed image sequence length
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        base = np.linspace(1.0, 1 / num_steps, num_steps)
        if cfg.get("use_flow_sigmas", False):
            sched.set_timesteps(num_steps, device="cpu", mu=mu)
        else:
            sched.set_timesteps(sigmas=base, device="cpu", mu=mu)
        return sched.sigmas.float().clone()

    @staticmethod
    def pack(x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, h/2 * w/2, 4C), the pipeline's 2x2 packing (adapted from
        diffusers 0.42.1 ``FluxPipeline._pack_latents``; a test checks they agree)."""
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(x: Tensor, h: int, w: int) -> Tensor:
        """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of :meth:`pack`."""
        b, _, c4 = x.shape
        x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, h, w)

    def _denoise(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, guidance: float) -> Tensor:
        from diffusers import FluxPipeline

        n, _, h, w = x.shape
        pe = embeds.tensors["prompt_embeds"]
        timestep = (t * 1000).to(self.dtype) / 1000  # exactly the pipeline's arithmetic
        g = None
        if self.transformer_config.guidance_embeds:
            g = torch.full([n], guidance, device=self.device, dtype=torch.float32)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, self.device, pe.dtype)
        txt_ids = torch.zeros(pe.shape[1], 3, device=self.device, dtype=pe.dtype)
        with self._autocast():
            out = self.transformer(
                hidden_states=self.pack(x.to(self.dtype)),
                timestep=timestep,
                guidance=g,
                pooled_projections=embeds.tensors["pooled_prompt_embeds"],
                encoder_hidden_states=pe,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        return self.unpack(out.float(), h, w)


def _tiny_pipeline(seed: int) -> Any:
    """Flux at diffusers' test sizes (TRAINER.md), with a tiny T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,  # Flux.1-dev's embedded guidance
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(tiny.clip_config())  # pooled output = hidden 32
    t5_tokenizer = tiny.t5_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(seed + 3)
    vae = tiny.tiny_vae(latent_channels=1)  # 2x2 packing gives the transformer's 4 channels
    # Flux.1-dev's scheduler: resolution-dependent shift (mu from the image sequence length).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny.clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
    )
