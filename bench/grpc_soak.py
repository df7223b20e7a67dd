"""A soak of the gRPC group stream with a replica killed (a benchmark, not a test).

``--clients`` (16) trainers, each with its own client and so its own ``RewardStream``,
submit groups for ``--duration`` seconds (default 600), each its next group when its last
one was answered, against a local service on the tiny models whose scorer runs
``--scorer-replicas`` (2) replicas. At ``--kill-at`` (a fraction of the duration) one
replica of ``--kill`` (``scorer``, or ``ingress`` with ``--ingress-replicas`` >= 2) is
killed with ``ray.kill``; Serve replaces it.

Counted: groups sent, answered (with one reward per image), answered with an error,
lost (sent and never answered: a client gave up on it), the clients' own timeouts
(each one makes the client send the group again with the same request id), stream
reopenings, and the latency of every answer (before and after the kill). The goal of
issue 18: 0 groups lost and 0 client timeouts.

Writes ``OUT.json`` and ``OUT.md`` (default ``bench/results/grpc_soak``).

    .venv/bin/python bench/grpc_soak.py [--duration 600] [--clients 16] [--kill scorer]
        [--kill-at 0.5] [--timeout 30] [--out bench/results/grpc_soak]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from _common import loadavg, make_images, markdown, start_tiny_service, table

ROOT = Path(__file__).resolve().parents[1]
REPLICA_DEPLOYMENTS = {"scorer": "scorer-pickscore", "ingress": "RewardIngress"}


class LogCounter(logging.Handler):
    """Counts the client's own log records of timeouts, resends and stream reopenings."""

    KINDS: ClassVar[dict[str, str]] = {
        "no answer in": "client timeouts (group sent again)",
        "reward stream broken": "stream reopenings",
        "; retrying": "in-band errors retried",
    }

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for key, kind in self.KINDS.items():
            if key in msg:
                self.counts[kind] += 1


