"""gRPC unary and streaming against HTTP, and a simulated trainer that overlaps
generation with reward computation.

Three measurements against one reward service (by default a local Serve instance on the
tiny models, started here on free loopback ports; ``--http/--grpc`` target another):

1. unary: one group per call, sequential, median/p90 latency over ``--reps`` calls, for
   HTTP (msgpack body) and gRPC;
2. streaming: ``--stream-groups`` groups with up to ``--in-flight`` unanswered, through
   ``RewardClient.submit`` (gRPC: one bidirectional stream; HTTP: concurrent POST
   /v1/groups), throughput in groups/s;
3. simulated trainer: each step "generates" ``--groups-per-step`` groups, one every
   ``--gen-ms`` (a sleep standing in for the policy GPU), submitting each as soon as it
   is made, then waits for the step's rewards and "updates" for ``--update-ms``. The
   time blocked on rewards per step is reported as a share of the step time; the target
   is under 5% when the service's throughput exceeds the generation rate (the wait is
   then about one group's latency, after the step's last group).

    .venv/bin/python bench/grpc_stream.py             # writes bench/results/grpc_stream.{json,md}
    .venv/bin/python bench/grpc_stream.py --quick     # fewer repetitions, prints only

Timings are wall-clock on whatever machine runs this; on a shared 2-core machine the
service, the client's PNG encoding and other processes compete, so they are noisy (the
load average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from _common import markdown, start_tiny_service, table

from divreward.client import Group, RewardClient

RESULTS = Path(__file__).resolve().parent / "results"


def make_group(n: int, seed: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 images, smooth plus noise (PNG-compressible like renders)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, None, :, None] * rng.integers(-120, 120, (n, 1, 1, 3))
    base = rng.integers(0, 256, (n, 1, 1, 3))
    noise = rng.integers(-20, 20, (n, size, size, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_unary(url: str, group: np.ndarray, reps: int) -> dict[str, float]:
    with RewardClient(url, downsize=False) as c:
        c.rewards([Group("warm-up", group)])
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            c.rewards([Group(f"prompt {i}", group)])
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "p90_ms": _pct(times, 90), "reps": reps}


def bench_stream(url: str, groups: list[np.ndarray], in_flight: int) -> dict[str, float]:
    with RewardClient(url, downsize=False, max_in_flight=in_flight) as c:
        c.submit(Group("warm-up", groups[0], group_id="warm")).result()
        t0 = time.perf_counter()
        n = sum(
            1 for _ in c.stream(Group(f"p{i}", g, group_id=f"g{i}") for i, g in enumerate(groups))
        )
        dt = time.perf_counter() - t0
    return {"groups": n, "seconds": dt, "groups_per_s": n / dt, "in_flight": in_flight}


def _record_latency(latencies: list[float], t0: float) -> Callable[[Future[Any]], None]:
    def done(_: Future[Any]) -> None:
        latencies.append((time.perf_counter() - t0) * 1e3)

    return done


def simulated_trainer(
    url: str,
    groups: list[np.ndarray],
    steps: int,
    per_step: int,
    gen_ms: float,
    update_ms: float,
) -> dict[str, Any]:
    """Generate (sleep) -> submit, per group; then wait for the step's rewards; update."""
    waits: list[float] = []
    step_times: list[float] = []
    submit_ms: list[float] = []
    latencies: list[float] = []
    with RewardClient(url, downsize=False) as c:
        c.submit(Group("warm-up", groups[0], group_id="warm")).result()
        k = 0
        for step in range(steps):
            t_step = time.perf_counter()
            futures: list[tuple[float, Future[Any]]] = []
            for _ in range(per_step):
                time.sleep(gen_ms / 1e3)  # the policy GPU generating a group
                t0 = time.perf_counter()
                g = groups[k % len(groups)]
                fut = c.submit(Group(f"prompt {k}", g, group_id=f"s{step}-{k}"))
                submit_ms.append((time.perf_counter() - t0) * 1e3)
                # submit -> answer, measured when the answer arrives (in the client's loop)
                fut.add_done_callback(_record_latency(latencies, t0))
                futures.append((t0, fut))
                k += 1
            t_wait = time.perf_counter()
            for _, fut in futures:
                fut.result()
            waits.append((time.perf_counter() - t_wait) * 1e3)
            time.sleep(update_ms / 1e3)  # the GRPO update
            step_times.append((time.perf_counter() - t_step) * 1e3)
    share = [w / s for w, s in zip(waits, step_times, strict=True)]
    return {
        "steps": steps,
        "groups_per_step": per_step,
        "gen_ms_per_group": gen_ms,
        "update_ms": update_ms,
        "step_ms_median": statistics.median(step_times),
        "wait_ms_median": statistics.median(waits),
        "wait_ms_p90": _pct(waits, 90),
        "wait_share_median": statistics.median(share),
        "wait_share_mean": float(np.mean(share)),
        "submit_call_ms_median": statistics.median(submit_ms),
        "group_latency_ms_median": statistics.median(latencies),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--http", help="HTTP URL of a running service (default: start one)")
    p.add_argument("--grpc", help="gRPC URL of a running service")
    p.add_argument("--tiny-dir", type=Path, default=Path("/tmp/divreward-bench-tiny"))
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--stream-groups", type=int, default=48)
    p.add_argument("--in-flight", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--gen-ms", type=float, default=400.0)
    p.add_argument("--update-ms", type=float, default=300.0)
    p.add_argument("--quick", action="store_true", help="fewer repetitions; print only")
    args = p.parse_args()
    if args.quick:
        args.reps, args.stream_groups, args.steps = 8, 16, 3

    started = False
    if args.http and args.grpc:
        http_url, grpc_url = args.http, args.grpc
    else:
        http_url, grpc_url = start_tiny_service(
            args.tiny_dir, {"pickscore": 1.0, "clipscore": 0.5}, {"dreamsim_type": "dino_vitb16"}
        )
        started = True
    try:
        group = make_group(args.group_size, 0, args.image_size)
        groups = [make_group(args.group_size, i, args.image_size) for i in range(16)]
        out: dict[str, Any] = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg_start": os.getloadavg(),
            },
            "params": vars(args) | {"tiny_dir": str(args.tiny_dir)},
        }
        stream_groups = [groups[i % len(groups)] for i in range(args.stream_groups)]
        for name, url in (("http", http_url), ("grpc", grpc_url)):
            out[f"unary_{name}"] = bench_unary(url, group, args.reps)
            out[f"stream_{name}"] = bench_stream(url, stream_groups, args.in_flight)
            out[f"trainer_{name}"] = simulated_trainer(
                url, groups, args.steps, args.groups_per_step, args.gen_ms, args.update_ms
            )
            print(name, json.dumps({k: v for k, v in out.items() if k.endswith(name)}, indent=1))
        out["machine"]["loadavg_end"] = os.getloadavg()
    finally:
        if started:
            from divreward.services import launch

            launch.shutdown()
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "grpc_stream.json").write_text(json.dumps(out, indent=2))
        (RESULTS / "grpc_stream.md").write_text(render(out))
        print(f"wrote {RESULTS / 'grpc_stream.md'}")


