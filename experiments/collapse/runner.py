"""The mode-collapse experiment: GRPO and its diversity variants on the toy world.

Every run goes through the trainer's own loop (:func:`divreward.trainer.loop.train`), its
SDE step, losses and reward client, against a live Ray Serve reward service that serves
the toy rewards as plugins (``experiments.collapse.plugins``), exactly like built-in models.

Per run, the policy is evaluated every ``eval_every`` steps (and before the first
update, and after the last) on ``eval_samples`` images of the generic prompt drawn with
the training sampler (same SDE, steps and noise level; the same noise at every
evaluation). Measured on them:

- ``quality``: the mean of the served quality scorer's score (computed here with the
  same plugin object);
- the mode histogram (the classifier's argmax), ``coverage`` (modes holding >= 5% of the
  samples), ``entropy`` (nats; log K is uniform), and ``kl_ideal`` = KL(histogram || p*)
  with p*(m) ∝ p_base(m) exp(w_m / tau): the optimum of the quality reward under a KL
  leash to the base (tau = ``ideal_temperature``; default margin / ln 2, so a preferred
  mode ends with twice its base share relative to the others);
- ``pairwise``: the mean pairwise embedding distance (1 - cos, the toy embedder) and
  ``vendi`` (Vendi score of the cosine kernel), both from :mod:`divreward.core`.

Run ``python -m experiments.collapse --help``; ``make bench-collapse`` runs the full
setting and writes ``bench/results/collapse/`` (a markdown table, PNG plots, JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.collapse.config import METHODS, CollapseConfig
from experiments.collapse.family import FAMILY, register
from experiments.collapse.pretrain import GENERIC_PROMPT, ensure_toy, load_cnn, load_meta
from experiments.collapse.report import write_report

__all__ = ["main", "run_experiment"]

# ----------------------------------------------------------------------------- rewards


class _LocalModels:
    """The plugin objects, in this process: evaluation and the in-process backend."""

    def __init__(self, toy_dir: Path, cfg: CollapseConfig) -> None:
        from divreward.models.base import LoadOptions
        from divreward.models.plugins import load_plugin

        self.quality: Any = load_plugin(
            "toy_quality",
            "experiments.collapse.plugins:quality_scorer",
            "scorer",
            LoadOptions(options=quality_options(toy_dir, cfg)),
        )
        self.embedder: Any = load_plugin(
            "toy_embedder",
            "experiments.collapse.plugins:embedder",
            "embedder",
            LoadOptions(options={"model_dir": str(toy_dir)}),
        )
        self.classifier = load_cnn(toy_dir / "classifier.safetensors", cfg.k)


def quality_options(toy_dir: Path, cfg: CollapseConfig) -> dict[str, Any]:
    return {
        "model_dir": str(toy_dir),
        "preferred": list(cfg.preferred),
        "margin": cfg.margin,
        "scale": cfg.quality_scale,
        "crisp_weight": cfg.crisp_weight,
    }


def _inprocess_rewards(train_cfg: Any, models: _LocalModels) -> Any:
    """The trainer's in-process reward source over the plugin objects (no service)."""
    from divreward.trainer.rewards import InProcessRewards

    return InProcessRewards(
        train_cfg, models={"toy_quality": models.quality, "toy_embedder": models.embedder}
    )


# ----------------------------------------------------------------------------- service


@contextlib.contextmanager
def reward_service(toy_dir: Path, cfg: CollapseConfig) -> Iterator[str]:
    """A local Ray + Serve reward service with the toy plugins; yields its URL."""
    import socket

    from divreward.services import launch
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    model = {"num_cpus": 0.1, "batch": {"max_batch_images": 256, "batch_wait_timeout_s": 0.002}}
    common: dict[str, Any] = {"ingress": {"num_cpus": 0.1}}
    reward = RewardAppArgs.model_validate(
        dict(
            scorers={
                "toy_quality": {
                    **model,
                    "plugin": "experiments.collapse.plugins:quality_scorer",
                    "options": quality_options(toy_dir, cfg),
                }
            },
            **common,
        )
    )
    diversity = DiversityAppArgs.model_validate(
        dict(
            embedder={
                **model,
                "name": "toy_embedder",
                "plugin": "experiments.collapse.plugins:embedder",
                "options": {"model_dir": str(toy_dir)},
            },
            **common,
        )
    )
    http_port, grpc_port = port(), port()
    launch.start(
        launch.serve_start_options("127.0.0.1", http_port, 120.0, grpc_port),
        num_cpus=2,
        ray_init_kwargs={"log_to_driver": False},
    )
    try:
        launch.deploy_services(reward, diversity, timeout_s=300.0)
        if cfg.transport == "grpc":
            yield f"grpc://127.0.0.1:{grpc_port}"
        else:
            yield f"http://127.0.0.1:{http_port}"
    finally:
        launch.shutdown()


