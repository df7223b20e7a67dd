"""The training loop end to end on tiny random models, on CPU.

- against the live tiny Serve app (``serve_app``): the LoRA changes, the base weights do
  not, the metrics files hold the stable names, the checkpoint's LoRA loads in diffusers,
  and ``--resume`` from step 1 reproduces step 2;
- DRIFT (2G pool, reward-concentrated subset, prompt noise) with in-process rewards: the
  ratio is 1 on the first inner epoch and G of the 2G images are trained on;
- a service that goes away: the run stops with a clear error, before any update;
- Flux: one tiny iteration with in-process rewards, and what TensorBoard holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from divreward.trainer.config import TrainConfig, load_config
from divreward.trainer.loop import load_adapter, train
from divreward.trainer.metrics import read_jsonl
from divreward.trainer.rewards import RewardsUnavailableError, ServiceRewards

STABLE_KEYS = {
    "reward/pickscore",
    "reward/clipscore",
    "reward/total",
    "diversity/bonus",
    "diversity/k",
    "diversity/dreamsim",
    "loss/policy",
    "loss/reg",
    "train/clipfrac",
    "perf/wait_s",
    "perf/images_per_s",
}
SCORERS = ("pickscore", "clipscore", "dreamsim")


@pytest.fixture(scope="module")
def tiny_root(tiny_zoo: Any) -> Path:
    """The session's tiny zoo (scorers built), where the tiny SD3/Flux get built too."""
    for name in SCORERS:
        tiny_zoo.build(name)
    return Path(tiny_zoo.root)


def _cfg(root: Path, out: Path, *overrides: str, preset: str = "tiny-cpu") -> TrainConfig:
    return load_config(
        preset,
        [
            f"tiny_models_dir={root}",
            f"output_dir={out}",
            "progress=false",
            "tensorboard=true",
            *overrides,
        ],
    )


#: One training step with the registry's models in the test process, no evaluation.
ONE_STEP_IN_PROCESS = ("reward_backend=inprocess", "max_steps=1", "eval_every=0")
#: Flux.1-dev as Flow-GRPO trains it: embedded guidance 3.5, noise level 0.9, and the
#: adapter's own LoRA targets.
TINY_FLUX = (
    "model=tiny-flux",
    "family=flux",
    "model_options={}",
    "guidance=3.5",
    "noise_level=0.9",
    "lora_targets=null",
)


def _lora(adapter: Any) -> dict[str, torch.Tensor]:
    params = adapter.transformer.named_parameters()
    return {n: p.detach().clone() for n, p in params if "lora_" in n}


