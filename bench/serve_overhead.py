"""Service overhead and throughput of the reward service (not a test).

In one run, with the same models and the same images:

1. in-process time for one group of 24 images at 512 x 512 (the work the service does,
   done sequentially in this process through the same loaders: decode the JPEG files,
   every scorer, the embedder, Q = sum w*s, DiverseGRPO's rewards and advantages; and,
   for reference, the same from already-decoded arrays);
2. end-to-end time of ``POST /v1/rewards`` for that group through each request form
   (JSON with base64 images, msgpack with raw bytes), sequential requests;
3. the overhead (end-to-end minus in-process) in ms and as a ratio;
4. throughput (images/s) with 1, 4 and 16 concurrent clients (msgpack form), and the
   mean forward-pass batch per model read from the service's /metrics.

Writes bench/results/serve_overhead.{md,json}. The models are the tiny random twins
(no real weights on the build machines): their forward passes take milliseconds, so the
ratio overhead/model-time is far larger than with real models on a GPU, where the
models dominate; the absolute overhead in ms is the number that carries over.

    .venv/bin/python bench/serve_overhead.py [--repeats 30] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import msgpack
import numpy as np

from divreward.core import AdvantageConfig, DiverseGRPOConfig, diversegrpo_rewards
from divreward.images import decode_image, encode_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, loadavg, make_images

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GROUP = 24
SIDE = 512
SMALL_SIDE = 64  # a second throughput series, where per-call costs weigh more
SCORERS = {"pickscore": 1.0, "clipscore": 0.5}
EMBEDDER = "dreamsim"
EMBEDDER_OPTIONS = {"dreamsim_type": "dino_vitb16"}
TARGET_BINARY_MS = 15.0


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def summary(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times_s)
    return {
        "median_ms": statistics.median(ms),
        "p10_ms": ms[max(0, int(0.1 * len(ms)) - 1)],
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "n": len(ms),
    }


# ----------------------------------------------------------------------- in-process
def load_local(tiny_dir: Path) -> tuple[dict[str, Any], Any]:
    import dataclasses

    from divreward.models.registry import load_model
    from divreward.models.tiny import tiny_load_options

    scorers = {n: load_model(n, tiny_load_options(n, tiny_dir)) for n in SCORERS}
    opts = dataclasses.replace(tiny_load_options(EMBEDDER, tiny_dir), options=EMBEDDER_OPTIONS)
    return scorers, load_model(EMBEDDER, opts)


def in_process(
    scorers: dict[str, Any], embedder: Any, files: list[bytes] | None, arrays: list[np.ndarray]
) -> float:
    """One group, sequentially, as the service computes it; seconds."""
    t0 = time.perf_counter()
    images = [decode_image(f, i) for i, f in enumerate(files)] if files is not None else arrays
    prompts = ["a photo of a red bicycle"] * len(images)
    total = np.zeros(len(images))
    for name, w in SCORERS.items():
        total += w * scorers[name].score(images, prompts)
    emb = embedder.embed(images)
    diversegrpo_rewards(total, emb, DiverseGRPOConfig(), AdvantageConfig())
    return time.perf_counter() - t0


# ----------------------------------------------------------------------- service
def start_service(tiny_dir: Path) -> str:
    from divreward.services import launch
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    # Up to 4 groups of 24 per forward pass (the pixel budget, 64 Mpx, holds 256 of 512^2).
    model = {
        "num_cpus": 0.2,
        "max_ongoing_requests": 128,
        "batch": {"max_batch_images": 96, "batch_wait_timeout_s": 0.005},
    }
    common: dict[str, Any] = {
        "profile": "tiny",
        "tiny_models_dir": str(tiny_dir),
        "ingress": {"num_cpus": 0.2, "max_ongoing_requests": 64},
    }
    reward = RewardAppArgs(
        scorers={n: {**model, "weight": w} for n, w in SCORERS.items()}, **common
    )
    diversity = DiversityAppArgs(
        embedder={**model, "name": EMBEDDER, "options": EMBEDDER_OPTIONS}, **common
    )
    port = free_port()
    launch.start(launch.serve_start_options("127.0.0.1", port), num_cpus=4)
    launch.deploy_services(reward, diversity, timeout_s=600)
    return f"http://127.0.0.1:{port}"


def json_body(files: list[bytes]) -> bytes:
    b64 = [base64.b64encode(f).decode("ascii") for f in files]
    body = {"groups": [{"prompt": "a photo of a red bicycle", "images": b64}]}
    return json.dumps(body).encode()


def binary_body(files: list[bytes]) -> bytes:
    body = {"groups": [{"prompt": "a photo of a red bicycle", "images": files}]}
    return msgpack.packb(body, use_bin_type=True)


def post(client: httpx.Client, body: bytes, binary: bool) -> float:
    ctype = "application/msgpack" if binary else "application/json"
    t0 = time.perf_counter()
    r = client.post("/v1/rewards", content=body, headers={"content-type": ctype})
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
    data = msgpack.unpackb(r.content) if binary else r.json()
    dt = time.perf_counter() - t0
    assert len(data["groups"][0]["rewards"]) == GROUP
    return dt


def batch_totals(base: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each model's forward-pass batch sizes, from the ingress's /metrics
    (one observation per call: the size of the batch that call's images went in)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    out = {}
    for model in [*SCORERS, EMBEDDER]:
        s = re.search(rf'divreward_batch_images_sum{{scorer="{model}"}} ([0-9.e+]+)', text)
        n = re.search(rf'divreward_batch_images_count{{scorer="{model}"}} ([0-9.e+]+)', text)
        out[model] = (float(s.group(1)) if s else 0.0, float(n.group(1)) if n else 0.0)
    return out


def throughput(base: str, bodies: list[bytes], clients: int, per_client: int) -> dict[str, Any]:
    """images/s with ``clients`` concurrent clients, each sending ``per_client`` groups;
    plus the machine's CPU use and the mean batch per model during the run."""
    import psutil

    def run(c: int) -> int:
        with httpx.Client(base_url=base, timeout=300) as client:
            for k in range(per_client):
                post(client, bodies[(c + k) % len(bodies)], True)
        return per_client * GROUP

    before = batch_totals(base)
    psutil.cpu_percent(None)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        images = sum(pool.map(run, range(clients)))
    wall = time.perf_counter() - t0
    cpu = psutil.cpu_percent(None)
    after = batch_totals(base)
    batches = {
        m: (after[m][0] - before[m][0]) / max(1.0, after[m][1] - before[m][1]) for m in after
    }
    return {
        "clients": clients,
        "requests": clients * per_client,
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "cpu_percent": cpu,
        "mean_batch": batches,
    }


