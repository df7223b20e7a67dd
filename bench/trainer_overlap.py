"""How long the trainer waits on rewards (not a test).

The real training loop (:func:`divreward.trainer.loop.train`, preset ``tiny-cpu``: a
tiny random SD3 on CPU) runs a few steps with rewards from

1. the live reward service over HTTP,
2. the same service over gRPC,
3. in-process scoring (the same registry models in the trainer's process),

and reports, per step, the seconds spent waiting for rewards after the last group was
generated (``perf/wait_s``) as a share of the step time. Each group is submitted the
moment it is decoded, so generating group g+1 overlaps scoring group g; what is left is
the last group's scoring. Target: < 5 % when the service keeps up. The first step
(warm-up: model loading, connection set-up) is excluded.

The service here runs the tiny models (DreamSim with its single-branch DINO type, as in
the tests) on the same 2-core machine as the trainer, so trainer and service compete for
the CPU; with real models the service runs on its own GPUs.

    flock /tmp/divreward-ray.lock .venv/bin/python bench/trainer_overlap.py [--steps 6]

Writes bench/results/trainer_overlap.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch
from _common import markdown, start_tiny_service, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCORERS = {"pickscore": 1.0, "clipscore": 0.5}
EMBEDDER_OPTIONS = {"dreamsim_type": "dino_vitb16"}
TARGET_SHARE = 0.05


def run(kind: str, url: str | None, tiny_dir: Path, steps: int, out: Path) -> dict[str, Any]:
    from divreward.trainer.config import load_config
    from divreward.trainer.loop import train

    overrides = [
        f"tiny_models_dir={tiny_dir}",
        f"output_dir={out / kind}",
        f"max_steps={steps}",
        "prompts_per_step=4",
        "group_size=8",
        "train_batch_size=8",
        "progress=false",
        "tensorboard=false",
        f"quality={json.dumps(SCORERS)}",
    ]
    if url is None:
        overrides.append("reward_backend=inprocess")
    else:
        overrides += [f"reward_url={url}", "reward_timeout_s=60", "reward_retries=3"]
    cfg = load_config("tiny-cpu", overrides)
    hist = train(cfg, print_fn=lambda s: None).history[1:]  # step 1 is warm-up
    wait = [h["perf/wait_s"] for h in hist]
    step = [h["perf/step_s"] for h in hist]
    share = [w / s for w, s in zip(wait, step, strict=True)]
    return {
        "transport": kind,
        "steps_measured": len(hist),
        "images_per_step": cfg.derived().images_generated_per_step,
        "step_s_mean": statistics.mean(step),
        "sample_s_mean": statistics.mean(h["perf/sample_s"] for h in hist),
        "train_s_mean": statistics.mean(h["perf/train_s"] for h in hist),
        "wait_s_mean": statistics.mean(wait),
        "wait_s_max": max(wait),
        "wait_share_mean": statistics.mean(share),
        "wait_share_max": max(share),
        "images_per_s_mean": statistics.mean(h["perf/images_per_s"] for h in hist),
    }


def write(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer_overlap.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    ok = all(r["wait_share_mean"] < TARGET_SHARE for r in results)
    header = ["rewards", "step s", "sampling s", "update s", "wait s (mean / max)"]
    header += ["wait share (mean / max)", "images/s"]
    rows = [
        (
            r["transport"],
            f"{r['step_s_mean']:.2f}",
            f"{r['sample_s_mean']:.2f}",
            f"{r['train_s_mean']:.2f}",
            f"{r['wait_s_mean']:.3f} / {r['wait_s_max']:.3f}",
            f"{r['wait_share_mean']:.1%} / {r['wait_share_max']:.1%}",
            f"{r['images_per_s_mean']:.1f}",
        )
        for r in results
    ]
    report = markdown(
        "Trainer: reward wait per step (bench/trainer_overlap.py)",
        f"{meta['when']}, {meta['machine']}; torch {meta['torch']}. The real loop "
        "(preset tiny-cpu: tiny random SD3, 32x32, 4 denoising steps) with "
        f"{meta['prompts_per_step']} prompts x {meta['group_size']} images per step; "
        f"{meta['steps']} steps, the first (warm-up) excluded. Each group is submitted "
        "the moment it is decoded; the wait is what remains after the last group is "
        "generated. Service: tiny PickScore + CLIPScore + DreamSim (DINO branch) on Ray "
        "Serve on the same 2 CPU cores as the trainer.",
        table(header, rows),
        f"Target: wait share < {TARGET_SHARE:.0%} when the service keeps up: "
        + ("met by every transport." if ok else "NOT met by every transport (see above)."),
        "In-process rewards run in a worker thread of the trainer, so they overlap "
        "generation too, but compete with it for the same cores and the same Python "
        "process. The tiny scorers take milliseconds; with real scorers on a GPU the "
        "last group's scoring time is what the wait becomes, unless the step has more "
        "groups than that time covers.",
    )
    (RESULTS / "trainer_overlap.md").write_text(report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    work = Path(tempfile.mkdtemp(prefix="divreward-bench-trainer-"))
    tiny = work / "tiny"
    from divreward.services import launch

    http_url, grpc_url = start_tiny_service(
        tiny, SCORERS, EMBEDDER_OPTIONS, ray_init_kwargs={"log_to_driver": False}
    )
    results = []
    try:
        for kind, url in (("http", http_url), ("grpc", grpc_url)):
            results.append(run(kind, url, tiny, args.steps, work))
            print(json.dumps(results[-1]), flush=True)
    finally:
        launch.shutdown()
    results.append(run("in-process", None, tiny, args.steps, work))
    print(json.dumps(results[-1]), flush=True)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "prompts_per_step": 4,
        "group_size": 8,
    }
    write(results, meta)
    print((RESULTS / "trainer_overlap.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
