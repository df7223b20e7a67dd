"""The adapter contract, for every registered model family, on tiny random pipelines.

Each test runs once per family in the registry; a family without a tiny entry fails
``test_every_registered_family_has_a_tiny_entry``.
"""

from __future__ import annotations

import pytest
import torch
from trainer_tiny import TINY_TEST_ENTRIES, load_tiny_adapter, perturb_lora

from divreward.trainer.models import ADAPTERS, DiffusionAdapter, PromptEmbeds, get_adapter
from divreward.trainer.models.base import PromptCache
from divreward.trainer.models.tiny import ensure_tiny_model, tiny_builder

FAMILIES = sorted(ADAPTERS)
PROMPTS = ["a red cube on a table", "a cat"]


def test_every_registered_family_has_a_tiny_entry():
    assert set(ADAPTERS) == set(TINY_TEST_ENTRIES), "a registered family lacks a tiny test entry"
    for name in ADAPTERS:
        cls = get_adapter(name)
        assert issubclass(cls, DiffusionAdapter) and cls.family == name
        assert cls.default_lora_targets
        assert "build_tiny" in vars(cls), f"family {name!r} lacks its own tiny builder"


def test_registry_errors_and_dotted_paths():
    with pytest.raises(KeyError, match="unknown model family 'nope'"):
        get_adapter("nope")
    assert get_adapter("divreward.trainer.models.sd3:SD3Adapter") is get_adapter("sd3")
    with pytest.raises(KeyError, match="cannot import"):
        get_adapter("divreward.trainer.models.sd3:Missing")
    with pytest.raises(TypeError, match="not a DiffusionAdapter"):
        get_adapter("divreward.trainer.models.base:PromptEmbeds")


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def adapter(family, tiny_pipeline_dir) -> DiffusionAdapter:
    return load_tiny_adapter(family, tiny_pipeline_dir(family))