def render(out: dict[str, Any]) -> str:
    p, machine = out["params"], out["machine"]
    transports = ("http", "grpc")
    stream = f"stream groups/s (in flight {p['in_flight']})"
    unary = table(
        ["transport", "unary median ms", "unary p90 ms", stream],
        [
            (
                t,
                f"{out[f'unary_{t}']['median_ms']:.1f}",
                f"{out[f'unary_{t}']['p90_ms']:.1f}",
                f"{out[f'stream_{t}']['groups_per_s']:.1f}",
            )
            for t in transports
        ],
    )
    header = ["transport", "step ms", "wait ms (median / p90)", "wait share (median)"]
    header += ["submit() call ms", "group latency ms"]
    trainer = table(
        header,
        [
            (
                t,
                f"{r['step_ms_median']:.0f}",
                f"{r['wait_ms_median']:.0f} / {r['wait_ms_p90']:.0f}",
                f"{100 * r['wait_share_median']:.1f}%",
                f"{r['submit_call_ms_median']:.1f}",
                f"{r['group_latency_ms_median']:.0f}",
            )
            for t, r in ((t, out[f"trainer_{t}"]) for t in transports)
        ],
    )
    return markdown(
        "gRPC / HTTP / simulated trainer (bench/grpc_stream.py)",
        f"Tiny models on CPU; group of {p['group_size']} images at {p['image_size']} px; "
        f"load average {machine['loadavg_start']} -> {machine['loadavg_end']} "
        "(shared machine: noisy).",
        unary,
        f"Simulated trainer: {p['groups_per_step']} groups per step, one generated every "
        f"{p['gen_ms']:.0f} ms, update {p['update_ms']:.0f} ms, {p['steps']} steps.",
        trainer,
    )


if __name__ == "__main__":
    main()
