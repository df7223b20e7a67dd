"""SD3-specific behaviour: CFG with a detached unconditional branch, the empty prompt
encoded once, no T5 (zeros), timestep = sigma * 1000, VAE scaling in decode."""

from __future__ import annotations

import pytest
import torch
from trainer_tiny import TINY_TEST_ENTRIES, load_tiny_adapter, perturb_lora

from divreward.trainer.models.sd3 import SD3Adapter

GUIDANCE = TINY_TEST_ENTRIES["sd3"].guidance


@pytest.fixture
def sd3(tiny_pipeline_dir) -> SD3Adapter:
    adapter = load_tiny_adapter("sd3", tiny_pipeline_dir("sd3"))
    assert isinstance(adapter, SD3Adapter)
    return adapter


def _x(adapter, n=2, seed=0):
    return adapter.initial_latents(
        n, height=16, width=16, generator=torch.Generator().manual_seed(seed)
    )


def _grads(params):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def test_cfg_formula_and_detached_uncond_branch(sd3):
    params = sd3.add_lora(rank=4, alpha=8)
    perturb_lora(sd3)  # B != 0 so that every LoRA parameter has a gradient
    embeds = sd3.encode_prompts(["a cat", "a dog"])
    neg = sd3.negative_embeds().repeat(2)
    x, sigma = _x(sd3), torch.tensor(0.7)
    with torch.no_grad():
        text = sd3.velocity(x, sigma, embeds, guidance=1.0)  # guidance <= 1: no CFG
        uncond = sd3.velocity(x, sigma, neg, guidance=1.0)
        cfg = sd3.velocity(x, sigma, embeds, guidance=GUIDANCE)
    torch.testing.assert_close(cfg, uncond + GUIDANCE * (text - uncond), rtol=1e-5, atol=1e-5)

    # Detached: d v / d theta = g * d text / d theta (the uncond branch carries nothing).
    sd3.velocity(x, sigma, embeds, guidance=GUIDANCE, detach_uncond=True).sum().backward()
    detached = _grads(params)
    for p in params:
        p.grad = None
    sd3.velocity(x, sigma, embeds, guidance=1.0).sum().backward()
    text_only = _grads(params)
    for p in params:
        p.grad = None
    sd3.velocity(x, sigma, embeds, guidance=GUIDANCE).sum().backward()
    full = _grads(params)
    for p in params:
        p.grad = None
    sd3.velocity(x, sigma, neg, guidance=1.0).sum().backward()
    uncond_only = _grads(params)

    def close(a, b):  # relative to the tensor's scale: sums of large terms round off
        return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-7

    for d, t, f, u in zip(detached, text_only, full, uncond_only, strict=True):
        assert close(d, GUIDANCE * t)
        # Not detached: the uncond branch adds (1 - g) * d uncond / d theta.
        assert close(f, GUIDANCE * t + (1 - GUIDANCE) * u)
    assert any(float((f - d).abs().max()) > 1e-4 for f, d in zip(full, detached, strict=True))


def test_negative_prompt_encoded_once_and_is_the_empty_prompt(sd3):
    calls = []
    hook = sd3.pipeline.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = sd3.negative_embeds()
        n = len(calls)
        assert n >= 1
        embeds = sd3.encode_prompts(["a cat"])
        with torch.no_grad():
            for _ in range(3):
                sd3.velocity(_x(sd3, 1), torch.tensor(0.5), embeds, guidance=GUIDANCE)
        assert sd3.negative_embeds() is first
        assert len(calls) == n + 1  # only "a cat" was encoded after the negative
    finally:
        hook.remove()
    assert first.prompts == [""]
    pe, _, pooled, _ = sd3.pipeline.encode_prompt(
        prompt=[""], prompt_2=None, prompt_3=None, device="cpu",
        do_classifier_free_guidance=False, max_sequence_length=32,
    )  # fmt: skip
    torch.testing.assert_close(first.tensors["prompt_embeds"], pe, rtol=0, atol=0)
    torch.testing.assert_close(first.tensors["pooled_prompt_embeds"], pooled, rtol=0, atol=0)


def test_without_t5_the_t5_tokens_are_zeros(sd3, tiny_pipeline_dir):
    assert sd3.pipeline.text_encoder_3 is None  # the tiny directory has no T5
    pe = sd3.encode_prompts(["a cat"]).tensors["prompt_embeds"]
    assert pe.shape == (1, 77 + 32, 32)  # 77 CLIP tokens + max_sequence_length T5 slots
    assert torch.all(pe[:, 77:] == 0) and torch.any(pe[:, :77] != 0)
    explicit = load_tiny_adapter("sd3", tiny_pipeline_dir("sd3"), text_encoder_3=False)
    assert explicit.pipeline.text_encoder_3 is None
    pe2 = explicit.encode_prompts(["a cat"]).tensors["prompt_embeds"]
    torch.testing.assert_close(pe2, pe, rtol=0, atol=0)


def test_timestep_is_sigma_times_1000(sd3):
    seen = {}

    def grab(module, args, kwargs):
        seen["t"] = kwargs["timestep"].clone()

    hook = sd3.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            sd3.velocity(
                _x(sd3), torch.tensor(0.25), sd3.encode_prompts(["a", "b"]), guidance=GUIDANCE
            )
    finally:
        hook.remove()
    assert seen["t"].tolist() == [250.0] * 4  # [uncond; text] x 2 images


def test_decode_applies_the_vae_scaling_and_shift(sd3):
    x = _x(sd3)
    vae = sd3.pipeline.vae
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.5035, 0.0609)
    with torch.no_grad():
        ref = vae.decode(x / 1.5035 + 0.0609).sample
    torch.testing.assert_close(sd3.decode(x), (ref / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_pipeline_dir):
    grads = []
    for ckpt in (False, True):
        adapter = load_tiny_adapter("sd3", tiny_pipeline_dir("sd3"), gradient_checkpointing=ckpt)
        assert adapter.transformer.gradient_checkpointing is ckpt
        torch.manual_seed(0)  # the gaussian LoRA init draws from the global generator
        params = adapter.add_lora(rank=4, alpha=8)
        perturb_lora(adapter)
        embeds = adapter.encode_prompts(["a cat"])
        v = adapter.velocity(_x(adapter, 1), torch.tensor(0.5), embeds, guidance=GUIDANCE)
        v.sum().backward()
        grads.append([p.grad for p in params])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
