"""The Flow-GRPO SDE step and the ODE step, against diffusers' scheduler, torch's Normal
and hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from divreward.trainer.sde import ode_step, sde_step_with_logprob


def _xv(shape=(3, 4, 5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_noise_zero_equals_flow_match_euler_scheduler_step():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x, v = _xv()
    sample = x
    for i, t in enumerate(sched.timesteps):
        ours = sde_step_with_logprob(v, sample, sched.sigmas[i], sched.sigmas[i + 1], 0.0)
        ref = sched.step(v, t, sample).prev_sample
        torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=0)
        torch.testing.assert_close(
            ode_step(v, sample, sched.sigmas[i], sched.sigmas[i + 1]), ref, rtol=0, atol=0
        )
        assert torch.equal(ours.log_prob, torch.zeros(3))
        assert float(ours.std) == 0.0 and float(ours.std_t) == 0.0
        sample = ref
    assert float(sched.sigmas[0]) == 1.0 and float(sched.sigmas[-1]) == 0.0


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9), (0.7, 0.55), (0.3, 0.0)])
def test_log_prob_equals_torch_normal_mean_over_elements(sigma, sigma_next):
    x, v = _xv()
    out = sde_step_with_logprob(
        v, x, sigma, sigma_next, 0.7, generator=torch.Generator().manual_seed(1)
    )
    ref = (
        torch.distributions.Normal(out.mean, out.std).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
    )
    torch.testing.assert_close(out.log_prob, ref, rtol=1e-6, atol=1e-6)
    # Evaluating a given x' gives the same number and returns that x'.
    again = sde_step_with_logprob(v, x, sigma, sigma_next, 0.7, prev_sample=out.prev_sample)
    assert torch.equal(again.log_prob, out.log_prob)
    assert torch.equal(again.prev_sample, out.prev_sample)
    # Another x' gets the Normal's density of that x'.
    other = out.prev_sample + 0.01
    third = sde_step_with_logprob(v, x, sigma, sigma_next, 0.7, prev_sample=other)
    ref3 = torch.distributions.Normal(out.mean, out.std).log_prob(other).mean(dim=(1, 2, 3))
    torch.testing.assert_close(third.log_prob, ref3, rtol=1e-6, atol=1e-6)


def test_std_t_hand_numbers_and_sigma_one_substitution():
    x, v = _xv((2, 3))
    # sigma = 0.5: std_t = 0.7 * sqrt(0.5 / 0.5) = 0.7; dt = -0.1; std = 0.7 * sqrt(0.1)
    out = sde_step_with_logprob(v, x, 0.5, 0.4, 0.7, prev_sample=x)
    assert float(out.std_t) == pytest.approx(0.7, abs=1e-7)
    assert float(out.dt) == pytest.approx(-0.1, abs=1e-7)
    assert float(out.std) == pytest.approx(0.7 * math.sqrt(0.1), abs=1e-7)
    # Mean: x * (1 + 0.49 / 1 * -0.1) + v * (1 + 0.49 * 0.5 / 1) * -0.1
    torch.testing.assert_close(out.mean, x * (1 - 0.049) + v * (1.245 * -0.1), rtol=1e-6, atol=1e-6)
    # sigma = 1 uses sigma' = the schedule's second sigma: 0.8 -> 0.9 * sqrt(1 / 0.2)
    out1 = sde_step_with_logprob(v, x, 1.0, 0.8, 0.9, prev_sample=x)
    assert float(out1.std_t) == pytest.approx(0.9 * math.sqrt(5.0), rel=1e-6)
    assert math.isfinite(float(out1.log_prob.sum()))
    # ... and an explicit sigma_max_next wins over sigma_next.
    out2 = sde_step_with_logprob(v, x, 1.0, 0.8, 0.9, sigma_max_next=0.75, prev_sample=x)
    assert float(out2.std_t) == pytest.approx(0.9 * math.sqrt(4.0), rel=1e-6)
    # Mean at sigma = 1 (std_t² = 3.24, dt = -0.2): the v coefficient is (1 + 0) * dt
    torch.testing.assert_close(
        out2.mean, x * (1 + 3.24 / 2 * -0.2) + v * -0.2, rtol=1e-6, atol=1e-6
    )


def test_per_sample_sigmas_match_scalar_calls():
    x, v = _xv((3, 2, 4))
    sig = torch.tensor([1.0, 0.6, 0.2])
    nxt = torch.tensor([0.8, 0.4, 0.0])
    prev = x + 0.1
    out = sde_step_with_logprob(v, x, sig, nxt, 0.7, prev_sample=prev, sigma_max_next=0.8)
    assert out.std_t.shape == (3,) and out.dt.shape == (3,)
    for i in range(3):
        one = sde_step_with_logprob(
            v[i : i + 1],
            x[i : i + 1],
            float(sig[i]),
            float(nxt[i]),
            0.7,
            prev_sample=prev[i : i + 1],
        )
        torch.testing.assert_close(out.log_prob[i : i + 1], one.log_prob, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.mean[i : i + 1], one.mean, rtol=1e-6, atol=1e-6)


def test_bf16_inputs_are_computed_in_fp32():
    x, v = _xv()
    xb, vb = x.bfloat16(), v.bfloat16()
    out = sde_step_with_logprob(vb, xb, 0.6, 0.5, 0.7, prev_sample=x)
    ref = sde_step_with_logprob(vb.float(), xb.float(), 0.6, 0.5, 0.7, prev_sample=x)
    for t in (out.prev_sample, out.log_prob, out.mean, out.std, out.std_t, out.dt):
        assert t.dtype == torch.float32
    assert torch.equal(out.log_prob, ref.log_prob) and torch.equal(out.mean, ref.mean)
    # Autocast does not change the dtype of the step either.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sde_step_with_logprob(vb, xb, 0.6, 0.5, 0.7, prev_sample=x)
    assert auto.mean.dtype == torch.float32 and torch.equal(auto.log_prob, ref.log_prob)
    assert ode_step(vb, xb, 0.6, 0.5).dtype == torch.float32


def test_sampling_statistics_and_generators():
    x, v = torch.zeros(2, 20000), torch.zeros(2, 20000)
    out = sde_step_with_logprob(v, x, 0.5, 0.3, 0.7, generator=torch.Generator().manual_seed(0))
    # x' - mean ~ N(0, std²): the empirical std is within 3% of std_t * sqrt(-dt).
    emp = (out.prev_sample - out.mean).std()
    assert float(emp) == pytest.approx(0.7 * math.sqrt(0.2), rel=0.03)
    # One generator per row: a row's noise does not depend on its batch.
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = sde_step_with_logprob(v, x, 0.5, 0.3, 0.7, generator=gens)
    alone = sde_step_with_logprob(
        v[1:], x[1:], 0.5, 0.3, 0.7, generator=[torch.Generator().manual_seed(6)]
    )
    assert torch.equal(both.prev_sample[1:], alone.prev_sample)


def test_gradient_reaches_velocity_not_prev_sample():
    x, v = _xv((2, 8))
    v.requires_grad_(True)
    prev = (x + 0.05).requires_grad_(True)
    out = sde_step_with_logprob(v, x, 0.5, 0.4, 0.7, prev_sample=prev)
    out.log_prob.sum().backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0
    assert prev.grad is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma": 0.4, "sigma_next": 0.5}, "sigma > sigma_next"),
        ({"sigma": 1.2, "sigma_next": 0.5}, "sigma > sigma_next"),
        ({"sigma": torch.ones(4), "sigma_next": 0.5}, r"shape \(2,\)"),
        ({"sigma": 0.5, "sigma_next": 0.4, "noise_level": -1.0}, "noise_level"),
    ],
)
def test_bad_input_errors(kwargs, match):
    x, v = _xv((2, 3))
    args = {"noise_level": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        sde_step_with_logprob(v, x, args["sigma"], args["sigma_next"], args["noise_level"])
