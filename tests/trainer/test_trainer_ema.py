"""The EMA of the LoRA parameters: warm-up decay, update cadence, swap in/out, state."""

from __future__ import annotations

import pytest
import torch

from divreward.trainer.ema import EMA


def test_ema_warmup_decay_and_cadence_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([0.0]))
    ema = EMA([p], decay=0.9, update_every=2)
    with torch.no_grad():
        p.fill_(10.0)
    assert not ema.step(1)  # not a multiple of 2
    assert ema.shadow[0].item() == 0.0
    assert ema.step(2)  # s = 0: decay min(1/10, 0.9) = 0.1 -> 0.1*0 + 0.9*10 = 9
    assert ema.shadow[0].item() == pytest.approx(9.0)
    with torch.no_grad():
        p.fill_(20.0)
    assert ema.step(4)  # s = 1: decay 2/11 -> 9*2/11 + 20*9/11
    assert ema.shadow[0].item() == pytest.approx(9 * 2 / 11 + 20 * 9 / 11)
    ema.num_updates = 1000
    assert ema.current_decay() == 0.9  # the warm-up is capped at decay


def test_swapped_in_restores_the_trained_values_and_state_round_trips() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([p], decay=0.9, update_every=1)
    ema.shadow[0].copy_(torch.tensor([5.0, 6.0]))
    with ema.swapped_in():
        assert torch.equal(p.detach(), torch.tensor([5.0, 6.0]))
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0]))
    other = EMA([torch.nn.Parameter(torch.zeros(2))])
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], torch.tensor([5.0, 6.0]))
    with pytest.raises(ValueError, match="trainable parameters"):
        EMA([p, p]).load_state_dict(ema.state_dict())


def _reference_ema(values: list[torch.Tensor], decay: float, every: int) -> torch.Tensor:
    """Flow-GRPO's EMA as a plain loop (the trainer's hand-written EMA before diffusers'):
    update s (from 0) uses min((1 + s) / (10 + s), decay), every ``every`` steps."""
    shadow = values[0].clone().double()  # the parameter before the first optimiser step
    s = 0
    for step, v in enumerate(values[1:], start=1):
        if step % every == 0:
            d = min((1.0 + s) / (10.0 + s), decay)
            shadow = d * shadow + (1.0 - d) * v.double()
            s += 1
    return shadow


def test_diffusers_ema_model_gives_the_reference_numbers() -> None:
    from diffusers.training_utils import EMAModel

    g = torch.Generator().manual_seed(0)
    values = [torch.randn(3, 4, generator=g) for _ in range(41)]
    p = torch.nn.Parameter(values[0].clone())
    ema = EMA([p], decay=0.9, update_every=3)
    assert isinstance(ema.model, EMAModel)
    for step, v in enumerate(values[1:], start=1):
        with torch.no_grad():
            p.copy_(v)
        ema.step(step)
    assert ema.num_updates == 40 // 3
    ref = _reference_ema(values, 0.9, 3)
    torch.testing.assert_close(ema.shadow[0].double(), ref, rtol=1e-6, atol=1e-6)
    # the state survives a round trip into a fresh EMA, which then continues identically
    other = EMA([torch.nn.Parameter(torch.zeros(3, 4))], decay=0.9, update_every=3)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == ema.num_updates == 13
    assert other.current_decay() == ema.current_decay() == 14 / 23
    assert torch.equal(other.shadow[0], ema.shadow[0])