def kill_one_replica(deployment: str) -> str:
    """``ray.kill`` one live replica actor of ``deployment`` (app ``reward``), found among
    Serve's named actors; returns its actor name."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == "serve" and f"reward#{deployment}#" in a["name"]
    ]
    if not names:
        raise RuntimeError(f"no live replica of {deployment!r} among Serve's actors")
    victim = sorted(names)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim


async def soak(grpc_url: str, opts: argparse.Namespace) -> dict[str, Any]:
    from divreward.client import AsyncRewardClient, Group, RetryPolicy

    images = np.stack(make_images(opts.group_size, 0, opts.side))
    t_start = time.monotonic()
    t_end = t_start + opts.duration
    kill_time = t_start + opts.kill_at * opts.duration
    stats: Counter[str] = Counter()
    latencies: list[tuple[float, float]] = []  # (answer time since start, seconds)
    errors: Counter[str] = Counter()
    killed: dict[str, Any] = {}

    async def client(c: int) -> None:
        retry = RetryPolicy(max_attempts=opts.attempts)
        async with AsyncRewardClient(
            grpc_url, downsize=False, timeout_s=opts.timeout, retry=retry, namespace=f"c{c}"
        ) as cl:
            k = 0
            while time.monotonic() < t_end:
                gid = f"c{c}-g{k}"
                k += 1
                stats["sent"] += 1
                t0 = time.monotonic()
                try:
                    r = await cl.submit(Group(f"prompt {k % 7}", images, group_id=gid))
                except Exception as exc:  # counted and reported; the soak goes on
                    stats["answered with an error"] += 1
                    errors[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
                    continue
                if len(r.rewards or []) != opts.group_size:
                    stats["answered wrongly"] += 1
                    continue
                stats["answered"] += 1
                latencies.append((time.monotonic() - t_start, time.monotonic() - t0))

    async def killer() -> None:
        await asyncio.sleep(max(0.0, kill_time - time.monotonic()))
        deployment = REPLICA_DEPLOYMENTS[opts.kill]
        killed["at_s"] = time.monotonic() - t_start
        killed["replica"] = await asyncio.to_thread(kill_one_replica, deployment)
        print(f"  killed {killed['replica']} at {killed['at_s']:.0f} s", flush=True)

    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(client(c) for c in range(opts.clients)))
    if not kill_task.done():
        kill_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await kill_task
    lost = stats["sent"] - stats["answered"] - stats["answered with an error"]
    lost -= stats["answered wrongly"]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    before = [s for t, s in latencies if t < killed.get("at_s", float("inf"))]
    after = [s for t, s in latencies if t >= killed.get("at_s", float("inf"))]
    return {
        "stats": {**stats, "lost": lost},
        "errors": dict(errors),
        "killed": killed,
        "latency_s": {
            "p50": pct([s for _, s in latencies], 50),
            "p95": pct([s for _, s in latencies], 95),
            "max": max((s for _, s in latencies), default=float("nan")),
            "p50_before_kill": pct(before, 50),
            "p50_after_kill": pct(after, 50),
            "max_after_kill": max(after, default=float("nan")),
        },
        "seconds": time.monotonic() - t_start,
    }


def write_report(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    s, lat, o = res["stats"], res["latency_s"], res["options"]
    counts = [(k, v) for k, v in s.items()] + list(res["client_log"].items())
    failed = s.get("lost", 0) + s.get("answered with an error", 0) + s.get("answered wrongly", 0)
    goal = failed == 0 and res["client_log"].get(LogCounter.KINDS["no answer in"], 0) == 0
    text = markdown(
        "gRPC stream soak with a replica killed (bench/grpc_soak.py)",
        f"Written on {res['date']} ({res['machine']}; load average {res['load_before']} "
        f"before, {res['load_after']} after). **Duration: {o['duration']:.0f} s** "
        f"({res['seconds']:.0f} s with the last answers), {o['clients']} gRPC stream clients "
        f"(one client and one stream each), groups of {o['group_size']} images of "
        f"{o['side']} px, tiny models; scorer replicas {o['scorer_replicas']}, ingress "
        f"replicas {o['ingress_replicas']}; client timeout {o['timeout']} s, "
        f"{o['attempts']} attempts. Killed: `{res['killed'].get('replica', 'none')}` at "
        f"{res['killed'].get('at_s', float('nan')):.0f} s.",
        "Goal (issue 18): 0 groups lost (none unanswered, none failed after the client's "
        f"retries) and 0 client timeouts: **{'met' if goal else 'not met'}**.",
        table(["count", "n"], counts, "lr"),
        table(
            ["latency", "s"],
            [(k, f"{v:.2f}") for k, v in lat.items()],
            "lr",
        ),
        "Errors:" if res["errors"] else "No errors.",
        table(["error", "n"], list(res["errors"].items()), "lr") if res["errors"] else [],
    )
    out.with_suffix(".md").write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of submissions")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--kill", choices=sorted(REPLICA_DEPLOYMENTS), default="scorer")
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of the duration")
    ap.add_argument("--scorer-replicas", type=int, default=2)
    ap.add_argument("--ingress-replicas", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=30.0, help="the clients' timeout_s")
    ap.add_argument("--attempts", type=int, default=5, help="the clients' max_attempts")
    ap.add_argument("--tiny-dir", type=Path, default=ROOT / ".cache" / "tiny-models")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpc_soak")
    opts = ap.parse_args()
    if opts.kill == "ingress" and opts.ingress_replicas < 2:
        ap.error("--kill ingress needs --ingress-replicas >= 2")

    from divreward.services import launch

    counter = LogCounter()
    for name in ("divreward.client.client", "divreward.client._stream"):
        logging.getLogger(name).addHandler(counter)
        logging.getLogger(name).setLevel(logging.INFO)
    load_before = loadavg()
    try:
        _, grpc_url = start_tiny_service(
            opts.tiny_dir,
            {"pickscore": 1.0},
            {"dreamsim_type": "dino_vitb16"},
            scorer_args={"num_replicas": opts.scorer_replicas},
            ingress_args={"num_replicas": opts.ingress_replicas},
        )
        res = asyncio.run(soak(grpc_url, opts))
    finally:
        with contextlib.suppress(Exception):
            launch.shutdown()
    res.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        load_before=load_before,
        load_after=loadavg(),
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        client_log=dict(counter.counts),
    )
    write_report(res, opts.out)
    print(opts.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
