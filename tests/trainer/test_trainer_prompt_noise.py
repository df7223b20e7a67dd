"""The torch port of DRIFT's noise-conditioned prompting equals the numpy reference in
divreward.core, and is deterministic per (sample, step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from divreward.core.config import NoisePromptConfig
from divreward.core.prompt_noise import annealing_gamma as ref_gamma
from divreward.core.prompt_noise import noisy_prompt_embedding as ref_noisy
from divreward.trainer.prompt_noise import PromptNoiser, annealing_gamma, noisy_prompt_embedding


@pytest.mark.parametrize("t", [0.0, 0.2, 0.4, 0.55, 0.7, 0.99, 1.0])
def test_gamma_equals_core(t: float) -> None:
    assert annealing_gamma(t, 0.4, 1.0) == pytest.approx(float(ref_gamma(t, 0.4, 1.0)))
    assert annealing_gamma(t, 0.1, 0.8) == pytest.approx(float(ref_gamma(t, 0.1, 0.8)))


@pytest.mark.parametrize(
    "cfg",
    [
        NoisePromptConfig(),
        NoisePromptConfig(s=0.5, tau1=0.2, tau2=0.9, psi=0.7),
        NoisePromptConfig(s=1.0, psi=0.0),
    ],
)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.8, 1.0])
def test_noisy_embedding_equals_core_per_prompt(cfg: NoisePromptConfig, t: float) -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 5, 8))
    n = rng.normal(size=(3, 5, 8))
    got = noisy_prompt_embedding(torch.from_numpy(e), t, torch.from_numpy(n), cfg).numpy()
    want = ref_noisy(e, t, n, cfg, axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # float32 in, float32 out, equal to the reference at float32 precision
    got32 = noisy_prompt_embedding(torch.from_numpy(e).float(), t, torch.from_numpy(n).float(), cfg)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-4, atol=1e-5)


def test_constant_row_is_a_shift_only_like_core() -> None:
    e = np.ones((1, 4))
    n = np.zeros((1, 4))
    got = noisy_prompt_embedding(torch.from_numpy(e), 1.0, torch.from_numpy(n)).numpy()
    np.testing.assert_allclose(got, ref_noisy(e, 1.0, n, axis=1))


@dataclass
class _Embeds:
    prompts: list[str]
    tensors: dict[str, torch.Tensor]


def test_noiser_is_deterministic_per_sample_and_step_and_skips_ids() -> None:
    cfg = NoisePromptConfig(s=0.5)
    emb = _Embeds(
        ["a", "b"],
        {
            "prompt_embeds": torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)),
            "pooled_prompt_embeds": torch.randn(2, 6, generator=torch.Generator().manual_seed(2)),
            "text_ids": torch.zeros(2, 3),
        },
    )
    noiser = PromptNoiser(cfg, seed=7)
    a = noiser.apply(emb, [10, 11], step_index=2, t=0.9)
    b = PromptNoiser(cfg, seed=7).apply(emb, [10, 11], step_index=2, t=0.9)
    for k in emb.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k])
    assert torch.equal(a.tensors["text_ids"], emb.tensors["text_ids"])
    assert not torch.equal(a.tensors["prompt_embeds"], emb.tensors["prompt_embeds"])
    # row 1 alone (the loss recomputes a minibatch) gives the same row
    one = _Embeds(["b"], {k: v[1:] for k, v in emb.tensors.items()})
    c = noiser.apply(one, [11], step_index=2, t=0.9)
    assert torch.equal(c.tensors["prompt_embeds"][0], a.tensors["prompt_embeds"][1])
    # another step or sample draws other noise; t <= tau1 leaves the embedding as it is
    d = noiser.apply(emb, [10, 11], step_index=3, t=0.9)
    assert not torch.equal(d.tensors["prompt_embeds"], a.tensors["prompt_embeds"])
    clean = noiser.apply(emb, [10, 11], step_index=3, t=0.3)
    assert torch.allclose(clean.tensors["prompt_embeds"], emb.tensors["prompt_embeds"], atol=1e-6)
