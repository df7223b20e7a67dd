"""Throughput of the reward service against scoring in-process and against the public
Flask peer (a benchmark, not a test).

In one run, for each stand-in size (``--patches``: ViT-B/16, then ViT-B/32), with the same
model weights and the same JPEG files:

1. **the in-process floor**: what a trainer gets by running the scorer itself, the way
   the model's reference code does it (PickScore's ``calc_probs``: each JPEG file opened
   with PIL, transformers ``CLIPModel`` + its default ``CLIPProcessor``, the group's images
   in one batch, its prompt once, default torch threads); for ``rewards`` also the
   embedder and DiverseGRPO's rewards and advantages. Measured before the service starts,
   again around every point (one client: group by group; more: right before and right
   after the point, their mean; the ratio of that point uses it: this machine's speed
   drifts by tens of percent over minutes), and after the service stops;
2. **the service**: closed-loop clients (each sends its next request when its last one
   returned) posting whole groups of JPEG files to ``/v1/score`` (and ``/v1/rewards``
   with ``--endpoints``) at 1 and 16 clients (``--clients``), as JSON with base64 images
   (``--forms``: also the binary form, msgpack with raw bytes, and gRPC). Each point is
   measured in steady state: from the moment every client has had its first answer (the
   first round's latencies run from one service time to N of them) until every client has
   had ``--rounds`` more (one client: ``--single-groups``, 8) and at least ``--duration``
   seconds have passed. Images/s, p50 and p95 latency, the clients' own CPU per request
   and each Serve process's CPU seconds per request;
3. **the Flask peer** (``bench/flask_peer.py``, ``--no-peer`` skips it): a PickScore server
   built as the public reward servers are, at the same client counts, alone on the
   machine (after the service has stopped);
4. with ``--profile FORM``: one more point per endpoint (``--profile-clients``, default the
   most), with each Serve process's CPU seconds per group (psutil) and its py-spy samples
   by category (decode, preprocessing, forward pass, object store, ...).

The scorer is PickScore through its real loader (``weights_dir`` layout) on **random
stand-ins of CLIP ViT-B/16 and ViT-B/32 size**, as no real weights can be downloaded on
the build machines. The embedder of ``rewards`` is the tiny DreamSim twin (dino_vitb16
type, 32 px): its cost is small, so ``rewards`` measures the diversity pipeline's
overhead on top of the scorer. The report's first table per stand-in checks the goals of
issue 18 (one client >= 0.9x the floor, 16 clients >= 0.95x, p95 <= 1.3x p50).

Tenants and the fair queue: ``--reward-args`` merges more reward-application settings
into the bench's (e.g. ``'{"auth": {"enabled": true, "tenants_file": "t.yaml"}}'``) and
``--token`` is the bearer token the clients send.

Writes ``OUT.json`` and ``OUT.md`` (default ``bench/results/throughput``).

    .venv/bin/python bench/throughput.py [--device cpu|cuda] [--patches 16,32]
        [--clients 1,16] [--forms json,binary,grpc] [--endpoints score,rewards]
        [--duration 10] [--rounds 2] [--single-groups 8] [--profile json]
        [--reward-args JSON --token TOKEN] [--note TEXT] [--out bench/results/throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import free_port, loadavg, make_images  # noqa: E402

GROUP = 24
SIDE = 512
PROMPT = "a photo of a red bicycle"
PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
EMBEDDER_OPTIONS = {"dreamsim_type": "dino_vitb16"}
STANDIN_DIR = ROOT / ".cache" / "bench-standins"


# ----------------------------------------------------------------------- stand-ins
def build_standins(root: Path = STANDIN_DIR, patch: int = 16) -> Path:
    """``root/weights`` (``weights-b32`` for ``patch=32``): PickScore's weights-dir layout
    with a random CLIP of ViT-B/16 (or ViT-B/32) size (vision 768 wide, 12 blocks, at
    224 px; text 512 wide, 12 blocks) and the laion processor files (224 px); built once."""
    from transformers import CLIPConfig, CLIPModel

    from divreward.models import _clip_common as clip

    weights = root / ("weights" if patch == 16 else f"weights-b{patch}")
    marker = weights / ".complete"
    if marker.exists():
        return weights
    text = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": clip.CONTEXT_LENGTH,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": patch,
    }
    import torch

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=512,
        logit_scale_init_value=float(np.log(100.0)),
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(str(weights / PICKSCORE_REPO))
    clip.write_processor(weights / PROCESSOR_REPO, side=224)
    marker.write_text("ok\n")
    return weights


def jpeg_files(n: int, seed: int) -> list[bytes]:
    from divreward.images import encode_image

    return [encode_image(a, "JPEG", quality=90) for a in make_images(n, seed, SIDE)]


# ----------------------------------------------------------------------- the floor
class Floor:
    """The in-process floor: the reference code path a trainer would run itself."""

    def __init__(self, weights: Path, tiny_dir: Path, device: str, endpoints: list[str]):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.device = device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = (
            CLIPModel.from_pretrained(str(weights / PICKSCORE_REPO), torch_dtype=self.dtype)
            .eval()
            .to(device)
        )
        self.processor = CLIPProcessor.from_pretrained(str(weights / PROCESSOR_REPO))
        self.embedder: Any = None
        if "rewards" in endpoints:
            import dataclasses

            from divreward.models.registry import load_model
            from divreward.models.tiny import tiny_load_options

            opts = tiny_load_options("dreamsim", tiny_dir, device=device)
            self.embedder = load_model(
                "dreamsim", dataclasses.replace(opts, options=EMBEDDER_OPTIONS)
            )

    def score(self, files: list[bytes]) -> np.ndarray:
        """PickScore's reference ``calc_probs`` from the JPEG files: each opened with PIL,
        the group's images in one batch through the default processor, its prompt once,
        ``logit_scale.exp() * text_emb @ image_embs.T``."""
        from PIL import Image

        torch = self.torch
        with torch.inference_mode():
            images = [Image.open(io.BytesIO(f)) for f in files]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            text = self.processor(
                text=PROMPT, padding=True, truncation=True, max_length=77, return_tensors="pt"
            ).to(self.device)
            img = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            txt = self.model.get_text_features(**text)
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            scores = self.model.logit_scale.exp() * (txt @ img.T)[0]
            if self.device == "cuda":
                torch.cuda.synchronize()
        return scores.float().cpu().numpy()

    def rewards(self, files: list[bytes]) -> Any:
        from divreward.core import AdvantageConfig, DiverseGRPOConfig, diversegrpo_rewards
        from divreward.images import decode_image

        assert self.embedder is not None
        quality = self.score(files).astype(np.float64)
        emb = self.embedder.embed([decode_image(f) for f in files])
        return diversegrpo_rewards(quality, emb, DiverseGRPOConfig(), AdvantageConfig())

    def one(self, endpoint: str, files: list[bytes]) -> float:
        """Seconds of the floor on one group."""
        t0 = time.perf_counter()
        (self.score if endpoint == "score" else self.rewards)(files)
        return time.perf_counter() - t0

    def measure(self, endpoint: str, groups: list[list[bytes]], seconds: float) -> dict:
        """images/s of back-to-back groups for about ``seconds`` (after one warm-up)."""
        fn = self.score if endpoint == "score" else self.rewards
        fn(groups[0])
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            fn(groups[k % len(groups)])
            times.append(time.perf_counter() - t0)
            k += 1
        return {
            "images_per_s": GROUP * len(times) / sum(times),
            "p50_ms": 1000 * statistics.median(times),
            "groups": len(times),
        }


# ----------------------------------------------------------------------- the service
def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s keys, nested dicts merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def start_service(
    weights: Path,
    tiny_dir: Path,
    device: str,
    scorer_cpus: float,
    reward_extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """The reward and diversity applications on the stand-in; ``reward_extra``: more
    RewardAppArgs keys (nested dicts merged), e.g. ``{"auth": {...}}`` for tenants."""
    from divreward.services import launch
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    gpu = 1.0 if device == "cuda" else 0.0
    scorer = {
        "weight": 1.0,
        "num_cpus": scorer_cpus,
        "num_gpus": gpu * 0.5,
        "max_ongoing_requests": 64,
        "batch": {"max_batch_images": GROUP * 2, "batch_wait_timeout_s": 0.005},
    }
    if device == "cuda":
        scorer["dtype"] = "float16"
    reward_args: dict[str, Any] = {
        "profile": "real",
        "weights_dir": str(weights),
        "scorers": {"pickscore": scorer},
        "ingress": {
            "num_cpus": 0,
            "max_ongoing_requests": 64,
            "max_queued_requests": 512,
            "call_timeout_s": 600,
        },
    }
    reward = RewardAppArgs(**merged(reward_args, reward_extra or {}))
    diversity = DiversityAppArgs(
        profile="tiny",
        tiny_models_dir=str(tiny_dir),
        embedder={
            "name": "dreamsim",
            "options": EMBEDDER_OPTIONS,
            "num_cpus": 0,
            "torch_threads": 1,
            "num_gpus": gpu * 0.25,
            "max_ongoing_requests": 64,
            "batch": {"max_batch_images": GROUP * 2, "batch_wait_timeout_s": 0.005},
        },
        ingress={"num_cpus": 0, "max_ongoing_requests": 64, "call_timeout_s": 600},
    )
    http, grpc_port = free_port(), free_port()
    cpus = os.cpu_count() or 2
    launch.start(
        launch.serve_start_options("127.0.0.1", http, grpc_port=grpc_port),
        num_cpus=max(cpus, int(np.ceil(scorer_cpus))),
        num_gpus=1 if device == "cuda" else None,
    )
    launch.deploy_services(reward, diversity, timeout_s=900)
    return f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"


Sender = Callable[[int], Awaitable[None]]


def http_sender(
    base: str, endpoint: str, form: str, files: list[list[bytes]], token: str | None = None
) -> Any:
    import httpx
    import msgpack

    def body(group: list[bytes]) -> bytes:
        images: list[Any] = (
            [base64.b64encode(f).decode("ascii") for f in group] if form == "json" else group
        )
        data: dict[str, Any] = (
            {"images": images, "prompts": [PROMPT] * len(group)}
            if endpoint == "score"
            else {"groups": [{"prompt": PROMPT, "images": images}]}
        )
        return json.dumps(data).encode() if form == "json" else msgpack.packb(data)

    bodies = [body(g) for g in files]
    ctype = "application/json" if form == "json" else "application/msgpack"
    headers = {"content-type": ctype, "accept": ctype}
    if token:
        headers["authorization"] = f"Bearer {token}"
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    client = httpx.AsyncClient(base_url=base, timeout=600, limits=limits)
    path = "/v1/score" if endpoint == "score" else "/v1/rewards"

    async def send(k: int) -> None:
        r = await client.post(path, content=bodies[k % len(bodies)], headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"{path} {form}: {r.status_code} {r.text[:300]}")
        data = r.json() if form == "json" else msgpack.unpackb(r.content)
        n = (
            len(data["scores"]["pickscore"])
            if endpoint == "score"
            else len(data["groups"][0]["rewards"])
        )
        if n != GROUP:
            raise RuntimeError(f"{path}: {n} results for {GROUP} images")

    return send, client.aclose


def grpc_sender(
    target: str, endpoint: str, files: list[list[bytes]], token: str | None = None
) -> Any:
    import grpc

    from divreward.proto import divreward_pb2 as pb
    from divreward.proto import divreward_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.max_receive_message_length", 256 << 20),
        ],
    )
    stub = pb_grpc.RewardServiceStub(channel)
    md = [("application", "reward")]
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if endpoint == "score":
        msgs = [pb.ScoreRequest(prompts=[PROMPT] * len(g), images=g) for g in files]
    else:
        msgs = [pb.RewardsRequest(groups=[pb.RewardGroup(prompt=PROMPT, images=g)]) for g in files]

    async def send(k: int) -> None:
        msg = msgs[k % len(msgs)]
        if endpoint == "score":
            reply = await stub.Score(msg, metadata=md, timeout=600)
            n = len(reply.scores["pickscore"].values)
        else:
            reply = await stub.Rewards(msg, metadata=md, timeout=600)
            n = len(reply.groups[0].rewards)
        if n != GROUP:
            raise RuntimeError(f"gRPC {endpoint}: {n} results for {GROUP} images")

    return send, channel.close


async def interleaved(send: Sender, floor_group: Callable[[int], float], groups: int) -> dict:
    """One client, ``groups`` groups, each right after the floor has scored the same
    group in this process: the two see the same minute of a machine whose speed drifts,
    and the ratio is of the sums (``floor_images_per_s``: the floor of those groups)."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    floor: list[float] = []
    for k in range(groups):
        floor.append(floor_group(k))
        t0 = loop.time()
        await send(k)
        lat.append(loop.time() - t0)
    ordered = sorted(lat)
    return {
        "clients": 1,
        "requests": groups,
        "all_requests": groups,
        "client_cpu_s_per_request": float("nan"),  # the floor runs in this process too
        "seconds": sum(lat),
        "images_per_s": GROUP * groups / sum(lat),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "floor_images_per_s": GROUP * groups / sum(floor),
        "floor_p50_ms": 1000 * statistics.median(floor),
        "interleaved": True,
    }


