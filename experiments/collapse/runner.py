"""The mode-collapse experiment: GRPO and its diversity variants, each swept over its
strength, in every world, through the trainer and a live reward service.

Every run goes through the trainer's own loop (:func:`divreward.trainer.loop.train`), its
SDE step, losses and reward client, against a local Ray Serve reward service that serves
the world's quality scorer, auxiliary scorers and embedder as plugins, exactly like
built-in models (one service; each world's applications are deployed in turn).

Per run the policy is evaluated on ``budget.eval_samples`` images of the world's prompt,
drawn with the training sampler (same SDE, steps and noise level; the same noise at every
evaluation and in every run): at the end for every method, and every
``budget.curve_every`` steps for GRPO (its curve is its front). Measured on them: the
mean of the quality scorer (the same plugin object, in this process), the mode labels
(the world's classifier; the report derives coverage, entropy and KL to the ideal from
them), and the mean pairwise embedding distance and the Vendi score of the world's
embedder (:mod:`divreward.core`). The base model and the world's oracle policy are
evaluated once per world the same way.

Runs are resumable: each writes ``<out>/<world>/runs/<run id>.json`` with a fingerprint of
its settings, and a run whose record exists with the same fingerprint is not run again
(``--set resume=false`` reruns everything). ``workers`` training processes share the
service. Run ``python -m experiments.collapse --help`` from the repository root;
``make bench-collapse`` runs the full setting and writes ``bench/results/collapse/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.collapse.config import METHODS, SWEEP, CollapseConfig, run_id
from experiments.collapse.report import write_report
from experiments.collapse.worlds import World, make_world

__all__ = ["Evaluator", "Job", "main", "method_availability", "run_experiment"]

#: The seed of the evaluation noise (the same images' noise in every evaluation).
EVAL_SEED = 10_000
#: Fields of the config that change a run's result (with the world's options).
_TRAIN_KNOBS = (
    "group_size",
    "num_steps",
    "noise_level",
    "learning_rate",
    "clip_range",
    "lora_rank",
    "sa_reg_weight",
)


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
    """A world's quality scorer, embedder and classifier in this process."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.quality = world.quality().load("scorer")
        self.embedder = world.embedder().load("embedder")
        self.aux = {s.name: s.load("scorer") for s in world.aux_scorers()}

    def models(self) -> dict[str, Any]:
        """Every plugin object by its entry name (the in-process reward backend's)."""
        return {
            self.world.quality().name: self.quality,
            self.world.embedder().name: self.embedder,
            **self.aux,
        }

    def images(self, images: torch.Tensor) -> dict[str, Any]:
        """Metrics of (N, 3, H, W) images in [0, 1]."""
        from divreward.core import mean_pairwise_distance, vendi_score

        arr = list((images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        q = self.quality.score(arr, [self.world.prompt] * len(arr))
        emb = self.embedder.embed(arr)
        return {
            "quality": float(np.mean(q)),
            "labels": self.world.classify(images).tolist(),
            "pairwise": float(mean_pairwise_distance([emb])),
            "vendi": float(vendi_score([emb])),
        }

    @torch.no_grad()
    def policy(self, adapter: Any, tc: Any, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        """Metrics of ``n`` samples of the policy with the training sampler (the same
        noise every time: image i's from seed (EVAL_SEED, i))."""
        embeds = adapter.encode_prompts([self.world.prompt])
        parts = []
        for c0 in range(0, n, 64):
            ids = range(c0, min(n, c0 + 64))
            ro = adapter.rollout(
                embeds.repeat(len(ids)),
                num_steps=tc.num_steps,
                guidance=tc.guidance,
                noise_level=tc.noise_level,
                height=tc.height,
                width=tc.width,
                generator=[torch.Generator().manual_seed(EVAL_SEED * 100_003 + i) for i in ids],
            )
            parts.append(ro.images.float().cpu())
        images = torch.cat(parts)
        return self.images(images), images


# ----------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Job:
    """One training run."""

    world: str
    world_options: dict[str, Any]
    method: str
    strength: float | None
    seed: int
    cfg: dict[str, Any]
    url: str
    out: str
    grid: bool

    @property
    def id(self) -> str:
        return run_id(self.method, self.strength, self.seed)

    def fingerprint(self, world: World) -> str:
        blob = {
            "world": world.model_dump(mode="json"),
            "train": {k: self.cfg[k] for k in _TRAIN_KNOBS},
            "method": self.method,
            "settings": METHODS[self.method].train_overrides(
                self.strength, CollapseConfig(**self.cfg)
            ),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def record_path(self) -> Path:
        return Path(self.out) / self.world / "runs" / f"{self.id}.json"


def train_config(job: Job, world: World, model_dir: Path, run_dir: Path) -> Any:
    """The run's TrainConfig: the shared knobs, the world's overrides, the method's."""
    from divreward.trainer.config import TrainConfig

    cfg = CollapseConfig(**job.cfg)
    world.register_family()
    over = METHODS[job.method].train_overrides(job.strength, cfg)
    if "gardo" in over:
        over["gardo"] = {**over["gardo"], "aux_scorers": [s.name for s in world.aux_scorers()]}
    prompts = Path(job.out) / world.name / "prompts.txt"
    fields: dict[str, Any] = dict(
        model=str(model_dir),
        family=world.family,
        height=world.height,
        width=world.width,
        num_steps=cfg.num_steps,
        eval_num_steps=cfg.num_steps,
        guidance=0.0,
        noise_level=cfg.noise_level,
        lora_rank=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        prompts_file=str(prompts),
        eval_prompts_file=str(prompts),
        group_size=cfg.group_size,
        prompts_per_step=1,
        sample_batch_size=64,
        learning_rate=cfg.learning_rate,
        train_batch_size=cfg.group_size,
        gradient_accumulation_steps=1,
        clip_range=cfg.clip_range,
        reward_backend="inprocess" if cfg.backend == "inprocess" else "service",
        reward_url=job.url or "http://127.0.0.1:1",
        quality={world.quality().name: 1.0},
        inprocess_embedder=world.embedder().name,
        ema=False,
        seed=job.seed,
        max_steps=world.budget.steps,
        output_dir=str(run_dir),
        save_every=0,
        eval_every=0,
        tensorboard=False,
        progress=False,
    )
    fields.update(world.train)
    fields.update(over)
    return TrainConfig(**fields)


_WORKER: dict[str, tuple[World, Path, Evaluator]] = {}


def _world_in_process(job: Job) -> tuple[World, Path, Evaluator]:
    """The job's world, prepared, with its evaluator (cached per process)."""
    key = json.dumps([job.world, job.world_options], sort_keys=True)
    if key not in _WORKER:
        world = make_world(job.world, job.world_options)
        model_dir = world.prepare(Path(job.cfg["cache_dir"]), log=lambda s: None)
        _WORKER[key] = (world, model_dir, Evaluator(world))
    return _WORKER[key]


def run_job(job: Job) -> dict[str, Any]:
    """One training run with its evaluations; writes its record (and, for the grid seed,
    its final samples). Returns the record."""
    from divreward.trainer.loop import load_adapter, train
    from divreward.trainer.rewards import InProcessRewards, ServiceRewards

    torch.set_num_threads(int(job.cfg["threads"]))
    world, model_dir, ev = _world_in_process(job)
    # the trainer's own output (its config and metrics.jsonl) stays out of the results
    run_dir = Path(job.cfg["cache_dir"]) / "runs" / world.name / job.id
    tc = train_config(job, world, model_dir, run_dir)
    adapter = load_adapter(tc, torch.device("cpu"))
    budget = world.budget
    curve = job.method == "grpo"
    evals: list[dict[str, Any]] = []

    def on_step_end(step: int, metrics: dict[str, float]) -> None:
        if curve and step % budget.curve_every == 0 and step != budget.steps:
            m, _ = ev.policy(adapter, tc, budget.eval_samples)
            evals.append({"step": step, **m})

    rewards = (
        ServiceRewards(tc)
        if job.cfg["backend"] == "service"
        else InProcessRewards(tc, models=ev.models())
    )
    t0 = time.perf_counter()
    if curve:
        m, _ = ev.policy(adapter, tc, budget.eval_samples)
        evals.append({"step": 0, **m})
    res = train(
        tc, adapter=adapter, rewards=rewards, print_fn=lambda s: None, on_step_end=on_step_end
    )
    m, images = ev.policy(adapter, tc, budget.eval_samples)
    evals.append({"step": budget.steps, **m})
    wall = time.perf_counter() - t0
    keys = ("reward/mean", "diversity/bonus", "loss/policy", "loss/reg", "perf/step_s")
    history = [{k: h[k] for k in h if k in keys or k.startswith("gardo/")} for h in res.history]
    record = {
        "world": world.name,
        "method": job.method,
        "strength": job.strength,
        "seed": job.seed,
        "fingerprint": job.fingerprint(world),
        "wall_s": wall,
        "evals": evals,
        "history": history,
    }
    path = job.record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if job.grid:
        grid = (images[: int(job.cfg["grid_samples"])] * 255).round().to(torch.uint8).numpy()
        np.save(path.with_suffix(".grid.npy"), grid)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)  # a record is there whole or not at all
    return record


def _guarded(job: Job) -> tuple[str, dict[str, Any] | None, str]:
    """run_job that returns its error instead of raising (the sweep goes on)."""
    try:
        return job.id, run_job(job), ""
    except Exception:
        return job.id, None, traceback.format_exc()


def method_availability(world: World) -> dict[str, str]:
    """method -> why it cannot run in ``world`` with this divreward ('' when it can)."""
    from divreward.methods import method_names
    from divreward.trainer.config import TrainConfig

    out: dict[str, str] = {}
    for name, m in METHODS.items():
        why = ""
        if m.service_method not in method_names():
            why = f"this divreward has no diversity method {m.service_method!r}"
        elif m.train_field and m.train_field not in TrainConfig.model_fields:
            why = f"this divreward's TrainConfig has no {m.train_field!r} block"
        elif m.needs_aux and not world.aux_scorers():
            why = f"world {world.name} has no auxiliary scorers (GARDO's gate needs them)"
        out[name] = why
    return out


# ----------------------------------------------------------------------------- service


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def reward_service(cfg: CollapseConfig) -> Iterator[Callable[[World], str]]:
    """A local Ray + Serve; yields ``deploy(world) -> url``, which (re)deploys the reward
    and diversity applications with that world's plugins."""
    from divreward.services import launch
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    model = {"num_cpus": 0.1, "batch": {"max_batch_images": 256, "batch_wait_timeout_s": 0.002}}
    common: dict[str, Any] = {"ingress": {"num_cpus": 0.1}}
    http_port, grpc_port = _port(), _port()
    launch.start(
        launch.serve_start_options("127.0.0.1", http_port, 120.0, grpc_port),
        num_cpus=2,
        ray_init_kwargs={"log_to_driver": False},
    )

    deployed: list[str] = []

    def deploy(world: World) -> str:
        from ray import serve

        if deployed:  # the previous world's applications go first: no stale replica serves
            serve.delete(launch.REWARD_APP)
            serve.delete(launch.DIVERSITY_APP)
        deployed.append(world.name)
        scorers = {s.name: s.entry(**model) for s in [world.quality(), *world.aux_scorers()]}
        reward = RewardAppArgs.model_validate(dict(scorers=scorers, **common))
        emb = world.embedder()
        diversity = DiversityAppArgs.model_validate(
            dict(embedder={**emb.entry(**model), "name": emb.name}, **common)
        )
        assert reward.diversity_app == launch.DIVERSITY_APP
        launch.deploy_services(reward, diversity, timeout_s=300.0)
        if cfg.transport == "grpc":
            return f"grpc://127.0.0.1:{grpc_port}"
        return f"http://127.0.0.1:{http_port}"

    try:
        yield deploy
    finally:
        launch.shutdown()


def check_service(url: str, world: World, ev: Evaluator, images: np.ndarray) -> None:
    """The service scores and embeds ``images`` ((N, 3, H, W) uint8) as this process's
    plugin objects do: it serves this world, not another. RuntimeError otherwise."""
    from divreward.client import Group, RewardClient

    hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    names = [world.quality().name, *(s.name for s in world.aux_scorers())]
    kw = {"application": "reward"} if url.startswith("grpc") else {}
    with RewardClient(url, downsize=False, **kw) as client:
        res = client.rewards(
            [Group(world.prompt, hwc)],
            quality=dict.fromkeys(names, 1.0),
            diversity={"method": "diversegrpo"},
            return_embeddings=True,
        )
    g = res.groups[0]
    local = {world.quality().name: ev.quality, **ev.aux}
    prompts = [world.prompt] * len(hwc)
    for name in names:
        want = local[name].score(list(hwc), prompts)
        if not np.allclose(np.asarray(g.quality[name]), want, atol=1e-5):
            raise RuntimeError(
                f"{world.name}: the service's {name} scores differ from the plugin's"
            )
    emb = ev.embedder.embed(list(hwc))
    if not np.allclose(np.asarray(g.diversity.embeddings), emb, atol=1e-4):
        raise RuntimeError(f"{world.name}: the service's embeddings differ from the plugin's")


# ----------------------------------------------------------------------------- experiment


def world_options(cfg: CollapseConfig, name: str) -> dict[str, Any]:
    return dict(cfg.world.get(name, {}))


def _jobs(cfg: CollapseConfig, world: World, url: str, skip: dict[str, str]) -> list[Job]:
    """The world's runs, seed-major (a partial sweep has whole fronts on its first seeds)."""
    jobs = []
    first = min(world.budget.seeds)
    for seed in world.budget.seeds:
        for method in cfg.methods:
            if skip.get(method):
                continue
            for strength in cfg.strengths(method):
                jobs.append(
                    Job(
                        world=world.name,
                        world_options=world_options(cfg, world.name),
                        method=method,
                        strength=strength,
                        seed=seed,
                        cfg=cfg.model_dump(mode="json"),
                        url=url,
                        out=cfg.out_dir,
                        grid=seed == first,
                    )
                )
    return jobs


def _done(job: Job, world: World) -> bool:
    path = job.record_path()
    if not path.is_file():
        return False
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return False
    return bool(rec.get("fingerprint") == job.fingerprint(world))


def _run_jobs(jobs: list[Job], cfg: CollapseConfig, log: Callable[[str], None]) -> dict[str, str]:
    """Run ``jobs`` (``workers`` at a time); returns run id -> error of the failed ones."""
    errors: dict[str, str] = {}
    t0 = time.perf_counter()

    def done(rid: str, rec: dict[str, Any] | None, err: str, i: int) -> None:
        if rec is None:
            errors[rid] = err
            log(f"  FAILED {rid}:\n{err}")
            return
        last = rec["evals"][-1]
        log(
            f"  [{i}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {rid:22s} {rec['wall_s']:5.1f}s"
            f"  quality {last['quality']:.3f}  vendi {last['vendi']:.2f}"
            f"  pairwise {last['pairwise']:.3f}"
        )

    if cfg.workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs, 1):
            rid, rec, err = _guarded(job)
            done(rid, rec, err, i)
        return errors
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
        pending: set[Future[Any]] = {pool.submit(_guarded, j) for j in jobs}
        i = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                i += 1
                rid, rec, err = f.result()
                done(rid, rec, err, i)
    return errors


def _write_world_files(
    world: World, ev: Evaluator, model_dir: Path, cfg: CollapseConfig, out: Path
) -> None:
    """The base model's and the oracle policy's evaluations, once per world."""
    from divreward.trainer.loop import load_adapter

    job = Job(world.name, world_options(cfg, world.name), "grpo", None, 0,
              cfg.model_dump(mode="json"), "", cfg.out_dir, False)  # fmt: skip
    wdir = out / world.name
    tc = train_config(job, world, model_dir, Path(cfg.cache_dir) / "runs" / world.name / "base")
    adapter = load_adapter(tc, torch.device("cpu"))
    n = world.budget.eval_samples
    base, images = ev.policy(adapter, tc, n)
    np.save(
        wdir / "base.grid.npy", (images[: cfg.grid_samples] * 255).round().to(torch.uint8).numpy()
    )
    oracle = world.oracle_samples(n, seed=EVAL_SEED)
    facts = {
        "world": world.name,
        "summary": world.summary,
        "options": world.model_dump(mode="json"),
        "modes": world.mode_names(),
        "meta": world.meta(),
        "base": base,
        "oracle": None if oracle is None else ev.images(oracle),
    }
    if oracle is not None:
        np.save(
            wdir / "oracle.grid.npy",
            (oracle[: cfg.grid_samples] * 255).round().to(torch.uint8).numpy(),
        )
    (wdir / "world.json").write_text(json.dumps(facts) + "\n")


def run_experiment(cfg: CollapseConfig, log: Callable[[str], None] = print) -> Path:
    """Every world: prepare it (cached), serve its plugins, run every (method, strength,
    seed) not yet done, then write the report over all worlds."""
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_experiment(cfg, log)
    finally:
        torch.set_num_threads(before)


def _run_world(
    world: World,
    cfg: CollapseConfig,
    deploy: Callable[[World], str],
    skipped: dict[str, dict[str, str]],
    log: Callable[[str], None],
) -> tuple[int, dict[str, str]]:
    """Prepare ``world``, evaluate its base and oracle, run what is not done yet; the
    number of runs trained and the errors of the failed ones."""
    out = Path(cfg.out_dir)
    wdir = out / world.name
    (wdir / "runs").mkdir(parents=True, exist_ok=True)
    (wdir / "prompts.txt").write_text(world.prompt + "\n")
    model_dir = world.prepare(Path(cfg.cache_dir), log=log)
    ev = Evaluator(world)
    _write_world_files(world, ev, model_dir, cfg, out)
    avail = method_availability(world)
    skipped[world.name] = {m: avail[m] for m in cfg.methods if avail[m]}
    for m, why in skipped[world.name].items():
        log(f"{world.name}: skipping {m}: {why}")
    jobs = _jobs(cfg, world, "", skipped[world.name])
    todo = [j for j in jobs if not (cfg.resume and _done(j, world))]
    log(f"{world.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already done")
    if not todo:
        return 0, {}
    url = deploy(world)
    if url:
        check_service(url, world, ev, np.load(wdir / "base.grid.npy", allow_pickle=False))
        log(f"{world.name}: reward service at {url} (serves this world's scores)")
    return len(todo), _run_jobs([dataclasses.replace(j, url=url) for j in todo], cfg, log)


def _run_experiment(cfg: CollapseConfig, log: Callable[[str], None]) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    worlds = [make_world(name, world_options(cfg, name)) for name in cfg.worlds]
    timings: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    failed: dict[str, dict[str, str]] = {}
    service = (
        reward_service(cfg)
        if cfg.backend == "service"
        else contextlib.nullcontext(lambda world: "")
    )
    exp = out / "experiment.json"
    sessions = json.loads(exp.read_text()).get("sessions", []) if exp.is_file() else []
    session: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sessions.append(session)

    def write(final: bool) -> None:
        session.update(timings=timings, wall_s=time.perf_counter() - t0, finished=final)
        summary = {
            "config": cfg.model_dump(mode="json"),
            "skipped": skipped,
            "failed": {w: sorted(f) for w, f in failed.items()},
            "sessions": sessions,
        }
        exp.write_text(json.dumps(summary, indent=2) + "\n")
        write_report(out, cfg, skipped=skipped)

    with service as deploy:
        for world in worlds:
            tw = time.perf_counter()
            try:
                n_runs, failed[world.name] = _run_world(world, cfg, deploy, skipped, log)
            except Exception:  # the next world still runs; a rerun resumes this one
                err = traceback.format_exc()
                log(f"{world.name}: FAILED\n{err}")
                failed[world.name] = {"<world>": err}
                n_runs = 0
            timings[world.name] = {"wall_s": time.perf_counter() - tw, "runs": n_runs}
            write(final=False)
    write(final=True)
    log(f"wrote {out}/collapse.md and plots in {time.perf_counter() - t0:.0f}s")
    return out


def _nested(data: dict[str, Any], key: str, value: Any) -> None:
    """``world.<name>.a.b=value`` into data['world'][name]['a']['b']; other keys flat."""
    if not key.startswith("world."):
        data[key] = value
        return
    _, rest = key.split(".", 1)
    name, sep, path = rest.partition(".")
    if not sep:
        raise ValueError(f"--set {key}: expected world.<name>.<field>=VALUE")
    node = data.setdefault("world", {}).setdefault(name, {})
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def parse_args(argv: Sequence[str] | None = None) -> tuple[CollapseConfig, bool]:
    """The config of a command line, and whether it asks for the report only."""
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
        help="CollapseConfig field (JSON/YAML value), e.g. --set workers=1, "
        "--set sweep.kl=[0.01,0.1], --set world.shapes-quality-is-mode.budget.seeds=[0,1]",
    )
    p.add_argument("--out", default=None, help="output directory (out_dir)")
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the records there"
    )
    args = p.parse_args(argv)
    import yaml

    data: dict[str, Any] = {"sweep": {k: list(v) for k, v in SWEEP.items()}}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        key, value = key.strip(), yaml.safe_load(raw)
        if key.startswith("sweep."):
            data.setdefault("sweep", {})[key.split(".", 1)[1]] = value
        else:
            _nested(data, key, value)
    if args.out:
        data["out_dir"] = args.out
    return CollapseConfig(**data), bool(args.report_only)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, report_only = parse_args(argv)
    if report_only:
        write_report(Path(cfg.out_dir), cfg)
        return 0
    run_experiment(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