def _rollout(adapter, embeds, *, seed=0, noise_level=0.7, num_steps=4, **kw):
    e = TINY_TEST_ENTRIES[adapter.family]
    return adapter.rollout(
        embeds,
        num_steps=num_steps,
        guidance=e.guidance,
        noise_level=noise_level,
        height=e.height,
        width=e.width,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def test_rollout_shapes_and_records(adapter):
    embeds = adapter.encode_prompts(PROMPTS).repeat(2)  # 4 images
    r = _rollout(adapter, embeds)
    e = TINY_TEST_ENTRIES[adapter.family]
    latent = tuple(adapter.initial_latents(1, height=e.height, width=e.width).shape[1:])
    assert r.images.shape == (4, 3, e.height, e.width) and r.images.device.type == "cpu"
    assert (
        r.images.dtype == torch.float32 and 0 <= float(r.images.min()) <= float(r.images.max()) <= 1
    )
    assert r.latents.shape == (4, 5, *latent) and r.latents.dtype == torch.float32
    assert r.means.shape == (4, 4, *latent)
    assert r.log_probs.shape == (4, 4) and r.log_probs.dtype == torch.float32
    assert r.sigmas.shape == (5,) and float(r.sigmas[0]) == 1.0 and float(r.sigmas[-1]) == 0.0
    assert r.sde_mask.tolist() == [True, True, True, False]  # default: all but the last
    assert torch.all(r.log_probs[:, :3] != 0) and torch.all(r.log_probs[:, 3] == 0)
    # The last (ODE) step lands on its mean; SDE steps do not.
    assert torch.equal(r.latents[:, 4], r.means[:, 3])
    assert not torch.equal(r.latents[:, 1], r.means[:, 0])
    # The recorded log-probs are the Normal densities of the recorded latents.
    for j in range(3):
        s, s1 = float(r.sigmas[j]), float(r.sigmas[j + 1])
        s_prime = float(r.sigmas[1]) if s == 1.0 else s
        std = 0.7 * (s / (1 - s_prime)) ** 0.5 * (s - s1) ** 0.5
        ref = torch.distributions.Normal(r.means[:, j], std).log_prob(r.latents[:, j + 1])
        torch.testing.assert_close(r.log_probs[:, j], ref.flatten(1).mean(1), rtol=1e-5, atol=1e-5)
    # Same generator seed, same rollout; another seed, other images.
    assert torch.equal(_rollout(adapter, embeds).latents, r.latents)
    assert not torch.equal(_rollout(adapter, embeds, seed=1).latents, r.latents)
    # sde_steps picks the SDE steps; the others are ODE with log-prob 0.
    r2 = _rollout(adapter, embeds, sde_steps=[1, 2])
    assert r2.sde_mask.tolist() == [False, True, True, False]
    assert torch.all(r2.log_probs[:, 0] == 0) and torch.all(r2.log_probs[:, 1] != 0)
    with pytest.raises(ValueError, match="sde_steps holds 4"):
        _rollout(adapter, embeds, sde_steps=[4])


def test_ode_rollout_equals_the_diffusers_pipeline(adapter):
    """noise_level 0: the adapter's rollout is the pipeline's own sampling (schedule,
    timestep scaling, CFG or guidance embedding, packing, VAE scaling)."""
    e = TINY_TEST_ENTRIES[adapter.family]
    if not e.diffusers_pipeline:
        pytest.skip(f"{adapter.family}: no diffusers pipeline to compare with")
    r = _rollout(adapter, adapter.encode_prompts(PROMPTS), noise_level=0.0)
    assert torch.all(r.log_probs == 0)
    kw = {
        "prompt": PROMPTS,
        "num_inference_steps": 4,
        "guidance_scale": e.guidance,
        "height": e.height,
        "width": e.width,
        "max_sequence_length": e.load_options["max_sequence_length"],
    }
    pipe = adapter.pipeline
    lat = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="latent").images
    ours = r.latents[:, -1]
    if adapter.family == "flux":
        ours = adapter.pack(ours)  # the pipeline returns packed latents
    torch.testing.assert_close(ours, lat, rtol=1e-5, atol=1e-5)
    img = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(r.images, img.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pipe.scheduler.sigmas.float(), r.sigmas, rtol=0, atol=0)


def test_ratio_is_exactly_one_on_the_first_epoch(adapter):
    adapter.add_lora(rank=4, alpha=8)
    perturb_lora(adapter)  # a policy that differs from the base model
    e = TINY_TEST_ENTRIES[adapter.family]
    embeds = adapter.encode_prompts(PROMPTS).repeat(2)
    r = _rollout(adapter, embeds)
    for j in torch.nonzero(r.sde_mask).flatten().tolist():
        out = adapter.step(embeds, r, j, guidance=e.guidance, noise_level=0.7)
        ratio = torch.exp(out.log_prob - r.log_probs[:, j])
        assert torch.equal(ratio, torch.ones(4)), (j, ratio)
        assert torch.equal(out.mean.detach(), r.means[:, j])
        # Minibatches of the rollout's rows: the same numbers within 1e-6.
        for batch in (slice(1, 3), torch.tensor([3, 0])):
            sub = adapter.step(embeds, r, j, guidance=e.guidance, noise_level=0.7, batch=batch)
            ref = r.log_probs[batch, j]
            torch.testing.assert_close(
                torch.exp(sub.log_prob - ref), torch.ones(2), rtol=0, atol=1e-6
            )


def test_ratio_is_one_with_per_step_embeds(adapter):
    """DRIFT-style per-step prompt embeddings: the step given that step's embeds
    reproduces the rollout's log-prob."""
    e = TINY_TEST_ENTRIES[adapter.family]
    base = adapter.encode_prompts(PROMPTS)

    def at(j: int, t: float) -> PromptEmbeds:
        g = torch.Generator().manual_seed(100 + j)
        return base.map(lambda k, v: v + 0.05 * t * torch.randn(v.shape, generator=g))

    r = _rollout(adapter, base, embeds_at=at)
    plain = _rollout(adapter, base)
    assert not torch.equal(r.latents[:, 1], plain.latents[:, 1])  # the noise was used
    for j in range(3):
        out = adapter.step(at(j, float(r.sigmas[j])), r, j, guidance=e.guidance, noise_level=0.7)
        assert torch.equal(out.log_prob.detach(), r.log_probs[:, j])


