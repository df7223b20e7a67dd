"""The GRPO training loop (Flow-GRPO, DiverseGRPO, DRIFT), CleanRL-style.

Read :func:`train` top to bottom: setup, then per step

1. **sample**: each prompt's group (a pool of 2G with DRIFT's subset) is generated with
   the SDE, decoded, and submitted for rewards the moment it is decoded, so the next
   group is generated while earlier ones are scored;
2. **rewards**: wait for every whole group (a failed group stops the run);
3. **advantages**: per group, as the service (or the in-process scorer) returns them;
   DRIFT keeps the G selected images; zero-advantage samples are masked out;
4. **update**: inner epochs of PPO-clip over minibatches and trained timesteps, one
   backward per (minibatch, timestep), gradient accumulation, grad-norm clip 1.0,
   the regulariser (KL or SA-Reg) against the same network with the LoRA disabled;
5. **log**: metrics through accelerate's trackers (TensorBoard, JSONL; W&B, MLflow), the
   progress bar, EMA, checkpoints, evaluation (its sample grids as TensorBoard images).

Every random draw of step s comes from generators seeded by (seed, s, rank, sample), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from divreward.trainer import checkpoint as ckpt
from divreward.trainer.config import TrainConfig, read_prompts
from divreward.trainer.ema import EMA
from divreward.trainer.gardo import GARDOState
from divreward.trainer.losses import kl_penalty, ppo_clip_loss, sa_reg_w2
from divreward.trainer.metrics import finite_scalars, log_grids, trackers
from divreward.trainer.prompt_noise import PromptNoiser, _mix
from divreward.trainer.rewards import GroupRewards, RewardSource, make_reward_source, wait_all

log = logging.getLogger(__name__)

__all__ = ["Policy", "StepSamples", "TrainResult", "load_adapter", "ppo_update", "train"]

# sample ids: unique per (step, rank, prompt slot, image) -> the seeds of its noise
_IDS_PER_STEP = 1 << 24


@dataclass
class TrainResult:
    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per step
    last_checkpoint: Path | None = None
    evals: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Policy:
    """What the update trains, built once at setup: the adapter (its LoRA), its trainable
    parameters, the optimiser, the EMA (None without one) and the accelerator."""

    adapter: Any
    cfg: TrainConfig
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    accelerator: Any
    gardo: GARDOState | None = None  # GARDO's gate and reference (gardo.beta > 0)


@dataclass
class StepSamples:
    """One step's samples for the update: the kept rollouts (B rows), their prompt
    embeddings, (B,) advantages, the rows trained on (``live``), each row's sample id
    (its noise seeds), the prompt noiser, the step and rank (the shuffling's seeds), and
    GARDO's (B,) bool gate of the KL (None without GARDO)."""

    batch: Any
    embeds: Any
    adv: torch.Tensor
    live: torch.Tensor
    sample_ids: Sequence[int]
    noiser: PromptNoiser | None
    step: int
    rank: int
    gate: torch.Tensor | None = None


# ----------------------------------------------------------------------------- setup


def resolve_model(cfg: TrainConfig) -> str:
    """'tiny-<family>' ('tiny-sd3', 'tiny-flux', ...): build the family's tiny random
    pipeline when missing (its adapter's ``build_tiny``); a hub id: the weights
    directory's copy when it holds it (divreward.trainer.models.hub)."""
    if not cfg.model.startswith("tiny-"):
        from divreward.trainer.models.hub import resolve_policy

        return resolve_policy(cfg, "--preset <preset> (or --config <file>)")
    from divreward.trainer.models.tiny import ensure_tiny_model

    try:
        return str(ensure_tiny_model(cfg.model, cfg.tiny_models_dir)[1])
    except KeyError as exc:
        raise ValueError(f"model {cfg.model!r}: {exc.args[0]}") from None


def load_adapter(cfg: TrainConfig, device: torch.device) -> Any:
    from divreward.trainer.models.registry import get_adapter

    d = cfg.derived()
    cls = get_adapter(cfg.family)
    dtype = d.autocast_dtype if (d.autocast_dtype is not None and device.type == "cuda") else None
    return cls.from_pretrained(
        resolve_model(cfg),
        device=device,
        dtype=dtype or torch.float32,
        **({"autocast_dtype": dtype} if dtype is not None else {}),
        **cfg.model_options,
    )


def _gen(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*keys))


