"""Fair queueing between tenants on one reward service (a benchmark, not a test).

In one run, on the tiny models (PickScore and DreamSim twins, CPU), one service with a
tenants file of three tenants (``light`` and ``heavy`` of weight 1, ``gold`` of weight
2), closed-loop clients (each sends its next group when its last one returned) posting
groups of 8 images to ``/v1/rewards`` (msgpack, DiverseGRPO):

1. **alone**: the light tenant, 1 client;
2. **beside a flood**: the same light client while the heavy tenant floods with 16
   clients;
3. **2:1**: gold (weight 2) and heavy (weight 1) both saturating, 16 clients each.

For each tenant of each phase: images/s and p50/p95 latency per group, measured in
steady state (the window starts ``--warmup`` seconds into the phase). Goals: the light
tenant's p95 beside the flood at most 2x its p95 alone; gold:heavy throughput 2:1
within 15%.

The scorer batches at most ``--batch`` images (default 8, one group) and the ingress
lets ``--max-inflight`` images through to the models at once (default 8: one batch,
the setting for latency isolation between tenants, see docs/operations.md; without the
flag, the service's derived default, ``2 x batch``, which keeps a second batch waiting
at the scorer for throughput). The rest waits in the ingress's fair queue.

Each tenant's clients run in a process of their own (aiohttp, one event loop per
tenant), as they would on their own machines; they still share this machine's cores
with the service.

Writes ``OUT.json`` and ``OUT.md`` (default ``bench/results/fairness``).

    .venv/bin/python bench/fairness.py [--phase-seconds 60] [--warmup 5] [--batch 8]
        [--max-inflight 8 | --derived-inflight] [--heavy-clients 16]
        [--out bench/results/fairness]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import loadavg, make_images, markdown, start_tiny_service, table  # noqa: E402

GROUP = 8
SIDE = 128
TENANTS = {"light": 1.0, "heavy": 1.0, "gold": 2.0}


def jpeg_groups(n_groups: int, seed: int) -> list[list[bytes]]:
    from PIL import Image

    out = []
    for g in range(n_groups):
        files = []
        for img in make_images(GROUP, seed * 1000 + g, SIDE):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            files.append(buf.getvalue())
        out.append(files)
    return out


def body(files: list[bytes], k: int) -> bytes:
    import msgpack

    return msgpack.packb(
        {"groups": [{"prompt": "a photo of a red bicycle", "images": files, "group_id": str(k)}]}
    )


async def closed_loop(
    url: str,
    token: str,
    bodies: list[bytes],
    clients: int,
    stop_at: float,
    log: list,
    period: float | None = None,
) -> None:
    """``clients`` clients of one tenant until ``stop_at`` (``time.monotonic``); appends
    (t_end, latency_s, images, status) per request. Each client sends its next group when
    its last one is answered, or, with ``period``, a group every ``period`` seconds (a
    trainer that spends the rest of the time sampling; at once when an answer came
    late). aiohttp (which Ray Serve brings): the load generator shares the 2 cores with
    the service, so its own cost per request should be small."""
    import aiohttp

    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/msgpack",
        "accept": "application/msgpack",
    }
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=connector, timeout=timeout
    ) as c:

        async def client(i: int) -> None:
            k = i
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                async with c.post("/v1/rewards", data=bodies[k % len(bodies)]) as r:
                    await r.read()
                    status = r.status
                t1 = time.monotonic()
                log.append((t1, t1 - t0, GROUP, status))
                k += clients
                if period is not None:
                    await asyncio.sleep(max(0.0, t0 + period - time.monotonic()))

        await asyncio.gather(*(client(i) for i in range(clients)))


def tenant_process(
    url: str,
    token: str,
    bodies: list[bytes],
    clients: int,
    start_at: float,
    stop_at: float,
    period: float | None,
) -> list:
    """One tenant's clients, in a process of their own (a tenant is another machine: its
    client-side work must not delay another tenant's responses on a shared event loop).
    Starts at ``start_at`` (``time.monotonic``, one clock for every process of the
    machine) so the tenants of a phase begin together; returns its log."""
    time.sleep(max(0.0, start_at - time.monotonic()))
    log: list = []
    asyncio.run(closed_loop(url, token, bodies, clients, stop_at, log, period))
    return log


def summarise(log: list, start: float, end: float) -> dict[str, Any]:
    done = [(t, lat, n) for t, lat, n, status in log if start <= t <= end and status == 200]
    failed = sum(1 for t, _, _, status in log if start <= t <= end and status != 200)
    lat = np.array([x[1] for x in done]) if done else np.array([np.nan])
    return {
        "groups": len(done),
        "failed": failed,
        "images_per_s": sum(x[2] for x in done) / max(end - start, 1e-9),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
    }


def phase(
    pool: Executor,
    url: str,
    tokens: dict[str, str],
    plan: dict[str, int],
    bodies: dict[str, list[bytes]],
    seconds: float,
    warmup: float,
    periods: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every tenant of ``plan`` (tenant -> clients) in its own process for ``seconds``
    (closed loop, or a group every ``periods[tenant]`` seconds); each tenant's figures
    over the window from ``warmup`` to the end."""
    t0 = time.monotonic() + 1.0  # time for every process to be waiting
    stop_at = t0 + seconds
    periods = periods or {}
    futs = {
        t: pool.submit(tenant_process, url, tokens[t], bodies[t], n, t0, stop_at, periods.get(t))
        for t, n in plan.items()
    }
    logs = {t: f.result() for t, f in futs.items()}
    # the window: after the warm-up, until the phase's end (requests still finishing
    # after it are past the window, so they count for nobody)
    return {t: summarise(logs[t], t0 + warmup, stop_at) | {"clients": plan[t]} for t in plan}


