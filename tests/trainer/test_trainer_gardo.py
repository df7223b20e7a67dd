"""GARDO's trainer side (divreward.trainer.gardo): the uncertainty gate, the adaptive k and
the reference reset against hand numbers, its config checks, and a tiny in-process run
(reset on the KL threshold and on the step count; resume keeps k, the window and the
reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from divreward.trainer import checkpoint as ckpt
from divreward.trainer.config import GARDOTrainConfig, TrainConfig, load_config
from divreward.trainer.gardo import GARDOState, uncertainty, update_k, win_rate


def test_win_rate_and_uncertainty_by_hand() -> None:
    proxy = np.array([4.0, 3.0, 2.0, 1.0, 0.0])  # w = (4, 3, 2, 1, 0) / 5
    aux = [np.array([0.0, 1.0, 2.0, 3.0, 4.0]), proxy.copy()]  # mean w = 2/5 for every one
    np.testing.assert_array_equal(win_rate(proxy), [0.8, 0.6, 0.4, 0.2, 0.0])
    np.testing.assert_array_equal(win_rate([1.0, 1.0, 0.0]), [1 / 3, 1 / 3, 0.0])  # ties: no win
    u = uncertainty(proxy, aux)
    np.testing.assert_allclose(u, [0.4, 0.2, 0.0, -0.2, -0.4], atol=1e-15)
    np.testing.assert_allclose(uncertainty(proxy, aux, "code"), -u, atol=0)
    with pytest.raises(ValueError, match="auxiliary"):
        uncertainty(proxy, [])


def test_gate_by_hand() -> None:
    proxy = np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    aux = [np.array([0.0, 1.0, 2.0, 3.0, 4.0]), proxy.copy()]
    state = GARDOState(GARDOTrainConfig(beta=0.04, aux_scorers=["a", "b"]))
    res = state.gate(proxy, aux)
    # non-negative U: (0.4, 0.2, 0), mean 0.2 -> the window; k = k0 = 0.1; the 90th
    # percentile of (0, 0.2, 0.4) is 0.2 + 0.8 * 0.2 = 0.36: only U = 0.4 is gated
    assert res.k == 0.1 and state.window == [pytest.approx(0.2)]
    assert res.threshold == pytest.approx(0.36)
    assert res.gated.tolist() == [True, False, False, False, False]
    code = GARDOState(GARDOTrainConfig(beta=0.04, aux_scorers=["a"], uncertainty_sign="code"))
    assert code.gate(proxy, aux).gated.tolist() == [False, False, False, False, True]
    # no U >= 0 is impossible with the batch mean of U at 0; all U = 0 (the auxiliaries
    # agree with the proxy) gates nothing: 0 > percentile(0, ...) is false
    agree = GARDOState(GARDOTrainConfig(beta=0.04, aux_scorers=["a"]))
    assert not agree.gate(proxy, [proxy]).gated.any()


def test_adaptive_k_by_hand() -> None:
    cfg = GARDOTrainConfig(k0=0.1, k_rate=0.1, window=3, k_min=0.02, k_max=0.2)
    window: list[float] = []
    k, ks = 0.123, []
    for m in (0.5, 0.6, 0.55, 0.1, 0.7):
        k = update_k(k, window, m, cfg)
        ks.append(k)
    # first: k0 whatever k was; 0.6 > max: x1.1; 0.55 within: kept; 0.1 < min: x0.9;
    # 0.7 > max of the last three (0.6, 0.55, 0.1): x1.1
    np.testing.assert_allclose(ks, [0.1, 0.11, 0.11, 0.099, 0.1089], rtol=1e-12)
    assert window == [0.55, 0.1, 0.7]  # the last `window` means
    k = update_k(0.19, window, 1.0, cfg)  # 0.209 -> clipped to k_max
    assert k == 0.2
    k = update_k(0.021, window, -1.0, cfg)  # 0.0189 -> clipped to k_min
    assert k == 0.02


def test_reset_on_the_threshold_and_on_the_count() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    state = GARDOState(
        GARDOTrainConfig(beta=0.04, aux_scorers=["a"], kl_threshold=1e-3, reset_every=5)
    )
    state.after_optimizer_step(5e-4)
    assert not state.maybe_reset([p], 1) and state.reference is None
    state.after_optimizer_step(2e-3)  # over the threshold: reset after the training step
    assert state.maybe_reset([p], 2)
    assert state.reference is not None and torch.equal(state.reference[0], p.detach())
    assert (state.last_reset, state.resets, state.reset_pending) == (2, 1, False)
    with torch.no_grad():
        p.add_(1.0)
    assert not state.maybe_reset([p], 6)  # 4 optimiser steps since the reset
    assert state.maybe_reset([p], 7)  # 5: the count
    assert torch.equal(state.reference[0], torch.tensor([2.0, 3.0])) and state.resets == 2
    never = GARDOState(GARDOTrainConfig(beta=0.04, aux_scorers=["a"], reset_every=0))
    assert not never.maybe_reset([p], 10_000)


class _Adapter:
    """Stands for an adapter: reference() disables a LoRA (here: records that it did)."""

    def __init__(self) -> None:
        self.disabled = False

    def reference(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def cm() -> Any:
            self.disabled = True
            yield
            self.disabled = False

        return cm()


def test_the_reference_is_the_base_model_then_the_reset_lora() -> None:
    lin = torch.nn.Linear(3, 2)
    params = list(lin.parameters())
    state = GARDOState(GARDOTrainConfig(beta=0.04, aux_scorers=["a"]))
    adapter = _Adapter()
    with state.reference_policy(adapter, params):
        assert adapter.disabled  # before any reset: the LoRA disabled
    assert not adapter.disabled
    state.after_optimizer_step(1.0)
    state.maybe_reset(params, 1)
    before = [p.detach().clone() for p in params]
    x = torch.randn(4, 3)
    want = lin(x).detach()
    with torch.no_grad():
        for p in params:
            p.add_(0.5)  # the policy moves on
    moved = [p.detach().clone() for p in params]
    with state.reference_policy(adapter, params):
        assert not adapter.disabled
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        torch.testing.assert_close(lin(x), want, rtol=0, atol=0)
    assert all(torch.equal(p, m) for p, m in zip(params, moved, strict=True))  # swapped back


def test_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    cfg = GARDOTrainConfig(beta=0.04, aux_scorers=["a"])
    state = GARDOState(cfg, k=0.121, window=[0.1, 0.25], last_reset=4, reset_pending=True, resets=2)
    state.reference = [torch.randn(2, 3), torch.randn(5)]
    ckpt.save_state(tmp_path, {"gardo": state.state_dict()})
    back = GARDOState(cfg)
    back.load_state_dict(ckpt.load_state(tmp_path)["gardo"])
    assert (back.k, back.window, back.last_reset, back.reset_pending, back.resets) == (
        0.121,
        [0.1, 0.25],
        4,
        True,
        2,
    )
    assert back.reference is not None
    assert all(torch.equal(a, b) for a, b in zip(back.reference, state.reference, strict=True))


def test_config_checks() -> None:
    base = {"model": "tiny-sd3", "quality": {"pickscore": 1.0}}
    with pytest.raises(ValueError, match=r"gardo\.aux_scorers: the gated KL"):
        TrainConfig.model_validate({**base, "gardo": {"beta": 0.04}})
    TrainConfig.model_validate({**base, "gardo": {"beta": 0.0}})  # off: no aux needed
    with pytest.raises(ValueError, match=r"also in quality"):
        TrainConfig.model_validate({**base, "gardo": {"aux_scorers": ["pickscore"]}})
    with pytest.raises(ValueError, match=r"regulariser: 'kl' and GARDO"):
        TrainConfig.model_validate(
            {
                **base,
                "regulariser": "kl",
                "reg_weight": 0.01,
                "gardo": {"beta": 0.04, "aux_scorers": ["clipscore"]},
            }
        )
    with pytest.raises(ValueError, match="k0: must be within"):
        GARDOTrainConfig(k0=0.5)
    cfg = TrainConfig.model_validate(
        {**base, "diversity": "gardo", "gardo": {"beta": 0.04, "aux_scorers": ["clipscore"]}}
    )
    # the auxiliary scorer is asked for with weight 0: Q is unchanged
    assert cfg.request_quality() == {"pickscore": 1.0, "clipscore": 0.0}
    assert cfg.diversity_request() == {"method": "gardo"}
    # --set reaches into the block
    over = load_config(
        "tiny-cpu", ["regulariser=none", "gardo.beta=0.07", "gardo.aux_scorers=[hps]"]
    )
    assert over.gardo.beta == 0.07 and over.gardo.aux_scorers == ["hps"]


# ------------------------------------------------------------------ tiny in-process runs
@pytest.fixture(scope="module")
def tiny_root(tiny_zoo: Any) -> Path:
    for name in ("pickscore", "clipscore", "dreamsim"):
        tiny_zoo.build(name)
    return Path(tiny_zoo.root)


def _run(root: Path, out: Path, *overrides: str, resume: Path | None = None) -> Any:
    from divreward.trainer.loop import train

    cfg = load_config(
        "tiny-cpu",
        [
            f"tiny_models_dir={root}",
            f"output_dir={out}",
            "progress=false",
            "tensorboard=false",
            "reward_backend=inprocess",
            "eval_every=0",
            "ema=false",
            "regulariser=none",
            "quality={pickscore: 1.0}",
            "diversity=gardo",
            "diversity_params={}",
            # one minibatch of all 8 samples, two inner epochs: two optimiser steps per
            # step, the second one's KL over every gated sample
            "train_batch_size=8",
            "num_inner_epochs=2",
            "max_steps=2",
            *overrides,
        ],
    )
    return train(cfg, resume=resume, print_fn=lambda s: None)


def _gardo(threshold: str, reset_every: int) -> str:
    """The gardo block: k = 1 gates every U above the smallest non-negative one."""
    return (
        "gardo={beta: 0.5, aux_scorers: [clipscore], k0: 1.0, k_min: 1.0, k_max: 1.0, "
        f"kl_threshold: {threshold}, reset_every: {reset_every}}}"
    )


@pytest.mark.slow
def test_tiny_run_resets_on_the_kl_threshold_and_resume_keeps_the_state(
    tiny_root: Path, tmp_path: Path
) -> None:
    gardo = _gardo("0.0", 0)
    run = _run(tiny_root, tmp_path / "a", gardo, "save_every=1")
    first, second = run.history
    assert first["gardo/gated_frac"] > 0 and first["gardo/k"] == 1.0
    # step 1: the first optimiser step's policy is the base model (LoRA B = 0): KL 0; the
    # second's is not, and any KL > 0 is over the threshold 0: the reference is reset
    assert first["loss/reg"] > 0 and first["gardo/reset"] == 1.0
    assert second["gardo/reset"] == 1.0 and second["gardo/resets"] == 2.0
    assert {"reward/pickscore", "reward/clipscore"} <= set(first)
    # the auxiliary scorer is scored but never enters Q
    assert first["reward/total"] == pytest.approx(first["reward/pickscore"], abs=1e-12)
    # the checkpoint of step 1 holds GARDO's state; resuming from it replays step 2
    state = ckpt.load_state(tmp_path / "a" / "checkpoints" / "step_1")["gardo"]
    assert state["resets"] == 1 and state["last_reset"] == 2 and state["reference"] is not None
    assert state["k"] == 1.0 and len(state["window"]) == 1
    resumed = _run(
        tiny_root, tmp_path / "b", gardo, "save_every=1",
        resume=tmp_path / "a" / "checkpoints" / "step_1",
    )  # fmt: skip
    got = resumed.history[0]
    for key in ("loss/total", "loss/reg", "gardo/u_mean", "gardo/gated_frac", "reward/mean"):
        assert got[key] == pytest.approx(second[key], rel=1e-5, abs=1e-9), key
    end_a = ckpt.load_state(tmp_path / "a" / "checkpoints" / "step_2")["gardo"]
    end_b = ckpt.load_state(tmp_path / "b" / "checkpoints" / "step_2")["gardo"]
    assert end_a["window"] == pytest.approx(end_b["window"]) and end_a["resets"] == end_b["resets"]
    for x, y in zip(end_a["reference"], end_b["reference"], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_tiny_run_resets_on_the_step_count(tiny_root: Path, tmp_path: Path) -> None:
    gardo = _gardo("1.0e+9", 3)
    first, second = _run(tiny_root, tmp_path, gardo).history
    # two optimiser steps per step: 2 < 3 after step 1, 4 >= 3 after step 2
    assert first["gardo/reset"] == 0.0 and second["gardo/reset"] == 1.0
    assert second["gardo/resets"] == 1.0 and second["train/optimizer_steps"] == 4.0


def test_help_config_lists_the_gardo_block(capsys: pytest.CaptureFixture[str]) -> None:
    from divreward.cli import main

    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    for field in GARDOTrainConfig.model_fields:
        assert f"\ngardo.{field} = " in out, field
    assert "gardo.kl_threshold = 0.0003" in out and "gardo.reset_every = 30" in out