@pytest.mark.serve
@pytest.mark.slow
# Loading the saved LoRA as a second adapter beside the trained one is the point of that
# check; peft warns whenever a model gets a second adapter.
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
def test_live_service_iteration_metrics_checkpoint_and_exact_resume(
    serve_app: Any, tiny_root: Path, tmp_path: Path
) -> None:
    common = [f"reward_url={serve_app.base_url}", "max_steps=2", "save_every=1"]
    cfg = _cfg(tiny_root, tmp_path / "a", *common, "eval_every=2")
    adapter = load_adapter(cfg, torch.device("cpu"))
    base = {n: p.detach().clone() for n, p in adapter.transformer.named_parameters()}
    run = train(cfg, adapter=adapter, print_fn=lambda s: None)

    # the LoRA trained, the base model did not move
    after = dict(adapter.transformer.named_parameters())
    lora_b = [p for n, p in after.items() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at 0 (gaussian init)
    for key, before in base.items():
        name = key
        if name not in after:  # a LoRA-wrapped Linear keeps its weights in .base_layer
            stem, _, leaf = name.rpartition(".")
            name = f"{stem}.base_layer.{leaf}"
        now = after[name]
        assert torch.equal(now.detach(), before), name

    # metrics: JSONL with the stable names, TensorBoard events, evaluation numbers
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    train_rows = [r for r in rows if "loss/policy" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert set(r) >= STABLE_KEYS, STABLE_KEYS - set(r)
        assert r["train/clipfrac"] == 0.0 or r["step"] > 1
        assert r["diversity/bonus"] >= 1.0  # E_i = sqrt(N / n_k) >= 1
    assert train_rows[0]["train/clipfrac"] == 0.0  # ratio 1 on the first inner epoch
    ev = [r for r in rows if "eval/reward/pickscore" in r]
    assert len(ev) == 1 and "eval/diversity/mean_pairwise_distance" in ev[0]
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))
    grids = sorted((tmp_path / "a" / "eval" / "step_2").glob("prompt_*.png"))
    assert len(grids) == cfg.eval_prompts

    # the checkpoint: a diffusers-loadable LoRA and the exact trainer state
    ck = tmp_path / "a" / "checkpoints" / "step_1"
    assert (ck / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (ck / "trainer_state.json").is_file() and (ck / "trainer_state.safetensors").is_file()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["max_steps"] == 2
    adapter.pipeline.load_lora_weights(str(ck / "lora"), adapter_name="saved")

    # resume from step 1 in a fresh process state: step 2 is the uninterrupted run's
    cfg_b = _cfg(tiny_root, tmp_path / "b", *common)
    adapter_b = load_adapter(cfg_b, torch.device("cpu"))
    resumed = train(cfg_b, adapter=adapter_b, resume=ck, print_fn=lambda s: None)
    assert len(resumed.history) == 1
    want, got = run.history[1], resumed.history[0]
    for key in ("reward/mean", "loss/total", "loss/policy", "loss/reg", "train/grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), key
    b_after = dict(adapter_b.transformer.named_parameters())
    for name, p in after.items():
        if "lora_" in name and "saved" not in name:
            torch.testing.assert_close(b_after[name].detach(), p.detach(), rtol=1e-5, atol=1e-7)


def test_drift_subset_and_prompt_noise_in_process(tiny_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        tiny_root,
        tmp_path,
        *ONE_STEP_IN_PROCESS,
        "diversity=drift",
        "diversity_params={lam: 0.5}",
        "subset=concentrated",
        "pool_factor=2",
        "prompt_noise=true",
        "prompt_noise_params={s: 0.5}",
        "regulariser=kl",
        "prompts_per_step=1",
        "train_batch_size=2",
        "ema=false",
    )
    assert cfg.derived().pool_size == 2 * cfg.group_size
    run = train(cfg, print_fn=lambda s: None)
    m = run.history[0]
    # ratio 1 on the first inner epoch up to round-off (the minibatches are other batch
    # shapes than the rollout's), far inside the clip range 1e-4: nothing clipped
    assert m["train/clipfrac"] == 0.0
    assert abs(m["train/ratio_mean"] - 1.0) < 1e-5
    assert m["train/approx_kl"] < 1e-10
    # G of the 2G generated images per prompt are trained on (fewer only if an advantage is 0)
    assert m["train/samples"] <= cfg.group_size * cfg.prompts_per_step
    assert m["train/samples"] >= cfg.group_size * cfg.prompts_per_step - 1
    assert "diversity/drift" in m and m["diversity/bonus"] >= 0.0
    # KL against the LoRA-disabled network: 0 before the first optimiser step (B = 0),
    # positive after it (two optimiser steps of 4 in this step)
    assert m["loss/reg"] > 0.0 and m["train/optimizer_steps"] == 2


def test_service_gone_stops_the_run_before_any_update(tiny_root: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(
        tiny_root,
        tmp_path,
        f"reward_url=http://127.0.0.1:{port}",
        "reward_retries=2",
        "reward_timeout_s=2",
        "max_steps=1",
    )
    src = ServiceRewards(cfg)
    try:
        with pytest.raises(RewardsUnavailableError, match="did not answer after 2 attempts"):
            src.submit("a cat", torch.rand(4, 3, 32, 32), "g0").result()
    finally:
        src.close()
    adapter = load_adapter(cfg, torch.device("cpu"))
    with pytest.raises(RewardsUnavailableError, match="partial group is never trained on"):
        train(cfg, adapter=adapter, print_fn=lambda s: None)
    assert all(p.abs().sum() == 0 for n, p in _lora(adapter).items() if "lora_B" in n)
    assert not (tmp_path / "metrics.jsonl").read_text().strip()


def test_flux_one_iteration_in_process_logged_to_tensorboard(
    tiny_root: Path, tmp_path: Path
) -> None:
    """One Flux step and an evaluation, in-process; the step's scalars and the evaluation's
    sample grids (as images) are in the TensorBoard event file, the same numbers as in
    metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tiny_root, tmp_path, *TINY_FLUX, *ONE_STEP_IN_PROCESS[:2], "eval_every=1")
    adapter = load_adapter(cfg, torch.device("cpu"))
    run = train(cfg, adapter=adapter, print_fn=lambda s: None)
    m = run.history[0]
    assert m["train/clipfrac"] == 0.0 and abs(m["train/ratio_mean"] - 1.0) < 1e-5
    assert m["train/optimizer_steps"] >= 1
    lora_b = [p for n, p in adapter.transformer.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    grids = sorted(t for t in tags["images"] if t.startswith("eval/grid/"))
    assert grids == [f"eval/grid/prompt_{i:03d}" for i in range(cfg.eval_prompts)]
    n = cfg.eval_images_per_prompt  # one row of n images, torchvision's 2-pixel padding
    img = events.Images(grids[0])[0]
    assert img.step == 1 and (img.height, img.width) == (cfg.height + 4, n * (cfg.width + 2) + 2)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for key in ("reward/mean", "loss/total", "eval/reward/pickscore"):
        (scalar,) = events.Scalars(key)
        row = next(r for r in rows if key in r)
        assert scalar.step == row["step"] == 1
        assert scalar.value == pytest.approx(row[key], rel=1e-6)  # TensorBoard keeps float32


def test_the_loss_replays_the_rollouts_prompt_noise(tiny_root: Path, tmp_path: Path) -> None:
    """Same rows, same step: the noisy embeddings recomputed from (seed, sample, step) give
    the rollout's log-probs; the clean embeddings do not (the noise matters)."""
    from divreward.core.config import NoisePromptConfig
    from divreward.trainer.prompt_noise import PromptNoiser

    cfg = _cfg(tiny_root, tmp_path)
    adapter = load_adapter(cfg, torch.device("cpu"))
    noiser = PromptNoiser(NoisePromptConfig(s=0.5, tau1=0.0), seed=3)
    emb = adapter.encode_prompts(["a red bicycle"]).repeat(4)
    ids = [10, 11, 12, 13]
    kw = {"guidance": cfg.guidance, "noise_level": cfg.noise_level}
    ro = adapter.rollout(
        emb,
        num_steps=cfg.num_steps,
        height=cfg.height,
        width=cfg.width,
        generator=[torch.Generator().manual_seed(i) for i in ids],
        embeds_at=lambda j, t: noiser.apply(emb, ids, j, t),
        **kw,
    )
    for j in range(cfg.num_steps - 1):
        replay = noiser.apply(emb, ids, j, float(ro.sigmas[j]))
        same = adapter.step(replay, ro, j, **kw).log_prob
        clean = adapter.step(emb, ro, j, **kw).log_prob
        err_same = (same - ro.log_probs[:, j]).abs().max().item()
        err_clean = (clean - ro.log_probs[:, j]).abs().max().item()
        assert err_same < 1e-6
        assert err_clean > 1e-4  # the check above would see a noise mismatch


def test_bearer_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_root: Path, tmp_path: Path
) -> None:
    import divreward.client

    seen: dict[str, Any] = {}

    class FakeClient:
        def __init__(self, url: str, **kwargs: Any) -> None:
            seen.update(kwargs, url=url)

        def close(self) -> None:
            pass

    monkeypatch.setattr(divreward.client, "RewardClient", FakeClient)
    monkeypatch.setenv("DIVREWARD_API_TOKEN", "s3cret")
    ServiceRewards(_cfg(tiny_root, tmp_path, "reward_url=grpc://h:9000")).close()
    assert seen["url"] == "grpc://h:9000"
    assert seen["headers"] == {"authorization": "Bearer s3cret"}
    monkeypatch.delenv("DIVREWARD_API_TOKEN")
    ServiceRewards(_cfg(tiny_root, tmp_path, "reward_url=grpc://h:9000")).close()
    assert seen["headers"] is None
    # the server's list is not a trainer's token: refused, never sent
    monkeypatch.setenv("DIVREWARD_API_TOKEN", "tok-a,tok-b")
    with pytest.raises(ValueError, match="DIVREWARD_API_TOKEN holds a comma-separated list"):
        ServiceRewards(_cfg(tiny_root, tmp_path, "reward_url=grpc://h:9000"))