# ----------------------------------------------------------------------------- metrics


@torch.no_grad()
def evaluate_policy(
    adapter: Any, train_cfg: Any, models: _LocalModels, cfg: CollapseConfig, seed: int
) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics of ``eval_samples`` images of the current policy (training sampler)."""
    from divreward.core import mean_pairwise_distance, vendi_score
    from divreward.trainer.loop import generate

    ids = [(1 << 50) + i for i in range(cfg.eval_samples)]
    ro = generate(
        adapter, train_cfg.model_copy(update={"seed": seed}), GENERIC_PROMPT, ids, noiser=None
    )
    images = ro.images
    arr = list((images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    q = models.quality.score(arr, [GENERIC_PROMPT] * len(arr))
    emb = models.embedder.embed(arr)
    labels = models.classifier(images).argmax(1).numpy()
    m: dict[str, Any] = {
        "quality": float(np.mean(q)),
        "labels": labels.tolist(),
        "pairwise": float(mean_pairwise_distance([emb])),
        "vendi": float(vendi_score([emb])),
    }
    return m, images


# ----------------------------------------------------------------------------- runs


def train_config(
    cfg: CollapseConfig,
    method: str,
    seed: int,
    toy_dir: Path,
    url: str,
    run_dir: Path,
    prompts_file: Path,
) -> Any:
    from divreward.trainer.config import TrainConfig

    register()  # the toy family, in the trainer's registry
    _, over = METHODS[method]
    over = dict(over)
    if over.get("regulariser") == "kl":
        over["reg_weight"] = cfg.kl_weight
    elif over.get("regulariser") == "sa_reg":
        over["reg_weight"] = cfg.sa_reg_weight
    params: dict[str, Any] = {}
    if over.get("diversity") == "diversegrpo":
        params = {"beta": cfg.beta}
    elif over.get("diversity") == "drift":
        params = {"lam": cfg.drift_lam}
    batch = cfg.group_size * cfg.prompts_per_step
    return TrainConfig(
        model=str(toy_dir),
        family=FAMILY,
        height=16,
        width=16,
        num_steps=cfg.num_steps,
        eval_num_steps=cfg.num_steps,
        guidance=0.0,
        noise_level=cfg.noise_level,
        lora_rank=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        prompts_file=str(prompts_file),
        eval_prompts_file=str(prompts_file),
        group_size=cfg.group_size,
        prompts_per_step=cfg.prompts_per_step,
        sample_batch_size=64,
        learning_rate=cfg.learning_rate,
        train_batch_size=batch,
        gradient_accumulation_steps=1,
        clip_range=cfg.clip_range,
        reward_backend="inprocess" if cfg.backend == "inprocess" else "service",
        reward_url=url,
        quality={"toy_quality": 1.0},
        diversity_params=params,
        inprocess_embedder="toy_embedder",
        ema=False,
        seed=seed,
        max_steps=cfg.steps,
        output_dir=str(run_dir),
        save_every=0,
        eval_every=0,
        tensorboard=False,
        progress=False,
        **over,
    )


def run_one(
    cfg: CollapseConfig,
    method: str,
    seed: int,
    toy_dir: Path,
    url: str,
    models: _LocalModels,
    out: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One training run with its evaluations; writes ``runs/<method>-s<seed>.json``."""
    from divreward.trainer.loop import load_adapter, train
    from divreward.trainer.rewards import ServiceRewards

    run_dir = out / "runs" / f"{method}-s{seed}"
    prompts_file = out / "prompts.txt"
    tc = train_config(
        cfg, method, seed, toy_dir, url or "http://127.0.0.1:1", run_dir, prompts_file
    )
    adapter = load_adapter(tc, torch.device("cpu"))
    evals: list[dict[str, Any]] = []
    finals: dict[str, torch.Tensor] = {}

    def on_step_end(step: int, metrics: dict[str, float]) -> None:
        if step % cfg.eval_every == 0:
            m, _ = evaluate_policy(adapter, tc, models, cfg, seed=10_000)
            evals.append({"step": step, **m})

    inner = ServiceRewards(tc) if cfg.backend == "service" else _inprocess_rewards(tc, models)
    t0 = time.perf_counter()
    m, _ = evaluate_policy(adapter, tc, models, cfg, seed=10_000)  # the base policy
    evals.append({"step": 0, **m})
    res = train(
        tc, adapter=adapter, rewards=inner, print_fn=lambda s: None, on_step_end=on_step_end
    )
    m, images = evaluate_policy(adapter, tc, models, cfg, seed=10_000)
    if evals[-1]["step"] != cfg.steps:
        evals.append({"step": cfg.steps, **m})
    finals["images"] = images
    wall = time.perf_counter() - t0
    keys = (
        "reward/mean",
        "reward/toy_quality",
        "diversity/bonus",
        "diversity/k",
        "loss/policy",
        "loss/reg",
        "perf/wait_s",
        "perf/step_s",
    )
    history = [{k: h[k] for k in keys if k in h} for h in res.history]
    record = {"method": method, "seed": seed, "wall_s": wall, "evals": evals, "history": history}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{method}-s{seed}.json").write_text(json.dumps(record) + "\n")
    torch.save(images[: cfg.grid_samples].clone(), out / "runs" / f"{method}-s{seed}.grid.pt")
    last = evals[-1]
    log(
        f"{method:12s} seed {seed}: {wall:5.1f}s  quality {last['quality']:.3f}  "
        f"vendi {last['vendi']:.2f}  pairwise {last['pairwise']:.3f}"
    )
    return record


