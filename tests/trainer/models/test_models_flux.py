"""Flux-specific behaviour: the guidance embedding (no CFG), 2x2-packed latents with the
pipeline's ids, the resolution-shifted schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from trainer_tiny import load_tiny_adapter

from divreward.trainer.models.flux import FluxAdapter


@pytest.fixture
def flux(tiny_pipeline_dir) -> FluxAdapter:
    adapter = load_tiny_adapter("flux", tiny_pipeline_dir("flux"))
    assert isinstance(adapter, FluxAdapter)
    return adapter


def test_pack_is_the_pipelines_and_unpack_inverts_it():
    x = torch.randn(2, 3, 8, 6)
    packed = FluxAdapter.pack(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 3, 8, 6), rtol=0, atol=0)
    assert packed.shape == (2, 4 * 3, 12)
    assert torch.equal(FluxAdapter.unpack(packed, 8, 6), x)


def test_guidance_is_embedded_not_cfg(flux):
    assert flux.negative_embeds() is None
    assert flux.transformer.config.guidance_embeds
    seen = {}

    def grab(module, args, kwargs):
        seen.update({k: kwargs[k] for k in ("guidance", "timestep", "img_ids", "txt_ids")})
        seen["hidden"] = kwargs["hidden_states"].shape

    hook = flux.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    embeds = flux.encode_prompts(["a cat", "a dog"])
    x = flux.initial_latents(2, height=16, width=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 16, 16)  # unpacked (B, C, h, w); C = in_channels / 4
    try:
        with torch.no_grad():
            v35 = flux.velocity(x, torch.tensor(0.25), embeds, guidance=3.5)
            v1 = flux.velocity(x, torch.tensor(0.25), embeds, guidance=1.0)
    finally:
        hook.remove()
    assert seen["hidden"] == (2, 64, 4)  # one forward of B rows (no uncond), packed
    assert seen["guidance"].tolist() == [1.0, 1.0]
    assert seen["timestep"].tolist() == [0.25, 0.25]  # (sigma * 1000) / 1000
    ids = FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32)
    assert torch.equal(seen["img_ids"], ids) and torch.all(seen["txt_ids"] == 0)
    assert v35.shape == x.shape and not torch.allclose(v35, v1, atol=1e-5)


@pytest.mark.parametrize("side", [16, 32])
def test_schedule_is_the_pipelines_shifted_schedule(flux, side):
    sig = flux.sigmas(6, height=side, width=side)
    cfg = flux.pipeline.scheduler.config
    mu = calculate_shift(
        (side // 2) ** 2,
        cfg.base_image_seq_len,
        cfg.max_image_seq_len,
        cfg.base_shift,
        cfg.max_shift,
    )
    t = np.linspace(1.0, 1 / 6, 6)
    shifted = np.exp(mu) / (np.exp(mu) + (1 / t - 1))  # the exponential time shift
    np.testing.assert_allclose(sig[:-1].numpy(), shifted, rtol=1e-6)
    assert float(sig[0]) == 1.0 and float(sig[-1]) == 0.0
    ref = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    ref.set_timesteps(sigmas=t, mu=mu)
    assert torch.equal(sig, ref.sigmas.float())


def test_schedule_depends_on_resolution(flux):
    assert not torch.equal(flux.sigmas(6, height=16, width=16), flux.sigmas(6, height=64, width=64))