def peer_sender(base: str, files: list[list[bytes]]) -> Any:
    """Closed-loop sends to the Flask peer (bench/flask_peer.py): its pickle dialect."""
    import pickle

    import httpx

    bodies = [pickle.dumps({"images": g, "prompts": [PROMPT] * len(g)}) for g in files]
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    client = httpx.AsyncClient(base_url=base, timeout=600, limits=limits)

    async def send(k: int) -> None:
        r = await client.post("/", content=bodies[k % len(bodies)])
        if r.status_code != 200:
            raise RuntimeError(f"Flask peer: {r.status_code} {r.text[:300]}")
        from divreward.safe_pickle import safe_loads

        n = len(safe_loads(r.content)["scores"])
        if n != GROUP:
            raise RuntimeError(f"Flask peer: {n} results for {GROUP} images")

    return send, client.aclose


def start_peer(weights: Path) -> tuple[Any, str]:
    """bench/flask_peer.py in its own process on a free port; (process, base URL) once
    its /health answers."""
    import subprocess

    import httpx

    port = free_port()
    script = str(ROOT / "bench" / "flask_peer.py")
    proc = subprocess.Popen(
        [sys.executable, script, "--weights", str(weights), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Flask peer exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the Flask peer did not start within 300 s")


async def closed_loop(send: Sender, clients: int, seconds: float, rounds: int = 2) -> dict:
    """``clients`` closed-loop clients in steady state.

    With N clients the first requests all arrive at once and finish one after another,
    so the first round's latencies run from one service time to N of them: the
    measurement starts when every client has finished its first request, and ends at a
    completion once every client has finished ``rounds`` more and at least ``seconds``
    have passed. Throughput = completions after the start (up to and including the end)
    / elapsed time; latencies are those of the counted requests. Requests still in flight
    at the end finish (so the next point starts with an empty queue) but are not counted.
    """
    loop = asyncio.get_running_loop()
    total = [0]  # every request that finished, counted or not
    finished = [0] * clients
    done: list[tuple[float, float]] = []  # (finish time, latency) of every request
    marks: dict[str, float] = {}
    base: list[int] = []  # requests finished per client when the measurement started
    stop = asyncio.Event()

    async def client(c: int) -> None:
        k = c * 7
        while not stop.is_set():
            t0 = loop.time()
            await send(k)
            t1 = loop.time()
            k += 1
            total[0] += 1
            if stop.is_set():
                return
            done.append((t1, t1 - t0))
            finished[c] += 1
            if "start" not in marks and min(finished) >= 1:
                marks["start"] = t1
                base.extend(finished)
            if "start" in marks:
                enough = all(f - b >= rounds for f, b in zip(finished, base, strict=True))
                if enough and t1 - marks["start"] >= seconds:
                    marks["end"] = t1
                    stop.set()

    cpu0 = time.process_time()
    await asyncio.gather(*(client(c) for c in range(clients)))
    client_cpu = (time.process_time() - cpu0) / max(1, total[0])
    t0, t1 = marks["start"], marks["end"]
    lat = sorted(lat for t, lat in done if t0 < t <= t1)
    return {
        "clients": clients,
        "requests": len(lat),
        "all_requests": total[0],
        "client_cpu_s_per_request": client_cpu,  # this process: the clients' own work
        "seconds": t1 - t0,
        "images_per_s": GROUP * len(lat) / (t1 - t0),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    }


async def run_service(
    base: str,
    grpc_target: str,
    endpoint: str,
    form: str,
    files: list[list[bytes]],
    clients: list[int],
    seconds: float,
    rounds: int,
    floor_now: Callable[[], float] | None = None,
    single_groups: int | None = None,
    token: str | None = None,
    procs: dict[str, Any] | None = None,
    floor_group: Callable[[int], float] | None = None,
) -> list[dict]:
    """The points of one endpoint and form (``pickle``: the Flask peer at ``base``);
    before each, ``floor_now()`` (if given) measures the in-process floor again, so each
    ratio is taken against the floor of the same minute (this machine's speed drifts by
    tens of percent over minutes). One client counts ``single_groups`` groups (default
    ``rounds``); with ``floor_group`` (group k -> seconds of the floor on it) it alternates
    with the floor group by group (:func:`interleaved`). With ``procs`` (role -> psutil
    process), each point also reports every process's CPU seconds per request."""
    send, close = (
        peer_sender(base, files)
        if form == "pickle"
        else grpc_sender(grpc_target, endpoint, files, token)
        if form == "grpc"
        else http_sender(base, endpoint, form, files, token)
    )
    try:
        await send(0)  # warm the path once
        out = []
        for c in clients:
            n = single_groups if c == 1 and single_groups else rounds
            cpu0 = {k: cpu_seconds(p) for k, p in (procs or {}).items()}
            if c == 1 and floor_group is not None:
                r = await interleaved(send, floor_group, n)
            else:
                # The floor right before and right after the point, and their mean: a
                # point of many clients lasts minutes, over which the machine drifts.
                before = floor_now() if floor_now is not None else float("nan")
                r = await closed_loop(send, c, seconds, n)
                after = floor_now() if floor_now is not None else float("nan")
                r["floor_before_images_per_s"] = before
                r["floor_after_images_per_s"] = after
                r["floor_images_per_s"] = (before + after) / 2
            r["cpu_s_per_request"] = {
                k: (cpu_seconds(p) - cpu0[k]) / max(1, r["all_requests"])
                for k, p in (procs or {}).items()
            }
            adjacent = r["floor_images_per_s"]
            print(
                f"  {endpoint:7s} {form:6s} {c:3d} clients: {r['images_per_s']:6.1f} img/s  "
                f"p50 {r['p50_ms']:7.0f} ms  p95 {r['p95_ms']:7.0f} ms  client CPU "
                f"{1000 * r['client_cpu_s_per_request']:.0f} ms/request  (floor then: "
                f"{adjacent:.1f} img/s)",
                flush=True,
            )
            out.append(r)
        return out
    finally:
        await close()


# ----------------------------------------------------------------------- profile
#: Stack classification of py-spy samples, first match wins (checked on the whole
#: collapsed stack, innermost frames last).
CATEGORIES = [
    # Threads parked in Ray's core (the worker main loop, the router's event loop in C)
    # or in a bare thread: waiting, whatever py-spy's non-blocking sampler says.
    ("idle", ("Worker.main_loop (", "_run_router_event_loop", "select (selectors")),
    ("JPEG/PNG decode", ("decode_image", "ImageFile.py", "decode_group", "image_size")),
    ("preprocessing", ("image_processing", "preprocess", "resize_like_pil", "Image.py:resize")),
    (
        "forward pass",
        (
            "torch/nn/modules",
            "modeling_clip",
            "get_image_features",
            "get_text_features",
            "dreamsim",
            "vision_transformer",
        ),
    ),
    ("request validation", ("model_validate", "pydantic", "_parse_body", "parse_body")),
    ("base64", ("b64decode", "base64")),
    ("msgpack/JSON decode", ("msgpack", "json/decoder", "loads")),
    (
        "object store / pickling",
        ("ray.put", "serialization", "_raylet", "get_objects", "put_object", "pickle"),
    ),
    ("response encoding", ("render", "dumps", "model_dump", "packb", "to_proto")),
    ("Serve/asyncio machinery", ("ray/serve", "asyncio", "uvicorn", "starlette", "grpc")),
]


def serve_processes() -> dict[str, Any]:
    """The Serve processes of this script's Ray instance by role (replicas by deployment,
    the proxy): the workers that its raylet started."""
    import psutil
    from ray._private import worker  # a benchmark may look inside; the product does not

    node = worker._global_node  # type: ignore[attr-defined]
    raylets = [p.process.pid for p in node.all_processes.get("raylet", [])]
    out: dict[str, Any] = {}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        if p.info["ppid"] not in raylets:
            continue
        title = " ".join(p.info["cmdline"] or []).split()[0] if p.info["cmdline"] else ""
        if title.startswith("ray::ServeReplica:"):
            out[title.removeprefix("ray::ServeReplica:").split(".")[0]] = p
        elif title.startswith("ray::ProxyActor"):
            out["proxy"] = p
    return out


def cpu_seconds(p: Any) -> float:
    import psutil

    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return float("nan")


def classify(stack: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in stack for k in keys):
            return name
    return "other"


def profile_point(
    base: str,
    grpc_target: str,
    endpoint: str,
    form: str,
    files: list[list[bytes]],
    clients: int,
    seconds: float,
    out_dir: Path,
    token: str | None = None,
) -> dict[str, Any]:
    """Run ``clients`` closed-loop clients for ``seconds`` while measuring each Serve
    process's CPU time (psutil) and sampling its stacks (py-spy, active threads only);
    returns CPU seconds per group and the share of samples by category, per process."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    procs = serve_processes()
    spy = shutil_which("py-spy")
    records: dict[str, subprocess.Popen[bytes]] = {}
    cpu0 = {k: cpu_seconds(p) for k, p in procs.items()}
    if spy:
        for role, p in procs.items():
            path = out_dir / f"{role.replace(':', '_')}.txt"
            records[role] = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(p.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "50",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    wall0 = time.perf_counter()
    r = asyncio.run(
        run_service(base, grpc_target, endpoint, form, files, [clients], seconds, 1, token=token)
    )[0]
    wall = time.perf_counter() - wall0
    cpu1 = {k: cpu_seconds(p) for k, p in procs.items()}
    for proc in records.values():
        proc.wait(timeout=120)
    groups = max(1, r["all_requests"])  # every request of the point, warm-up included
    result: dict[str, Any] = {"point": r, "processes": {}}
    for role in procs:
        used = cpu1[role] - cpu0[role]
        shares: dict[str, float] = {}
        path = out_dir / f"{role.replace(':', '_')}.txt"
        if path.exists():
            counts: dict[str, int] = {}
            for line in path.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                if n.isdigit() and ";" in stack:  # a bare thread bootstrap is waiting
                    cat = classify(stack)
                    counts[cat] = counts.get(cat, 0) + int(n)
            counts.pop("idle", None)
            total = sum(counts.values()) or 1
            shares = {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        result["processes"][role] = {
            "cpu_s_per_group": used / groups,
            "cpu_share_of_run": used / wall,  # of one CPU
            "samples": shares,
        }
    return result


def shutil_which(name: str) -> str | None:
    import shutil

    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# ----------------------------------------------------------------------- report
#: The issue's goals (ViT-B/16 stand-in): x floor at 1 and at 16 clients, p95 / p50.
GOALS = {"single": 0.9, "many": 0.95, "p95_over_p50": 1.3}


def summary_rows(run: dict[str, Any]) -> list[list[str]]:
    """One row per client count of ``/v1/score`` JSON: the service against the floor of
    that minute and against the Flask peer at the same client count."""
    service = run["service"].get("score", {}).get("json", [])
    peer = {r["clients"]: r for r in run.get("peer", [])}
    rows = []
    for r in service:
        c = r["clients"]
        ratio = r["images_per_s"] / r["floor_images_per_s"]
        p = peer.get(c)
        spread = r["p95_ms"] / r["p50_ms"]
        goal = GOALS["single"] if c == 1 else GOALS["many"]
        met = ratio >= goal and spread <= GOALS["p95_over_p50"]
        rows.append(
            [
                str(c),
                f"{r['requests']}",
                f"{GROUP / r['images_per_s']:.2f}",
                f"{GROUP / r['floor_images_per_s']:.2f}",
                f"**{ratio:.2f}**",
                f"{GROUP / p['images_per_s']:.2f}" if p else "-",
                f"{r['images_per_s'] / p['images_per_s']:.2f}" if p else "-",
                f"{ratio / (p['images_per_s'] / p['floor_images_per_s']):.2f}" if p else "-",
                f"{r['p50_ms']:.0f}",
                f"{r['p95_ms']:.0f}",
                f"{spread:.2f}",
                f"{'yes' if met else 'no'} (>= {goal} x floor, p95/p50 <= {GOALS['p95_over_p50']})",
            ]
        )
    return rows


def write_report(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Reward-service throughput against the in-process floor and the Flask peer",
        "",
        f"Written by `bench/throughput.py` on {res['date']} ({res['machine']}; device "
        f"{res['device']}; load average {res['load_before']} before, {res['load_after']} "
        "after). All figures come from this one run; each ratio compares figures measured "
        "within minutes of each other.",
        "",
        f"Groups of {GROUP} JPEG images of {SIDE}x{SIDE} (q=90, {res['mean_file_kb']:.0f} kB "
        "on average). Scorer: PickScore through its real loader on random stand-ins of CLIP "
        "ViT-B/16 and ViT-B/32 size; embedder (rewards): the tiny DreamSim twin. Service: "
        f"{res['service_config']}. Closed loop: each client sends its next request when its "
        "last one returned.",
        "",
        "- **floor**: the model's reference code in this process, from the JPEG bytes "
        "(PickScore's `calc_probs`: each file opened with PIL, transformers `CLIPModel` and "
        "its default `CLIPProcessor`, the group's images in one batch, its prompt once; "
        f"default torch threads: {res['torch_threads']}); at one client it scores each "
        "group right before the service does (alternating, group by group), at more "
        "clients it is measured right before and right after the point, and the ratio "
        "uses their mean (`floor s/group`);",
        "- **Flask peer**: `bench/flask_peer.py`, a PickScore server built as the public "
        "reward servers are (Flask's threaded server, pickled JPEG files, the reference "
        "scorer with a prompt per image), in its own process, alone on the machine;",
        "- **service**: JSON `/v1/score` with base64 JPEG files; the service decodes them.",
        "",
    ]
    if res.get("note"):
        lines += [f"**Note:** {res['note']}", ""]
    for name, run in res["runs"].items():
        lines += [
            f"## {name}: `/v1/score` JSON against the floor and the peer",
            "",
            "| clients | groups | service s/group | floor s/group | x floor | peer s/group "
            "| x peer | x peer, each by its floor | p50 ms | p95 ms | p95/p50 | goal met |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *(f"| {' | '.join(row)} |" for row in summary_rows(run)),
            "",
        ]
        if run.get("stages_ms"):
            lines += [
                f"### {name}: each stage alone (fastest of {res.get('stage_repeats')} runs, "
                "this process)",
                "",
                "| stage, one group of 24 | ms |",
                "|---|---:|",
                *(f"| {k} | {v:.0f} |" for k, v in run["stages_ms"].items()),
                "",
            ]
        for endpoint, floor in run["floor"].items():
            lines += [
                f"### {name}: every point of `"
                f"{'/v1/score' if endpoint == 'score' else '/v1/rewards'}`",
                "",
                f"In-process floor: **{floor['images_per_s']:.1f} img/s** "
                f"({floor['p50_ms']:.0f} ms per group, {floor['groups']} groups; the mean of "
                f"{floor.get('before', float('nan')):.1f} img/s before the service and "
                f"{floor.get('after', float('nan')):.1f} after it).",
                "",
                "`x floor` divides by the floor measured in this process around that point "
                "(`floor then`: at one client, group by group; at more, the mean of right "
                "before and right after it); `x mean floor` by the mean floor above. "
                "`CPU s/req`: "
                "each process's CPU seconds per request over the point (psutil).",
                "",
                "| form | clients | img/s | floor then | x floor | x mean floor | p50 ms | p95 ms "
                "| p95/p50 | requests | CPU s/req |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            series = dict(run["service"].get(endpoint, {}))
            if endpoint == "score" and run.get("peer"):
                series["Flask peer"] = run["peer"]
            for form, points in series.items():
                for r in points:
                    then = r.get("floor_images_per_s", float("nan"))
                    cpu = ", ".join(
                        f"{k} {v:.2f}"
                        for k, v in sorted(r.get("cpu_s_per_request", {}).items())
                        if v >= 0.005
                    )
                    lines.append(
                        f"| {form} | {r['clients']} | {r['images_per_s']:.1f} | {then:.1f} | "
                        f"{r['images_per_s'] / then:.2f} | "
                        f"{r['images_per_s'] / floor['images_per_s']:.2f} | {r['p50_ms']:.0f} | "
                        f"{r['p95_ms']:.0f} | {r['p95_ms'] / r['p50_ms']:.2f} | "
                        f"{r['requests']} | {cpu} |"
                    )
            lines.append("")
        for endpoint, prof in run.get("profile", {}).items():
            p = prof["point"]
            lines += [
                f"### {name}: profile of `{endpoint}`, {p['clients']} clients "
                f"({p['images_per_s']:.1f} img/s)",
                "",
                "CPU seconds per group of each Serve process (psutil), and where its active "
                "samples fall (py-spy, 50 Hz, active threads only):",
                "",
                "| process | CPU s / group | CPU share | samples by category |",
                "|---|---:|---:|---|",
            ]
            for role, d in prof["processes"].items():
                cats = ", ".join(
                    f"{k} {100 * v:.0f}%" for k, v in d["samples"].items() if v >= 0.01
                )
                lines.append(
                    f"| {role} | {d['cpu_s_per_group']:.3f} | "
                    f"{100 * d['cpu_share_of_run']:.0f}% | {cats} |"
                )
            lines.append("")
    lines += [
        "`x peer` divides the service's images/s by the peer's; `x peer, each by its floor` "
        "divides the service's `x floor` by the peer's (the two ran minutes apart, alone on "
        "the machine, and its speed drifts).",
        "",
    ]
    extra = res.get("where_the_time_goes")
    if extra:
        lines += [extra.rstrip(), ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def stage_timings(weights: Path, files: list[bytes], repeats: int) -> dict[str, float]:
    """Milliseconds of each stage of one group's way through the service, and of the
    floor's, each timed alone in this process (the fastest of ``repeats`` runs: on a
    shared machine the minimum is the stage's own cost, the rest is other processes)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from divreward.models import _clip_common as clip
    from divreward.models.base import LoadOptions
    from divreward.models.registry import load_model
    from divreward.schema import ScoreRequest
    from divreward.services.common.decode import decode_group, image_size

    def best(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    body = json.dumps(
        {"images": [base64.b64encode(f).decode() for f in files], "prompts": [PROMPT] * GROUP}
    ).encode()
    arrays = decode_group(files, None, 1 << 30)
    scorer: Any = load_model("pickscore", LoadOptions(weights_dir=str(weights), device="cpu"))
    bundle = scorer.bundle
    default = CLIPProcessor.from_pretrained(str(weights / PROCESSOR_REPO))
    model = CLIPModel.from_pretrained(str(weights / PICKSCORE_REPO)).eval()
    pixels = clip.preprocess(bundle.processor, arrays)

    def pil_files() -> list[Any]:
        from PIL import Image

        return [Image.open(io.BytesIO(f)) for f in files]

    with torch.inference_mode():
        return {
            "JSON body -> ScoreRequest (base64 included)": best(
                lambda: ScoreRequest.model_validate_json(body)
            ),
            "file headers checked": best(
                lambda: [image_size(f, None, i) for i, f in enumerate(files)]
            ),
            "JPEG decode, 24 files (decode_group, threads)": best(
                lambda: decode_group(files, None, 1 << 30)
            ),
            "preprocessing before: the PIL processor": best(
                lambda: clip.processor_preprocess(bundle.processor, arrays)
            ),
            "preprocessing now: preprocess (same values, threads)": best(
                lambda: clip.preprocess(bundle.processor, arrays)
            ),
            "floor: open + default processor from the JPEG files": best(
                lambda: default(images=pil_files(), return_tensors="pt")
            ),
            "text tower, one prompt": best(lambda: clip.text_features(bundle, [PROMPT])),
            "image tower, 24 images": best(lambda: model.get_image_features(pixel_values=pixels)),
            "service's scorer, whole call (PickScore.score)": best(
                lambda: scorer.score(arrays, [PROMPT] * GROUP)
            ),
        }


def measure_standin(
    patch: int, opts: argparse.Namespace, files: list[list[bytes]], res: dict[str, Any]
) -> dict[str, Any]:
    """Every point of one stand-in size: the floor, the service, the Flask peer."""
    from divreward.services import launch

    clients = [int(c) for c in opts.clients_for.get(patch, opts.clients).split(",")]
    forms = opts.forms.split(",")
    endpoints = opts.endpoints.split(",")
    weights = build_standins(patch=patch)
    run: dict[str, Any] = {"floor": {}, "service": {e: {} for e in endpoints}}
    print(f"ViT-B/{patch}: in-process floor ...", flush=True)
    floor = Floor(weights, opts.tiny_dir, opts.device, endpoints)

    def floor_now(e: str) -> float:
        return float(floor.measure(e, files, opts.adjacent_floor_seconds)["images_per_s"])

    for e in [] if opts.no_floor else endpoints:
        run["floor"][e] = floor.measure(e, files, opts.floor_seconds)
        print(f"  {e}: {run['floor'][e]['images_per_s']:.1f} img/s", flush=True)
    if opts.stages:
        run["stages_ms"] = stage_timings(weights, files[0], opts.stages)
        for k, v in run["stages_ms"].items():
            print(f"  {k}: {v:.0f} ms", flush=True)
    extra = json.loads(opts.reward_args) if opts.reward_args else None
    print("starting the service ...", flush=True)
    try:
        base, grpc_target = start_service(
            weights, opts.tiny_dir, opts.device, opts.scorer_cpus, extra
        )
        procs = serve_processes()
        for e in endpoints:
            for form in forms:
                run["service"][e][form] = asyncio.run(
                    run_service(
                        base,
                        grpc_target,
                        e,
                        form,
                        files,
                        clients,
                        opts.duration,
                        opts.rounds,
                        None if opts.no_floor else lambda e=e: floor_now(e),
                        opts.single_groups,
                        opts.token,
                        procs,
                        None if opts.no_floor else lambda k, e=e: floor.one(e, files[k % 4]),
                    )
                )
        if opts.profile:
            run["profile"] = {}
            at = opts.profile_clients or max(clients)
            for e in endpoints:
                print(f"profiling {e} {opts.profile} at {at} clients ...", flush=True)
                run["profile"][e] = profile_point(
                    base,
                    grpc_target,
                    e,
                    opts.profile,
                    files,
                    at,
                    opts.profile_seconds,
                    opts.out.parent / f"{opts.out.name}-pyspy" / f"b{patch}-{e}",
                    opts.token,
                )
    finally:
        with contextlib.suppress(Exception):
            launch.shutdown()
    if opts.peer and "score" in endpoints:
        print("the Flask peer ...", flush=True)
        import psutil

        proc, base = start_peer(weights)
        try:
            run["peer"] = asyncio.run(
                run_service(
                    base,
                    "",
                    "score",
                    "pickle",
                    files,
                    clients,
                    opts.duration,
                    opts.rounds,
                    None if opts.no_floor else lambda: floor_now("score"),
                    opts.single_groups,
                    procs={"peer": psutil.Process(proc.pid)},
                    floor_group=None
                    if opts.no_floor
                    else lambda k: floor.one("score", files[k % 4]),
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    # The floor again, after the service: a machine's speed drifts over minutes, and the
    # mean ratio is taken against the mean of the two measurements.
    for e in [] if opts.no_floor else endpoints:
        before = run["floor"][e]
        after = floor.measure(e, files, opts.floor_seconds)
        print(f"  floor after the service, {e}: {after['images_per_s']:.1f} img/s", flush=True)
        run["floor"][e] = {
            "images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2,
            "p50_ms": (before["p50_ms"] + after["p50_ms"]) / 2,
            "groups": before["groups"] + after["groups"],
            "before": before["images_per_s"],
            "after": after["images_per_s"],
        }
    return run


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--forms", default="json", help="any of json,binary,grpc")
    ap.add_argument("--endpoints", default="score", help="any of score,rewards")
    ap.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per point at least"
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="measured requests per client per point at least"
    )
    ap.add_argument(
        "--single-groups",
        type=int,
        default=8,
        help="measured groups of the one-client point (default 8, as the issue measures)",
    )
    ap.add_argument("--floor-seconds", type=float, default=20.0)
    ap.add_argument(
        "--adjacent-floor-seconds",
        type=float,
        default=6.0,
        help="the floor measured again right before each point, for that point's ratio",
    )
    ap.add_argument("--scorer-cpus", type=float, default=float(os.cpu_count() or 2))
    ap.add_argument(
        "--patches",
        default="16,32",
        help="stand-in ViT patch sizes, in this order: 16 (ViT-B/16) and 32 (ViT-B/32, about "
        "4x cheaper); both by default, each with its own floor, service and peer",
    )
    ap.add_argument(
        "--clients-for",
        action="append",
        default=[],
        metavar="PATCH:CLIENTS",
        help="client counts of one stand-in size instead of --clients, e.g. 16:1 (a short "
        "run on a slow machine); may be repeated",
    )
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip the Flask peer")
    ap.add_argument(
        "--reward-args",
        help="JSON of more reward-application settings (merged into the bench's), e.g. "
        '\'{"auth": {"enabled": true, "tenants_file": "tenants.yaml"}}\' for tenants',
    )
    ap.add_argument("--token", help="bearer token the clients send (with --reward-args auth)")
    ap.add_argument("--note", help="a line for the report (e.g. the machine was loaded)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput")
    ap.add_argument("--quick", action="store_true", help="short points (smoke run)")
    ap.add_argument(
        "--profile",
        metavar="FORM",
        help="after the points, profile FORM for each endpoint: CPU seconds per group of each "
        "Serve process and py-spy samples by category",
    )
    ap.add_argument(
        "--profile-clients", type=int, help="clients of the profile point (default: the most)"
    )
    ap.add_argument("--profile-seconds", type=float, default=30.0)
    ap.add_argument(
        "--stages",
        type=int,
        default=5,
        metavar="N",
        help="time each stage of a group's way alone, the fastest of N runs (0: skip)",
    )
    ap.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="only write the report again from a run's JSON (its 'where_the_time_goes' "
        "text, an analysis added by hand, goes at the end)",
    )
    ap.add_argument("--no-floor", action="store_true", help="skip the floor (profiling runs)")
    ap.add_argument("--tiny-dir", type=Path, default=ROOT / ".cache" / "tiny-models")
    opts = ap.parse_args()
    opts.clients_for = {int(k): v for k, _, v in (c.partition(":") for c in opts.clients_for)}
    if opts.report_from:
        res = json.loads(opts.report_from.read_text())
        write_report(res, opts.out)
        return 0
    if opts.quick:
        opts.duration, opts.rounds, opts.floor_seconds = 3.0, 1, 5.0
        opts.single_groups = min(opts.single_groups, 2)
    endpoints = opts.endpoints.split(",")

    from divreward.models.tiny import build_all

    print("building stand-ins ...", flush=True)
    patches = [int(p) for p in opts.patches.split(",")]
    for patch in patches:
        build_standins(patch=patch)
    if "rewards" in endpoints:
        build_all(opts.tiny_dir, names=["dreamsim"])
    files = [jpeg_files(GROUP, seed) for seed in range(4)]
    load_before = loadavg()

    import torch

    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "device": opts.device,
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "mean_file_kb": float(np.mean([len(f) for g in files for f in g]) / 1024),
        "service_config": f"scorer num_cpus {opts.scorer_cpus:g}, ingresses num_cpus 0"
        + (f", more reward settings {opts.reward_args}" if opts.reward_args else ""),
        "note": opts.note,
        "stage_repeats": opts.stages,
        "runs": {},
    }
    for patch in patches:
        res["runs"][f"ViT-B/{patch}"] = measure_standin(patch, opts, files, res)
    res["load_after"] = loadavg()
    write_report(res, opts.out)
    print(opts.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