def run_experiment(cfg: CollapseConfig, log: Callable[[str], None] = print) -> Path:
    """Pre-train (cached), serve the plugins, run every (method, seed), write the report.

    Runs with one torch thread (``threads``; restored after): the networks are small,
    and two threads on two busy cores are many times slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_experiment(cfg, log)
    finally:
        torch.set_num_threads(before)


def _run_experiment(cfg: CollapseConfig, log: Callable[[str], None]) -> Path:
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; valid: {list(METHODS)}")
    bad = [m for m in cfg.preferred if not 0 <= m < cfg.k]
    if bad:
        raise ValueError(f"preferred: modes {bad} outside 0..{cfg.k - 1}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.txt").write_text(GENERIC_PROMPT + "\n")
    t0 = time.perf_counter()
    toy_dir = ensure_toy(cfg.cache_dir, cfg.toy_settings(), log=log)
    meta = load_meta(toy_dir)
    log(f"toy world {toy_dir} (classifier accuracy {meta['classifier_accuracy']:.4f})")
    models = _LocalModels(toy_dir, cfg)
    records: list[dict[str, Any]] = []
    service = (
        reward_service(toy_dir, cfg)
        if cfg.backend == "service" and cfg.reward_url is None
        else contextlib.nullcontext(cfg.reward_url or "")
    )
    with service as url:
        if url:
            log(f"reward service at {url}")
        for method in cfg.methods:
            for seed in cfg.seeds:
                records.append(run_one(cfg, method, seed, toy_dir, url, models, out, log))
    summary = {
        "config": cfg.model_dump(),
        "toy_dir": str(toy_dir),
        "toy_meta": meta,
        "wall_s": time.perf_counter() - t0,
    }
    (out / "experiment.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out, cfg, records, meta)
    log(f"wrote {out}/collapse.md and plots in {time.perf_counter() - t0:.0f}s")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.collapse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="CollapseConfig field (JSON/YAML value), e.g. --set seeds=[0,1]",
    )
    p.add_argument("--out", default=None, help="output directory (out_dir)")
    args = p.parse_args(argv)
    import yaml

    data: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        data[key.strip()] = yaml.safe_load(raw)
    if args.out:
        data["out_dir"] = args.out
    cfg = CollapseConfig(**data)
    run_experiment(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
