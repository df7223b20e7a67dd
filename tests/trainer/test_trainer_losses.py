"""The loss terms on hand-made numbers (PPO-clip, KL of Eq. 6 and the reference form,
SA-Reg's W2 of Eqs. 13-14), and gradients through the regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from divreward.trainer.losses import kl_penalty, mean_sq_diff, ppo_clip_loss, sa_reg_w2


def test_ppo_clip_matches_the_formula_by_hand() -> None:
    eps = 0.1
    old = torch.zeros(4)
    # ratios e^0.2 (above 1+eps), e^-0.2 (below 1-eps), e^0.05 (inside), 1
    new = torch.tensor([0.2, -0.2, 0.05, 0.0])
    adv = torch.tensor([1.0, 1.0, -2.0, 7.0])  # 7 is clamped to 5
    out = ppo_clip_loss(new, old, adv, clip_range=eps, adv_clip_max=5.0)
    r = [math.exp(0.2), math.exp(-0.2), math.exp(0.05), 1.0]
    a = [1.0, 1.0, -2.0, 5.0]
    terms = [max(-a[i] * r[i], -a[i] * min(max(r[i], 1 - eps), 1 + eps)) for i in range(4)]
    # by hand: sample 0: max(-1.2214, -1.1) = -1.1; sample 1: max(-0.8187, -0.9) = -0.8187;
    # sample 2: max(2.1025, 2.1025); sample 3: -5
    assert terms[0] == pytest.approx(-1.1)
    assert terms[1] == pytest.approx(-math.exp(-0.2))
    assert out.loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert out.clipfrac.item() == pytest.approx(0.5)  # samples 0 and 1
    assert out.approx_kl.item() == pytest.approx(0.5 * (0.04 + 0.04 + 0.0025) / 4, rel=1e-6)
    assert torch.allclose(out.ratio, torch.tensor(r), rtol=1e-6)


def test_ppo_ratio_one_gives_minus_mean_advantage_and_gradient() -> None:
    lp = torch.tensor([0.3, -0.1, 0.2], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5])
    out = ppo_clip_loss(lp, lp.detach(), adv, clip_range=1e-4)
    assert out.loss.item() == pytest.approx(-(1.0 - 1.0 + 0.5) / 3)
    assert out.clipfrac.item() == 0.0 and out.approx_kl.item() == 0.0
    out.loss.backward()
    # d/dlp of -A*exp(lp - old) at ratio 1 = -A / B
    assert torch.allclose(lp.grad, -adv / 3)


def test_ppo_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ppo_clip_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))


def _means() -> tuple[torch.Tensor, torch.Tensor]:
    # two samples of a (1, 2, 2) latent; differences 1,1,1,1 and 0,2,0,0
    mu = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 2.0], [0.0, 0.0]]]])
    ref = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    return mu, ref


def test_kl_eq6_and_reference_form_by_hand() -> None:
    mu, ref = _means()
    assert torch.allclose(mean_sq_diff(mu, ref), torch.tensor([1.0, 1.0]))  # 4/4 and 4/4
    std_t, dt = 0.5, -0.1
    # Eq. 6: ||d||^2 / (2 sigma^2 |dt|) = 1 / (2 * 0.25 * 0.1) = 20
    assert torch.allclose(kl_penalty(mu, ref, std_t, dt), torch.tensor([20.0, 20.0]))
    # reference: mean(d^2) / (2 sigma^2) = 1 / 0.5 = 2
    assert torch.allclose(
        kl_penalty(mu, ref, std_t, dt, form="reference"), torch.tensor([2.0, 2.0])
    )
    # per-sample std and dt
    got = kl_penalty(mu, ref, torch.tensor([0.5, 1.0]), torch.tensor([-0.1, -0.5]))
    assert torch.allclose(got, torch.tensor([20.0, 1.0]))


def test_kl_refuses_an_ode_step_and_unknown_form() -> None:
    mu, ref = _means()
    with pytest.raises(ValueError, match="ODE step"):
        kl_penalty(mu, ref, 0.0, -0.1)
    with pytest.raises(ValueError, match="unknown KL form"):
        kl_penalty(mu, ref, 0.5, -0.1, form="sum")  # type: ignore[arg-type]


def test_sa_reg_is_w2_on_the_first_k_steps_and_zero_after() -> None:
    mu, ref = _means()
    for j in range(4):
        assert torch.allclose(sa_reg_w2(mu, ref, j, k=4), torch.tensor([0.5, 0.5]))
    for j in (4, 5, 9):
        assert torch.equal(sa_reg_w2(mu, ref, j, k=4), torch.zeros(2))
    assert torch.equal(sa_reg_w2(mu, ref, 0, k=0), torch.zeros(2))


@pytest.mark.parametrize("term", ["kl", "w2"])
def test_gradients_flow_through_the_regulariser(term: str) -> None:
    # a peer computed the KL under no_grad: the regulariser then never acts
    w = torch.tensor(2.0, requires_grad=True)
    x = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    mu = w * x
    ref = x  # the reference policy: w = 1, no grad
    reg = kl_penalty(mu, ref, 0.5, -0.1) if term == "kl" else sa_reg_w2(mu, ref, 0)
    reg.mean().backward()
    # d/dw mean_b mean_e ((w-1) x)^2 * c = 2 (w-1) mean(x^2) * c, c = 20 (KL) or 1/2 (W2)
    c = 1 / (2 * 0.25 * 0.1) if term == "kl" else 0.5
    expect = 2 * (2.0 - 1.0) * (x**2).mean().item() * c
    assert w.grad is not None and w.grad.item() == pytest.approx(expect, rel=1e-5)