def throughput_series(base: str, bodies: list[bytes], quick: bool) -> list[dict[str, Any]]:
    levels = ((1, 4, 16), (4, 2, 6), (16, 1, 3))  # (clients, per client quick, per client)
    return [throughput(base, bodies, c, q if quick else per) for c, q, per in levels]


# ----------------------------------------------------------------------- report
def write_report(res: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    ip, ipa = res["in_process_decode"], res["in_process_arrays"]
    lines = [
        "# Reward-service overhead and throughput",
        "",
        f"Written by `bench/serve_overhead.py` on {res['date']} ({res['machine']}).",
        "",
        "**Read with care:** the models are the *tiny random twins* (no real weights on "
        "this machine); their forward passes take milliseconds, so the overhead *ratio* is "
        "far larger than with real models on a GPU. The absolute overhead (ms) is what "
        "carries over. The machine is shared by several engineers (2 cores): load average "
        f"{res['load_before']} before, {res['load_after']} after; numbers are noisy.",
        "",
        f"Group: {GROUP} images of {SIDE}x{SIDE} as JPEG (q=90, {res['mean_file_kb']:.0f} kB "
        f"each on average); scorers {SCORERS}; embedder {EMBEDDER} {EMBEDDER_OPTIONS}; "
        "method diversegrpo (defaults). In-process = the same loaders and core functions in "
        "this process, sequentially; end-to-end = `POST /v1/rewards` on 127.0.0.1 through "
        "Serve's HTTP proxy, the reward ingress, the scorer and embedder deployments.",
        "",
        "## Latency per group (sequential requests)",
        "",
        "| path | median ms | p10 ms | p90 ms | n |",
        "|---|---:|---:|---:|---:|",
        f"| in-process, from decoded arrays (models + core) | {ipa['median_ms']:.1f} | "
        f"{ipa['p10_ms']:.1f} | {ipa['p90_ms']:.1f} | {ipa['n']} |",
        f"| in-process, from the JPEG files (decode + models + core) | {ip['median_ms']:.1f} | "
        f"{ip['p10_ms']:.1f} | {ip['p90_ms']:.1f} | {ip['n']} |",
    ]
    for form in ("binary", "json"):
        e = res["end_to_end"][form]
        lines.append(
            f"| end-to-end, {form} form | {e['median_ms']:.1f} | {e['p10_ms']:.1f} | "
            f"{e['p90_ms']:.1f} | {e['n']} |"
        )
    lines += [
        "",
        "## Overhead (end-to-end median minus in-process median)",
        "",
        "| form | vs decode+models: ms | ratio | vs arrays: ms | ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for form in ("binary", "json"):
        o = res["overhead"][form]
        lines.append(
            f"| {form} | {o['ms']:.1f} | {o['ratio']:.2f} | {o['ms_vs_arrays']:.1f} | "
            f"{o['ratio_vs_arrays']:.2f} | {o['target']} -> {o['verdict']} |"
        )
    for key, side in (("throughput", SIDE), ("throughput_small", SMALL_SIDE)):
        series = res[key]
        base_ips = series[0]["images_per_s"]
        lines += [
            "",
            f"## Throughput (msgpack form, groups of {GROUP} images of {side}x{side})",
            "",
            "| clients | requests | images/s | x vs 1 client | machine CPU % | mean images per "
            "forward pass (" + ", ".join([*SCORERS, EMBEDDER]) + ") |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for t in series:
            mb = ", ".join(f"{t['mean_batch'][m]:.1f}" for m in [*SCORERS, EMBEDDER])
            lines.append(
                f"| {t['clients']} | {t['requests']} | {t['images_per_s']:.1f} | "
                f"{t['images_per_s'] / base_ips:.2f} | {t['cpu_percent']:.0f} | {mb} |"
            )
    lines += [
        "",
        f"Target: 16 clients >= 1.5x one client (groups of {SIDE}^2) -> "
        f"{res['throughput_verdict']}.",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in res["notes"]],
        "",
    ]
    (RESULTS / "serve_overhead.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    ap.add_argument("--tiny-dir", type=Path, default=None)
    opts = ap.parse_args()
    repeats = 5 if opts.quick else opts.repeats
    load_before = loadavg()

    from divreward.services import launch
    from divreward.services.profile import ensure_tiny_models

    tiny_dir = opts.tiny_dir or Path(tempfile.mkdtemp(prefix="divreward-bench-tiny-"))
    ensure_tiny_models(tiny_dir, [*SCORERS, EMBEDDER])

    groups = [make_images(GROUP, seed=s) for s in range(4)]
    files = [[encode_image(img, "JPEG", quality=90) for img in g] for g in groups]
    mean_kb = float(np.mean([len(f) for g in files for f in g])) / 1024

    # 1. in-process (same models, same files)
    scorers, embedder = load_local(tiny_dir)
    for _ in range(3):
        in_process(scorers, embedder, files[0], groups[0])
    ip_decode: list[float] = []
    ip_arrays: list[float] = []
    for k in range(repeats):  # interleaved, so that load drifts hit both alike
        ip_decode.append(in_process(scorers, embedder, files[k % 4], groups[k % 4]))
        ip_arrays.append(in_process(scorers, embedder, None, groups[k % 4]))

    # 2. end to end, each form
    base = start_service(tiny_dir)
    try:
        bodies = {"json": [json_body(f) for f in files], "binary": [binary_body(f) for f in files]}
        e2e: dict[str, list[float]] = {"json": [], "binary": []}
        with httpx.Client(base_url=base, timeout=300) as client:
            for form in ("binary", "json"):
                for k in range(3):
                    post(client, bodies[form][k % 4], form == "binary")
            # Interleave the forms so that load drifts hit both alike.
            for k in range(repeats):
                for form in ("binary", "json"):
                    e2e[form].append(post(client, bodies[form][k % 4], form == "binary"))
        # 4. throughput at 1, 4, 16 clients (same total work per level)
        tp = throughput_series(base, bodies["binary"], opts.quick)
        small = [make_images(GROUP, seed=10 + k, side=SMALL_SIDE) for k in range(4)]
        small_bodies = [
            binary_body([encode_image(i, "JPEG", quality=90) for i in g]) for g in small
        ]
        tp_small = throughput_series(base, small_bodies, opts.quick)
    finally:
        launch.shutdown()

    ip = summary(ip_decode)
    ipa = summary(ip_arrays)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"torch threads in-process {torch_threads()}",
        "load_before": load_before,
        "load_after": loadavg(),
        "mean_file_kb": mean_kb,
        "in_process_decode": ip,
        "in_process_arrays": ipa,
        "end_to_end": {form: summary(t) for form, t in e2e.items()},
        "throughput": tp,
        "throughput_small": tp_small,
    }
    overhead = {}
    for form, limit in (("binary", TARGET_BINARY_MS), ("json", 2 * TARGET_BINARY_MS)):
        med = res["end_to_end"][form]["median_ms"]
        ms = med - ip["median_ms"]
        overhead[form] = {
            "ms": ms,
            "ratio": med / ip["median_ms"],
            "ms_vs_arrays": med - ipa["median_ms"],
            "ratio_vs_arrays": med / ipa["median_ms"],
            "target": f"<= {limit:.0f} ms",
            "verdict": "met" if ms <= limit else "NOT met",
        }
    res["overhead"] = overhead
    ratio16 = tp[-1]["images_per_s"] / tp[0]["images_per_s"]
    res["throughput_verdict"] = f"{ratio16:.2f}x, {'met' if ratio16 >= 1.5 else 'NOT met'}"
    res["notes"] = [
        "Overhead 'vs decode+models' compares with doing the same work in-process from the "
        "same files; 'vs arrays' with a trainer that scores its arrays in-process (no "
        "encode/decode at all).",
        "In-process runs the models one after the other in one process and decodes "
        "sequentially; the service decodes a group's files in parallel threads and runs the "
        "two scorers and the embedder concurrently in their own processes. That is why the "
        "end-to-end time can be below the in-process time.",
        "Each request is one group; the ingress decodes it once and puts the pixels in "
        "Ray's object store once (24 x 512^2 x 3 B = 18.9 MB), read by the three models.",
        "Throughput: 'machine CPU %' is the whole machine's over the run (2 cores, other "
        "engineers' jobs included). With tiny models one client already keeps both cores "
        "busy (parallel decode + three model processes), so more clients have no idle "
        "CPU to use; cross-request batching does merge groups (mean images per forward "
        "pass above the group size) but on a CPU a tiny model's cost is per image "
        "(preprocessing), so merging saves little. The throughput target is about batching "
        "amortising a GPU's per-batch cost; it cannot show on this machine.",
        "Ray Serve 2.60's batcher forms a batch from the calls that arrive within "
        "batch_wait_timeout_s of its first call (here 5 ms) and then queues it; a batch does "
        "not keep growing while the previous one runs.",
        f"{repeats} sequential requests per form, interleaved; medians reported.",
    ]
    write_report(res)
    print((RESULTS / "serve_overhead.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