def test_gradients_reach_lora_parameters_only(adapter):
    n_base = sum(p.numel() for p in adapter.transformer.parameters())
    params = adapter.add_lora(rank=4, alpha=8)
    names = {id(p): n for n, p in adapter.transformer.named_parameters()}
    assert params and all("lora_" in names[id(p)] for p in params)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    trainable = [p for p in adapter.transformer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    # Only the target modules got a LoRA.
    targets = adapter.default_lora_targets
    for n in (names[id(p)] for p in params):
        module = n.split(".lora_")[0]
        assert any(module.endswith(t) for t in targets), n
    e = TINY_TEST_ENTRIES[adapter.family]
    embeds = adapter.encode_prompts(PROMPTS)
    r = _rollout(adapter, embeds)
    adapter.step(embeds, r, 1, guidance=e.guidance, noise_level=0.7).log_prob.mean().backward()
    reached = []
    for n, p in adapter.transformer.named_parameters():
        if "lora_" in n:
            assert p.grad is not None, n
            if "lora_B" in n and float(p.grad.abs().sum()) > 0:
                reached.append(n.split(".lora_")[0])
        else:
            assert p.grad is None, n
    # B starts at 0, so A gets no gradient yet; B does wherever the module feeds the image
    # output (not e.g. the text-token queries of a last block whose text output is unused).
    n_b = sum("lora_B" in names[id(p)] for p in params)
    assert len(reached) >= 0.75 * n_b, reached
    if TINY_TEST_ENTRIES[adapter.family].diffusers_pipeline:
        assert any(m.endswith("attn.to_q") for m in reached)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        module = getattr(adapter.pipeline, name, None)
        if module is not None:
            assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    # The reference is the same network: no second copy of the base weights.
    lora = sum(p.numel() for p in params)
    assert sum(p.numel() for p in adapter.transformer.parameters()) == n_base + lora


def test_reference_is_the_base_model_and_the_policy_moves(adapter):
    e = TINY_TEST_ENTRIES[adapter.family]
    embeds = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_latents(
        2, height=e.height, width=e.width, generator=torch.Generator().manual_seed(3)
    )
    sigma = torch.tensor(0.6)

    def v() -> torch.Tensor:
        with torch.no_grad():
            return adapter.velocity(x, sigma, embeds, guidance=e.guidance)

    base = v()
    with adapter.reference():  # no LoRA yet: the network is the reference
        assert torch.equal(v(), base)
    adapter.add_lora(rank=4, alpha=8)
    assert torch.equal(v(), base)  # gaussian init: B = 0, the policy starts at the base
    perturb_lora(adapter)
    policy = v()
    assert not torch.allclose(policy, base, atol=1e-4)
    with adapter.reference():
        assert torch.equal(v(), base)
    assert torch.equal(v(), policy)  # the adapter is back on after the context
    with pytest.raises(RuntimeError, match="boom"), adapter.reference():
        raise RuntimeError("boom")
    assert torch.equal(v(), policy)  # ... also after an exception inside it


def test_save_lora_loads_into_a_fresh_pipeline(adapter, family, tiny_pipeline_dir, tmp_path):
    e = TINY_TEST_ENTRIES[family]
    adapter.add_lora(rank=4, alpha=8)
    perturb_lora(adapter, seed=1)
    embeds = adapter.encode_prompts(PROMPTS)
    x = adapter.initial_latents(
        2, height=e.height, width=e.width, generator=torch.Generator().manual_seed(4)
    )
    with torch.no_grad():
        policy = adapter.velocity(x, torch.tensor(0.5), embeds, guidance=e.guidance)
    adapter.save_lora(tmp_path / "lora")
    if e.diffusers_pipeline:
        assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
        fresh = load_tiny_adapter(family, tiny_pipeline_dir(family))
        embeds2 = fresh.encode_prompts(PROMPTS)
        with torch.no_grad():
            before = fresh.velocity(x, torch.tensor(0.5), embeds2, guidance=e.guidance)
        fresh.pipeline.load_lora_weights(str(tmp_path / "lora"))
        with torch.no_grad():
            after = fresh.velocity(x, torch.tensor(0.5), embeds2, guidance=e.guidance)
        assert not torch.allclose(after, before, atol=1e-4)  # the LoRA changed the output ...
        torch.testing.assert_close(after, policy, rtol=1e-5, atol=1e-6)  # ... to the policy's

    # lora_state_dict round trip (resume): another LoRA gets the same weights.
    state = adapter.lora_state_dict()
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    other = load_tiny_adapter(family, tiny_pipeline_dir(family))
    other.add_lora(rank=4, alpha=8)
    other.load_lora_state_dict(state)
    with torch.no_grad():
        again = other.velocity(
            x, torch.tensor(0.5), other.encode_prompts(PROMPTS), guidance=e.guidance
        )
    assert torch.equal(again, policy)
    with pytest.raises(ValueError, match="keys differ"):
        other.load_lora_state_dict({"nope.lora_A.weight": torch.zeros(1)})


def test_lora_errors(adapter):
    with pytest.raises(ValueError, match="no LoRA attached"):
        adapter.save_lora("/nonexistent")
    with pytest.raises(ValueError, match=r"no module .* matches"):
        adapter.add_lora(rank=2, alpha=4, targets=["no_such_module"])


def test_encode_prompts_caches_per_text(adapter, monkeypatch):
    encoded: list[list[str]] = []  # texts per call of the family's encoder
    real = adapter._encode_uncached
    monkeypatch.setattr(adapter, "_encode_uncached", lambda p: encoded.append(list(p)) or real(p))
    calls = []  # forward calls of the text encoder, where there is one
    encoder = getattr(adapter.pipeline, "text_encoder", None)
    hook = encoder.register_forward_hook(lambda *a: calls.append(1)) if encoder else None
    try:
        first = adapter.encode_prompts(["a", "b", "a"])
        n_first = len(calls)
        assert encoded == [["a", "b"]]  # one call, each distinct text once
        assert encoder is None or n_first >= 1
        for k in first.tensors:
            assert torch.equal(first.tensors[k][0], first.tensors[k][2])
        second = adapter.encode_prompts(["b", "a"])
        assert encoded == [["a", "b"]] and len(calls) == n_first  # cached: no encoder run
        for k in first.tensors:
            assert torch.equal(second.tensors[k][0], first.tensors[k][1])
        adapter.encode_prompts(["c", "a"])
        assert encoded == [["a", "b"], ["c"]]  # only the new text is encoded
        assert len(calls) == 2 * n_first
    finally:
        if hook is not None:
            hook.remove()
    # The cached rows are the family's own encodings (up to the batch-size dependence of
    # CPU kernels: "b" was encoded in a batch of two).
    ref = real(["b"])
    for k, t in ref.items():
        torch.testing.assert_close(second.tensors[k][0], t[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no prompts"):
        adapter.encode_prompts([])


def test_step_input_errors(adapter):
    e = TINY_TEST_ENTRIES[adapter.family]
    embeds = adapter.encode_prompts(PROMPTS)
    r = _rollout(adapter, embeds, num_steps=2)
    with pytest.raises(ValueError, match="rollout's 2"):
        adapter.step(embeds.select([0]), r, 0, guidance=e.guidance, noise_level=0.7)
    with pytest.raises(ValueError, match="j=2 outside"):
        adapter.step(embeds, r, 2, guidance=e.guidance, noise_level=0.7)
    if adapter.family == "flux":  # 2x2 packing (the tiny SD3's VAE and patch factors are 1)
        with pytest.raises(ValueError, match="multiples of 2"):
            adapter.initial_latents(1, height=e.height + 1, width=e.width)


def test_prompt_embeds_helpers():
    pe = PromptEmbeds(["a", "b"], {"x": torch.tensor([[1.0], [2.0]])})
    assert pe.repeat(2).prompts == ["a", "a", "b", "b"]
    assert pe.repeat(2).tensors["x"].flatten().tolist() == [1, 1, 2, 2]
    assert pe.select([1, 0]).prompts == ["b", "a"]
    assert pe.select(torch.tensor([1])).tensors["x"].tolist() == [[2.0]]
    assert pe.select(slice(0, 1)).prompts == ["a"]
    assert pe.map(lambda k, v: v * 3).tensors["x"].flatten().tolist() == [3, 6]
    both = PromptEmbeds.cat([pe, pe.select([0])])
    assert both.prompts == ["a", "b", "a"] and both.tensors["x"].shape == (3, 1)
    with pytest.raises(ValueError, match=r"expected a batch-first tensor with 2 rows"):
        PromptEmbeds(["a", "b"], {"x": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="keys differ"):
        PromptEmbeds.cat([pe, PromptEmbeds(["c"], {"y": torch.zeros(1, 1)})])


def test_prompt_cache_is_a_bounded_lru(adapter):
    cache = PromptCache(2)
    cache.put("a", {"x": torch.zeros(1)})
    cache.put("b", {"x": torch.ones(1)})
    cache.get("a")  # "a" is now the most recent
    cache.put("c", {"x": torch.ones(1)})
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    with pytest.raises(ValueError, match="cache size must be >= 1"):
        PromptCache(0)
    adapter._cache = PromptCache(2)
    with pytest.raises(ValueError, match="exceed the prompt cache"):
        adapter.encode_prompts(["p1", "p2", "p3"])


def test_tiny_builds_are_cached_and_guarded(tmp_path):
    family, path = ensure_tiny_model("tiny-sd3", tmp_path)
    assert family == "sd3" and path == tmp_path / "sd3" and (path / "model_index.json").is_file()
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_model("tiny-sd3", tmp_path)[1] == path
    # the marker makes a rebuild a no-op: nothing was written again
    assert (path / "model_index.json").stat().st_mtime_ns == stamp
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a tiny sd3 pipeline"):
        tiny_builder("sd3")(tmp_path / "real")
    with pytest.raises(KeyError, match="unknown tiny model"):
        ensure_tiny_model("tiny-nope", tmp_path)


@pytest.mark.slow
def test_bf16_weights_keep_the_trainer_numbers_in_fp32(family, tiny_pipeline_dir):
    """The dtype path of a bf16 model (what a GPU run uses), on CPU: latents, log-probs
    and LoRA parameters stay fp32, the VAE decodes in fp32, and the ratio is still 1."""
    adapter = load_tiny_adapter(family, tiny_pipeline_dir(family), dtype=torch.bfloat16)
    assert adapter.transformer.dtype == torch.bfloat16
    vae = getattr(adapter.pipeline, "vae", None)
    assert vae is None or vae.dtype == torch.float32  # decoding stays fp32
    params = adapter.add_lora(rank=4, alpha=8)
    assert {p.dtype for p in params} == {torch.float32}
    perturb_lora(adapter)
    e = TINY_TEST_ENTRIES[family]
    embeds = adapter.encode_prompts(PROMPTS)
    r = _rollout(adapter, embeds, num_steps=3)
    assert r.latents.dtype == r.log_probs.dtype == r.images.dtype == torch.float32
    for j in (0, 1):
        out = adapter.step(embeds, r, j, guidance=e.guidance, noise_level=0.7)
        assert torch.equal(out.log_prob.detach(), r.log_probs[:, j])
    out.log_prob.mean().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


def test_autocast_is_for_cuda_only(family, tiny_pipeline_dir):
    with pytest.raises(ValueError, match=r"autocast_dtype=torch\.bfloat16 is for CUDA"):
        load_tiny_adapter(family, tiny_pipeline_dir(family), autocast_dtype=torch.bfloat16)


_THROWAWAY_FAMILY = '''
"""A throwaway family: SD3 with a plain (unshifted) flow schedule. One file."""
from typing import Any, ClassVar

from divreward.trainer.models import sd3, tiny


def _pipeline(seed: int) -> Any:
    pipe = sd3._tiny_pipeline(seed)
    pipe.scheduler.register_to_config(shift=1.0)
    return pipe


class PlainSD3Adapter(sd3.SD3Adapter):
    family: ClassVar[str] = "plainsd3"

    @classmethod
    def build_tiny(cls, out_dir, seed=0):
        return tiny.build_pipeline_dir("plainsd3", _pipeline, out_dir, seed)
'''


def test_a_new_family_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    """A family written in one file (its tiny builder included) and registered by one line
    is built, loaded and sampled by the trainer's own loader from ``model: tiny-<family>``."""
    from divreward.trainer.config import load_config
    from divreward.trainer.loop import load_adapter
    from divreward.trainer.models.registry import ADAPTERS

    (tmp_path / "throwaway_family.py").write_text(_THROWAWAY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ADAPTERS, "plainsd3", "throwaway_family:PlainSD3Adapter")  # the line

    cfg = load_config(
        "tiny-cpu", ["model=tiny-plainsd3", "family=plainsd3", f"tiny_models_dir={tmp_path}"]
    )
    adapter = load_adapter(cfg, torch.device("cpu"))
    assert type(adapter).__name__ == "PlainSD3Adapter" and adapter.family == "plainsd3"
    assert (tmp_path / "plainsd3" / "model_index.json").is_file()
    # its own builder ran: diffusers' unshifted schedule, not SD3.5's shift 3
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)
    ref.set_timesteps(4)
    sig = adapter.sigmas(4, height=cfg.height, width=cfg.width)
    torch.testing.assert_close(sig, torch.tensor([1.0, 0.667, 0.334, 0.001, 0.0]))
    assert torch.equal(sig, ref.sigmas.float())
    embeds = adapter.encode_prompts(PROMPTS)
    ro = adapter.rollout(
        embeds,
        num_steps=3,
        guidance=cfg.guidance,
        noise_level=0.7,
        height=cfg.height,
        width=cfg.width,
        generator=torch.Generator().manual_seed(0),
    )
    assert ro.images.shape == (2, 3, cfg.height, cfg.width) and ro.log_probs.shape == (2, 3)
    assert ensure_tiny_model("tiny-plainsd3", tmp_path)[0] == "plainsd3"


def test_register_family_at_runtime(monkeypatch):
    """register_family names a family outside the package (as the collapse experiment does
    with its toy family): the same target again is a no-op, another target under a taken
    name and a target that is not 'module:Class' are errors naming what is wrong."""
    from divreward.trainer.models.registry import ADAPTERS, register_family

    monkeypatch.delitem(ADAPTERS, "elsewhere", raising=False)
    register_family("elsewhere", "divreward.trainer.models.sd3:SD3Adapter")
    register_family("elsewhere", "divreward.trainer.models.sd3:SD3Adapter")
    assert get_adapter("elsewhere").__name__ == "SD3Adapter"
    with pytest.raises(ValueError, match="'elsewhere' is already"):
        register_family("elsewhere", "divreward.trainer.models.flux:FluxAdapter")
    with pytest.raises(ValueError, match="not 'module:Class'"):
        register_family("other", "divreward.trainer.models.sd3")
    monkeypatch.delitem(ADAPTERS, "elsewhere")