def write_report(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    rows = []
    for name, ph in res["phases"].items():
        for tenant, r in ph.items():
            rows.append(
                (
                    name,
                    tenant,
                    f"{TENANTS[tenant]:g}",
                    r["clients"],
                    f"{r['images_per_s']:.1f}",
                    f"{1000 * r['p50_s']:.0f}",
                    f"{1000 * r['p95_s']:.0f}",
                    r["groups"],
                    r["failed"],
                )
            )
    g = res["goals"]
    text = markdown(
        "Fair queueing between tenants (bench/fairness.py)",
        f"Tiny models (PickScore and DreamSim twins) on CPU, `/v1/rewards` (msgpack, "
        f"DiverseGRPO), groups of {GROUP} JPEG images at {SIDE} px, closed-loop clients "
        f"(aiohttp, each tenant in a client process of its own on the same machine); "
        f"scorer batches of at most {res['params']['batch']} images; the ingress lets "
        f"{res['params']['max_inflight_images']} images through to the models at once "
        f"(`ingress.max_inflight_images` "
        f"{'derived' if res['params']['derived_inflight'] else 'set'}) and queues the rest "
        f"fairly. {res['params']['phase_seconds']:g} s per phase, the first "
        f"{res['params']['warmup']:g} s not measured. Machine: {res['machine']['cpus']} CPUs, "
        f"load average {res['machine']['loadavg_start']} -> {res['machine']['loadavg_end']}"
        + (
            " (**shared with other work while it ran**: absolute numbers are noisy; the "
            "ratios within a phase are what the goals compare)."
            if res["machine"]["shared"]
            else "."
        ),
        table(
            [
                "phase",
                "tenant",
                "weight",
                "clients",
                "images/s",
                "p50 ms",
                "p95 ms",
                "groups",
                "errors",
            ],
            rows,
            "lllrrrrrr",
        ),
        [
            f"- Light tenant's p95 beside the flood / alone: **{g['light_p95_ratio']:.2f}x** "
            f"(goal <= 2x): {'met' if g['light_p95_ok'] else 'NOT met'}.",
            f"- gold:heavy throughput with weights 2:1, both saturating: "
            f"**{g['split']:.2f}:1** (goal 2:1 +-15%, i.e. 1.70-2.30): "
            f"{'met' if g['split_ok'] else 'NOT met'}.",
        ],
    )
    out.with_suffix(".md").write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--phase-seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=8, help="scorer max_batch_images")
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="ingress.max_chunk_images (default: unset, whole groups)",
    )
    inflight_opts = ap.add_mutually_exclusive_group()
    inflight_opts.add_argument(
        "--max-inflight", type=int, default=8, help="ingress.max_inflight_images"
    )
    inflight_opts.add_argument(
        "--derived-inflight",
        action="store_true",
        help="leave ingress.max_inflight_images unset (the service derives 2 x --batch)",
    )
    ap.add_argument(
        "--light-period",
        type=float,
        default=0.0,
        help="the light tenant sends a group every this many seconds (default 0: closed "
        "loop, the next group as soon as the last one is answered)",
    )
    ap.add_argument("--heavy-clients", type=int, default=16)
    ap.add_argument("--tiny-dir", type=Path, default=ROOT / ".cache" / "tiny-models")
    ap.add_argument("--shared", action="store_true", help="say the machine was shared")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fairness")
    opts = ap.parse_args()

    tokens = {t: f"bench-{t}-token" for t in TENANTS}
    tmp = Path(tempfile.mkdtemp(prefix="divreward-fairness-"))
    tenants_file = tmp / "tenants.yaml"
    tenants_file.write_text(
        "tenants:\n"
        + "".join(
            f"  - {{name: {t}, token: {tokens[t]}, weight: {w:g}}}\n" for t, w in TENANTS.items()
        )
    )
    model = {
        "num_cpus": 0.2,
        "max_ongoing_requests": 64,
        "batch": {"max_batch_images": opts.batch, "batch_wait_timeout_s": 0.005},
    }
    args = {
        "auth": {"enabled": True, "tenants_file": str(tenants_file)},
        "ingress": {
            "num_cpus": 0.1,
            "call_timeout_s": 600,
            "max_queued_requests": 1024,
            "max_inflight_images": None if opts.derived_inflight else opts.max_inflight,
            "max_chunk_images": opts.chunk,
        },
    }
    inflight = 2 * opts.batch if opts.derived_inflight else opts.max_inflight
    load0 = loadavg()
    from divreward.services import launch

    url, _ = start_tiny_service(
        opts.tiny_dir, {"pickscore": 1.0}, {"dreamsim_type": "dino_vitb16"}, args=args, model=model
    )
    try:
        bodies = {
            t: [body(f, k) for k, f in enumerate(jpeg_groups(8, s))] for s, t in enumerate(TENANTS)
        }
        secs, skip = opts.phase_seconds, opts.warmup
        heavy = opts.heavy_clients
        # one process per tenant of a phase, started once (spawned: this one runs Ray)
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        # a short warm-up of every path (first calls load models, compile, ...)
        warm = phase(pool, url, tokens, {"light": 2, "heavy": 2}, bodies, 5.0, 0.0)
        if any(r["failed"] or not r["groups"] for r in warm.values()):
            raise RuntimeError(f"the warm-up calls failed: {warm}")
        phases: dict[str, Any] = {}
        print("phase alone ...", flush=True)
        light = {"light": opts.light_period} if opts.light_period > 0 else {}
        phases["alone"] = phase(pool, url, tokens, {"light": 1}, bodies, secs, skip, light)
        print("phase beside-flood ...", flush=True)
        phases["beside-flood"] = phase(
            pool, url, tokens, {"light": 1, "heavy": heavy}, bodies, secs, skip, light
        )
        print("phase 2:1 ...", flush=True)
        phases["2:1"] = phase(
            pool, url, tokens, {"gold": heavy, "heavy": heavy}, bodies, secs, skip
        )
        pool.shutdown()
    finally:
        launch.shutdown()
    ratio = phases["beside-flood"]["light"]["p95_s"] / phases["alone"]["light"]["p95_s"]
    split = phases["2:1"]["gold"]["images_per_s"] / max(
        phases["2:1"]["heavy"]["images_per_s"], 1e-9
    )
    res = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_start": load0,
            "loadavg_end": loadavg(),
            "shared": opts.shared,
        },
        "params": {
            "group": GROUP,
            "side": SIDE,
            "batch": opts.batch,
            "max_inflight_images": inflight,
            "derived_inflight": opts.derived_inflight,
            "max_chunk_images": opts.chunk,
            "light_period_s": opts.light_period,
            "phase_seconds": secs,
            "warmup": skip,
            "heavy_clients": heavy,
            "weights": TENANTS,
        },
        "phases": phases,
        "goals": {
            "light_p95_ratio": ratio,
            "light_p95_ok": ratio <= 2.0,
            "split": split,
            "split_ok": 1.7 <= split <= 2.3,
        },
    }
    write_report(res, opts.out)
    for name, ph in phases.items():
        for tenant, r in ph.items():
            print(
                f"{name:13s} {tenant:6s} clients {r['clients']:2d}  "
                f"{r['images_per_s']:7.1f} img/s  "
                f"p50 {1000 * r['p50_s']:6.0f} ms  p95 {1000 * r['p95_s']:6.0f} ms  "
                f"groups {r['groups']}  errors {r['failed']}"
            )
    print(f"light p95 beside flood / alone: {ratio:.2f}x (goal <= 2x)")
    print(f"gold:heavy throughput: {split:.2f}:1 (goal 2:1 +-15%)")
    print(f"wrote {opts.out}.json and {opts.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