def _take(ro: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a Rollout (sigmas and sde_mask are shared)."""
    return dataclasses.replace(
        ro,
        images=ro.images[idx.cpu()],
        latents=ro.latents[idx.to(ro.latents.device)],
        log_probs=ro.log_probs[idx.to(ro.log_probs.device)],
        means=ro.means[idx.to(ro.means.device)],
    )


def _cat(parts: Sequence[Any]) -> Any:
    return dataclasses.replace(
        parts[0],
        images=torch.cat([p.images for p in parts]),
        latents=torch.cat([p.latents for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        means=torch.cat([p.means for p in parts]),
    )


def _embeds_at(
    noiser: PromptNoiser | None, embeds: Any, ids: Sequence[int]
) -> Callable[[int, float], Any] | None:
    if noiser is None:
        return None
    return lambda j, t: noiser.apply(embeds, ids, j, t)


def generate(
    adapter: Any,
    cfg: TrainConfig,
    prompt: str,
    sample_ids: Sequence[int],
    *,
    noiser: PromptNoiser | None,
    num_steps: int | None = None,
    noise_level: float | None = None,
) -> Any:
    """One prompt's images (one per sample id) as a Rollout, in chunks of
    sample_batch_size; image i's noise comes from its own generator (seed, id)."""
    parts = []
    base = adapter.encode_prompts([prompt])
    for c0 in range(0, len(sample_ids), cfg.sample_batch_size):
        ids = list(sample_ids[c0 : c0 + cfg.sample_batch_size])
        emb = base.repeat(len(ids))
        parts.append(
            adapter.rollout(
                emb,
                num_steps=num_steps or cfg.num_steps,
                guidance=cfg.guidance,
                noise_level=cfg.noise_level if noise_level is None else noise_level,
                height=cfg.height,
                width=cfg.width,
                generator=[_gen(cfg.seed, 1, i) for i in ids],
                embeds_at=_embeds_at(noiser, emb, ids),
            )
        )
    return _cat(parts)


# ----------------------------------------------------------------------------- loss


def step_loss(
    adapter: Any,
    cfg: TrainConfig,
    embeds: Any,
    ro: Any,
    adv: torch.Tensor,
    j: int,
    *,
    gate: torch.Tensor | None = None,
    policy: Policy | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of timestep j on one minibatch: PPO-clip + reg_weight * regulariser, or
    with GARDO (``gate``: the minibatch's (B,) bool gate; ``policy`` holds its state) PPO-clip
    + gardo.beta * the KL averaged over the gated samples (0 when none is)."""
    gardo = policy.gardo if policy is not None else None
    if gate is not None and gardo is not None:
        if not bool(gate.any()):
            gate = None  # no gated sample: no reference pass, no KL
        else:
            # the reference's pass comes first: a reset reference is swapped into the LoRA
            # in place, which must not touch tensors a policy graph has saved
            with torch.no_grad(), gardo.reference_policy(adapter, policy.params):  # type: ignore[union-attr]
                ref = adapter.step(
                    embeds, ro, j, guidance=cfg.guidance, noise_level=cfg.noise_level
                )
    out = adapter.step(embeds, ro, j, guidance=cfg.guidance, noise_level=cfg.noise_level)
    old = ro.log_probs[:, j].to(out.log_prob.device)
    ppo = ppo_clip_loss(
        out.log_prob,
        old,
        adv.to(out.log_prob.device),
        clip_range=cfg.clip_range,
        adv_clip_max=cfg.adv_clip_max,
    )
    reg = torch.zeros((), device=out.log_prob.device)
    weight = cfg.reg_weight
    needs_ref = cfg.regulariser == "kl" or (cfg.regulariser == "sa_reg" and j < cfg.sa_reg_k)
    if gardo is not None:
        weight = cfg.gardo.beta
        if gate is not None:
            kl = kl_penalty(out.mean, ref.mean, out.std_t, out.dt, form=cfg.gardo.kl_form)
            reg = kl[gate.to(kl.device)].mean()
    elif needs_ref:
        with torch.no_grad(), adapter.reference():
            ref = adapter.step(embeds, ro, j, guidance=cfg.guidance, noise_level=cfg.noise_level)
        if cfg.regulariser == "kl":
            reg = kl_penalty(out.mean, ref.mean, out.std_t, out.dt, form=cfg.kl_form).mean()
        else:
            reg = sa_reg_w2(out.mean, ref.mean, j, cfg.sa_reg_k).mean()
    loss = ppo.loss + weight * reg
    stats = {
        "loss/policy": ppo.loss.detach(),
        "loss/reg": reg.detach(),
        "loss/total": loss.detach(),
        "train/clipfrac": ppo.clipfrac,
        "train/approx_kl": ppo.approx_kl,
        "train/ratio_mean": ppo.ratio.detach().mean(),
    }
    return loss, stats


def ppo_update(
    policy: Policy, samples: StepSamples, opt_steps: int
) -> tuple[dict[str, float], list[float], int]:
    """Inner epochs of PPO on one step's samples (rows ``samples.live`` of its batch).

    One backward per (minibatch, trained timestep); an optimiser step every
    gradient_accumulation_steps minibatches (the step's last one takes what is left),
    the loss divided by the backward calls it accumulates. ``opt_steps``: optimiser steps
    so far. Returns the mean of each loss statistic, the grad norms, and the optimiser
    step count.
    """
    adapter, cfg, params = policy.adapter, policy.cfg, policy.params
    batch, embeds, adv, live = samples.batch, samples.embeds, samples.adv, samples.live
    noiser, step, rank = samples.noiser, samples.step, samples.rank
    d = cfg.derived()
    steps_j = [j for j in d.train_timesteps if bool(batch.sde_mask[j])]
    sums: dict[str, float] = {}
    count = 0
    grad_norms: list[float] = []
    bs, gas = cfg.train_batch_size, cfg.gradient_accumulation_steps
    for epoch in range(cfg.num_inner_epochs):
        perm = live[torch.randperm(len(live), generator=_gen(cfg.seed, 2, step, rank, epoch))]
        minibatches = [perm[i : i + bs] for i in range(0, len(perm), bs)]
        for w0 in range(0, len(minibatches), gas):
            window = minibatches[w0 : w0 + gas]
            n_backward = len(window) * len(steps_j)
            window_reg = 0.0
            for mb in window:
                ro_mb, emb_mb, adv_mb = _take(batch, mb), embeds.select(mb), adv[mb]
                ids_mb = [samples.sample_ids[int(i)] for i in mb]
                gate_mb = (
                    samples.gate[mb.to(samples.gate.device)] if samples.gate is not None else None
                )
                for j in steps_j:
                    emb_j = emb_mb
                    if noiser is not None:  # the rollout's noisy embeds of step j, again
                        emb_j = noiser.apply(emb_mb, ids_mb, j, float(ro_mb.sigmas[j]))
                    loss, stats = step_loss(
                        adapter, cfg, emb_j, ro_mb, adv_mb, j, gate=gate_mb, policy=policy
                    )
                    (loss / n_backward).backward()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    window_reg += float(stats["loss/reg"])
                    count += 1
            accelerator = policy.accelerator
            if policy.gardo is not None:  # this optimiser step's mean gated KL, over processes
                kl = torch.tensor(window_reg / max(n_backward, 1), device=accelerator.device)
                if accelerator.num_processes > 1:
                    kl = accelerator.reduce(kl, reduction="mean")
                policy.gardo.after_optimizer_step(float(kl))
            if accelerator.num_processes > 1:  # data parallel: average the LoRA gradients
                for p in params:
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    p.grad = accelerator.reduce(g, reduction="mean")
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            grad_norms.append(float(norm))
            policy.optimizer.step()
            policy.optimizer.zero_grad(set_to_none=True)
            opt_steps += 1
            if policy.ema is not None:
                policy.ema.step(opt_steps)
    return {k: v / max(count, 1) for k, v in sums.items()}, grad_norms, opt_steps


# ----------------------------------------------------------------------------- metrics


def group_metrics(results: Sequence[GroupRewards]) -> dict[str, float]:
    """reward/<scorer>, reward/mean, diversity/bonus, diversity/k, diversity/dreamsim,
    diversity/drift, train/zero_std_frac over the step's groups."""
    from divreward.core import mean_pairwise_distance

    out: dict[str, float] = {}
    for name in results[0].quality:
        out[f"reward/{name}"] = float(np.mean([r.quality[name].mean() for r in results]))
    out["reward/mean"] = float(np.mean([r.rewards.mean() for r in results]))
    bonus = [r.bonus.mean() for r in results if r.bonus is not None]
    if bonus:
        out["diversity/bonus"] = float(np.mean(bonus))
    ks = [r.k for r in results if r.k is not None]
    if ks:
        out["diversity/k"] = float(np.mean(ks))
    drift = [r.diversity.mean() for r in results if r.diversity is not None]
    if drift:
        out["diversity/drift"] = float(np.mean(drift))
    embs = [r.embeddings for r in results if r.embeddings is not None]
    if embs and all(e.shape[0] >= 2 for e in embs):
        out["diversity/dreamsim"] = mean_pairwise_distance(embs)
    out["train/zero_std_frac"] = float(np.mean([np.all(r.advantages == 0) for r in results]))
    return out


def _summary_line(step: int, total: int, m: dict[str, float]) -> str:
    def f(key: str) -> str:
        v = m.get(key)
        return "-" if v is None else f"{v:.4g}"

    return (
        f"step {step}/{total}  reward {f('reward/mean')}  bonus {f('diversity/bonus')}  "
        f"k {f('diversity/k')}  diversity {f('diversity/dreamsim')}  "
        f"loss {f('loss/total')}  wait {f('perf/wait_s')}s"
    )


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    adapter: Any,
    cfg: TrainConfig,
    rewards: RewardSource,
    prompts: Sequence[str],
    step: int,
    out_dir: Path,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """ODE samples of held-out prompts (the caller swaps the EMA in): a PNG grid per
    prompt, their rewards, and the service's /v1/metrics diversity numbers. Returns the
    metrics and the grids ('eval/grid/prompt_<i>' -> (3, H, W) in [0, 1])."""
    from torchvision.utils import make_grid, save_image

    n = cfg.eval_images_per_prompt
    grid_dir = out_dir / "eval" / f"step_{step}"
    grid_dir.mkdir(parents=True, exist_ok=True)
    futures, images, grids = [], [], {}
    for pi, prompt in enumerate(prompts[: cfg.eval_prompts]):
        ids = [(1 << 60) + pi * n + i for i in range(n)]  # the same noise every evaluation
        ro = generate(
            adapter,
            cfg.model_copy(update={"seed": cfg.eval_seed}),
            prompt,
            ids,
            noiser=None,
            num_steps=cfg.eval_num_steps,
            noise_level=0.0,
        )
        grid = make_grid(ro.images, nrow=n)
        save_image(grid, grid_dir / f"prompt_{pi:03d}.png")
        grids[f"eval/grid/prompt_{pi:03d}"] = grid
        images.append(ro.images)
        futures.append(rewards.submit(prompt, ro.images, f"eval{step}/p{pi}", select=False))
    (grid_dir / "prompts.txt").write_text("\n".join(prompts[: cfg.eval_prompts]) + "\n")
    results, _ = wait_all(futures)
    out: dict[str, float] = {}
    for name in results[0].quality:
        out[f"eval/reward/{name}"] = float(np.mean([r.quality[name].mean() for r in results]))
    if cfg.eval_metrics and n >= 2:
        embs = [r.embeddings for r in results if r.embeddings is not None]
        ready = embs if len(embs) == len(results) else None
        for k, v in rewards.metrics(images, ready).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"eval/diversity/{k}"] = float(v)
    return out, grids


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    adapter: Any | None = None,
    rewards: RewardSource | None = None,
    print_fn: Callable[[str], None] | None = None,
    on_step_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a LoRA with GRPO as ``cfg`` says; returns the per-step metrics.

    resume: a checkpoint directory, or 'latest' (the newest under output_dir).
    adapter / rewards: injected ones (tests); by default loaded from cfg.
    on_step_end(step, metrics): called on the main process after each step is logged
    (and after its checkpoint and evaluation), e.g. for an experiment's own evaluation.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    # ---- setup --------------------------------------------------------------------
    d = cfg.derived()
    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=trackers(out_dir, cfg.tensorboard, cfg.log_with),
    )
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    is_main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)  # the LoRA's gaussian init
    if adapter is None:
        with accelerator.main_process_first():  # builds a tiny model once, not per rank
            adapter = load_adapter(cfg, device)
    params = adapter.add_lora(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=cfg.adam_betas,
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_eps,
    )
    ema = EMA(params, decay=cfg.ema_decay, update_every=cfg.ema_every) if cfg.ema else None
    gardo = GARDOState(cfg.gardo) if cfg.gardo.beta > 0 else None
    policy = Policy(adapter, cfg, params, optimizer, ema, accelerator, gardo)
    own_rewards = rewards is None
    reward_device = "cpu" if device.type == "cpu" else str(device)  # "cpu:0" under gloo
    if rewards is None:
        with accelerator.main_process_first():
            rewards = make_reward_source(cfg, device=reward_device)
    prompts = read_prompts(cfg.prompts_path(), cfg.prompts_format)
    eval_prompts = read_prompts(cfg.eval_prompts_path(), cfg.prompts_format)
    noiser = PromptNoiser(d.noise_prompt, cfg.seed) if cfg.prompt_noise else None
    accelerator.init_trackers(cfg.tracker_project)  # on the main process only
    for tracker in accelerator.trackers:  # the run's config where a tracker keeps one
        if tracker.name in ("wandb", "mlflow"):
            tracker.store_init_configuration(cfg.model_dump(mode="json"))
    say = print_fn or (lambda s: tqdm.write(s))
    start, opt_steps = 0, 0
    if resume is not None:
        path = ckpt.find_latest(out_dir) if str(resume) == "latest" else Path(resume)
        if path is None:
            raise ValueError(f"--resume latest: no checkpoint under {out_dir / 'checkpoints'}")
        state = ckpt.load_state(path)
        with torch.no_grad():
            for p, v in zip(params, state["lora"], strict=True):
                p.copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        if gardo is not None and state.get("gardo") is not None:
            gardo.load_state_dict(state["gardo"], params[0].device)
        start, opt_steps = int(state["step"]), int(state["optimizer_steps"])
        if is_main:
            say(f"resumed from {path} at step {start}")
    result = TrainResult(output_dir=out_dir)
    if is_main:
        (out_dir).mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

    bar = tqdm(
        range(start + 1, cfg.max_steps + 1),
        initial=start,
        total=cfg.max_steps,
        disable=not (cfg.progress and is_main),
        desc="train",
    )
    try:
        for step in bar:
            t0 = time.perf_counter()
            # ---- 1. sample: generate each group; submit it the moment it is decoded --
            g_prompts = _gen(cfg.seed, 0, step, rank)
            pick = torch.randint(len(prompts), (cfg.prompts_per_step,), generator=g_prompts)
            step_prompts = [prompts[int(i)] for i in pick]
            base_id = (step * world + rank) * _IDS_PER_STEP
            rollouts, sample_ids, futures = [], [], []
            for gi, prompt in enumerate(step_prompts):
                ids = [base_id + gi * d.pool_size + i for i in range(d.pool_size)]
                ro = generate(adapter, cfg, prompt, ids, noiser=noiser)
                futures.append(rewards.submit(prompt, ro.images, f"s{step}/r{rank}/p{gi}"))
                rollouts.append(ro)
                sample_ids.append(ids)
            t_sampled = time.perf_counter()

            # ---- 2. rewards: every group whole, or the run stops -------------------
            results, wait_s = wait_all(futures)
            t_rewarded = time.perf_counter()

            # ---- 3. advantages: per group; DRIFT's kept G; drop zero advantages ----
            kept_ro, kept_ids, kept_prompts, kept_adv = [], [], [], []
            for ro, ids, res, prompt in zip(
                rollouts, sample_ids, results, step_prompts, strict=True
            ):
                keep = torch.as_tensor(res.keep, dtype=torch.long)
                kept_ro.append(_take(ro, keep))
                kept_ids += [ids[int(i)] for i in keep]
                kept_prompts += [prompt] * len(keep)
                kept_adv.append(torch.as_tensor(res.advantages, dtype=torch.float32))
            batch = _cat(kept_ro)
            adv = torch.cat(kept_adv)
            # zero advantage (a group of equal rewards): no policy gradient, left out; with
            # several processes kept, so that every rank takes the same optimiser steps
            live = torch.nonzero(adv != 0).flatten() if world == 1 else torch.arange(len(adv))
            embeds = adapter.encode_prompts(kept_prompts)

            # GARDO: the KL's gate from the uncertainty over the step's batch
            gate, gardo_m = _gardo_gate(gardo, cfg, results)

            # ---- 4. update: inner epochs of PPO over minibatches and timesteps -----
            samples = StepSamples(batch, embeds, adv, live, kept_ids, noiser, step, rank, gate)
            sums, grad_norms, opt_steps = ppo_update(policy, samples, opt_steps)
            if gardo is not None:  # GARDO: the reference becomes the policy when due
                gardo_m["gardo/reset"] = float(gardo.maybe_reset(params, opt_steps))
                gardo_m["gardo/resets"] = float(gardo.resets)
            t_trained = time.perf_counter()

            # ---- 5. log, checkpoint, evaluate -------------------------------------
            m = group_metrics(results)
            m.update(sums)
            m.update(gardo_m)
            if grad_norms:
                m["train/grad_norm"] = float(np.mean(grad_norms))
            m["train/samples"] = float(len(live))
            step_s = t_trained - t0
            m.update(
                {
                    "perf/wait_s": wait_s,
                    "perf/sample_s": t_sampled - t0,
                    "perf/reward_s": t_rewarded - t_sampled,
                    "perf/train_s": t_trained - t_rewarded,
                    "perf/step_s": step_s,
                    "perf/wait_share": wait_s / max(step_s, 1e-9),
                    "perf/images_per_s": d.images_generated_per_step / max(step_s, 1e-9),
                }
            )
            if world > 1:
                keys = sorted(m)
                vals = accelerator.reduce(torch.tensor([m[k] for k in keys], device=device), "mean")
                m = dict(zip(keys, vals.tolist(), strict=True))
            m["train/optimizer_steps"] = float(opt_steps)
            m["perf/processes"] = float(world)
            result.history.append(m)
            if is_main:
                accelerator.log(finite_scalars(m), step=step)
                bar.set_postfix(reward=f"{m['reward/mean']:.3g}", wait_s=f"{wait_s:.2f}")
                say(_summary_line(step, cfg.max_steps, m))
            if cfg.save_every and step % cfg.save_every == 0:
                result.last_checkpoint = _save(policy, step, opt_steps, is_main)
                accelerator.wait_for_everyone()
            if cfg.eval_every and step % cfg.eval_every == 0:
                if is_main:
                    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                        ev, grids = evaluate(adapter, cfg, rewards, eval_prompts, step, out_dir)
                    result.evals.append(ev)
                    accelerator.log(finite_scalars(ev), step=step)
                    log_grids(accelerator, grids, step)
                    say(f"eval step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in ev.items()))
                accelerator.wait_for_everyone()
            if on_step_end is not None and is_main:
                on_step_end(step, m)
    finally:
        bar.close()
        for tracker in accelerator.trackers:  # (end_training would also end the process group)
            tracker.finish()
        if own_rewards:
            rewards.close()
    return result


def _gardo_gate(
    gardo: GARDOState | None, cfg: TrainConfig, results: Sequence[GroupRewards]
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """GARDO's gate of the step's kept samples (group order, as the batch) and its metrics;
    (None, {}) without GARDO."""
    if gardo is None:
        return None, {}
    proxy = np.concatenate([r.quality["total"] for r in results])
    aux = [np.concatenate([r.quality[a] for r in results]) for a in cfg.gardo.aux_scorers]
    res = gardo.gate(proxy, aux)
    metrics = {
        "gardo/k": res.k,
        "gardo/u_mean": float(res.u.mean()),
        "gardo/gated_frac": float(res.gated.mean()),
    }
    return torch.as_tensor(res.gated), metrics


def _save(policy: Policy, step: int, opt_steps: int, is_main: bool) -> Path:
    adapter, cfg, ema = policy.adapter, policy.cfg, policy.ema
    directory = ckpt.checkpoint_dir(cfg.output_dir, step)
    if not is_main:
        return directory
    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
        adapter.save_lora(directory / "lora")
    ckpt.save_state(
        directory,
        {
            "step": step,
            "optimizer_steps": opt_steps,
            "lora": [p.detach().cpu().clone() for p in policy.params],
            "optimizer": policy.optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "gardo": policy.gardo.state_dict() if policy.gardo is not None else None,
            "rng": ckpt.rng_state(),
            "config": cfg.model_dump(mode="json"),
        },
    )
    return directory
