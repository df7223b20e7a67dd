"""The GPU check's Python stages (run by ``bench/gpu_check.sh``; a check, not a test).

Stages, each a subcommand writing ``WORK/<stage>.json``:

- ``models``: every registered model's tiny twin (the tests' random models, built here
  under ``WORK/tiny``), loaded through its real loader on the device in float32 with the
  reference preprocessing (``preprocess: pil``), then in float32 with ``preprocess:
  tensor`` and in float16 and bfloat16 with both. A group of 8 photo-like 512 x 512
  images and its prompt; every output must be finite and agree with the float32
  reference within the tolerances below. On a GPU also a random stand-in of CLIP
  ViT-B/16 size for PickScore, loaded through the real loader from a Hugging Face cache
  in the hub's layout (as the throughput benchmark's stand-in): the same checks, and
  images/s for a group of 24 per dtype and preprocessing.
- ``serve``: ``divreward serve`` on a tiny config whose every model deployment asks for
  ``num_gpus`` (a fraction: all of them share one GPU) with ``preprocess: tensor``; waits
  for ``/readyz``, reads ``GET /v1/models`` and posts ``/v1/rewards`` (DiverseGRPO). A
  replica whose process sees no CUDA device cannot load its model (the loaders refuse
  ``device: cuda`` when ``torch.cuda.is_available()`` is false), so a ready service whose
  model cards all say ``cuda`` and a half dtype shows the placement worked.
- ``report``: ``gpu.md`` from the stages' JSON, the throughput benchmark's Markdown and
  the machine (``nvidia-smi -L``, torch and CUDA versions).

``--cpu-smoke`` runs ``models`` and ``serve`` on the CPU in float32 only, on the tiny
models (no stand-in), so the script can be checked end to end on a machine without a GPU
(``GPU_CHECK_HALF_ON_CPU=1`` adds the float16/bfloat16 variants, on the CPU).

    .venv/bin/python bench/gpu_check.py models|serve|report [--cpu-smoke] [--work DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import free_port, make_images  # noqa: E402

MODELS = [
    "pickscore",
    "clipscore",
    "hpsv2",
    "hpsv21",
    "imagereward",
    "hpsv3",
    "dreamsim",
    "clip_embedder",
]
PROMPT = "a photo of a red bicycle leaning on a wall"
GROUP, SIDE = 8, 512
# Stated tolerances against the float32 reference with the reference preprocessing.
# Scorers: max |score - reference| / max |reference| over the group. Embedders (unit
# rows): the smallest cosine between a row and its reference row.
REL_TOL = {"float32": 1e-2, "float16": 2e-2, "bfloat16": 6e-2}  # float32: preprocess only
COS_MIN = {"float32": 0.9999, "float16": 0.999, "bfloat16": 0.99}
STANDIN_GROUP = 24
SERVE_SCORERS = ["pickscore", "hpsv2", "imagereward", "hpsv3"]
SERVE_EMBEDDER = "dreamsim"


# ------------------------------------------------------------------------- helpers
def write_json(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")


def outputs(model: Any, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    """Scores ``(N,)`` of a scorer, embeddings ``(N, D)`` of an embedder (float64)."""
    if model.info.kind == "embedder":
        return np.asarray(model.embed(images), dtype=np.float64)
    return np.asarray(model.score(images, prompts), dtype=np.float64)


def compare(kind: str, ref: np.ndarray, got: np.ndarray, dtype: str) -> dict[str, Any]:
    """The agreement of ``got`` with ``ref`` and whether it is within tolerance."""
    finite = bool(np.isfinite(got).all())
    if kind == "embedder":
        cos = float((ref * got).sum(axis=1).min()) if finite else float("nan")
        return {"finite": finite, "min_cos": cos, "ok": finite and cos >= COS_MIN[dtype]}
    scale = max(float(np.abs(ref).max()), 1e-12)
    rel = float(np.abs(got - ref).max() / scale) if finite else float("nan")
    return {"finite": finite, "max_rel_diff": rel, "ok": finite and rel <= REL_TOL[dtype]}


def tiny_models(work: Path) -> Path:
    """``WORK/tiny``: every registered model's tiny twin, built once."""
    from divreward.models.registry import REGISTRY
    from divreward.models.tiny import build_all

    tiny = work / "tiny"
    done = tiny / "gpu-check-complete"  # build_all writes its marker first, so not that
    if not done.exists():
        build_all(tiny, seed=0)
        done.write_text(" ".join(REGISTRY) + "\n")
    return tiny


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -------------------------------------------------------------------- stage: models
def variants(smoke: bool) -> list[tuple[str, str]]:
    """(dtype, preprocess) pairs after the float32 + pil reference."""
    if smoke and not os.environ.get("GPU_CHECK_HALF_ON_CPU"):
        return [("float32", "tensor")]
    return [
        ("float32", "tensor"),
        ("float16", "pil"),
        ("float16", "tensor"),
        ("bfloat16", "pil"),
        ("bfloat16", "tensor"),
    ]


def check_model(
    name: str, base: Any, images: list[np.ndarray], smoke: bool, timing: int = 0
) -> list[dict[str, Any]]:
    """Load ``name`` with ``base`` (LoadOptions) as the float32/pil reference and in each
    variant; one row per variant. With ``timing`` > 0, images/s over that many runs."""
    from divreward.models.registry import load_model

    prompts = [PROMPT] * len(images)
    rows: list[dict[str, Any]] = []
    ref: np.ndarray | None = None
    kind = "scorer"
    for dtype, pre in [("float32", "pil"), *variants(smoke)]:
        row: dict[str, Any] = {"model": name, "dtype": dtype, "preprocess": pre}
        t0 = time.perf_counter()
        try:
            opts = replace(base, dtype=dtype, options={**base.options, "preprocess": pre})
            model = load_model(name, opts)
            kind = model.info.kind
            row["device"] = model.info.device
            row["load_s"] = round(time.perf_counter() - t0, 2)
            out = outputs(model, images, prompts)  # warm-up and the result
            if timing:
                synchronize(base.device)
                start = time.perf_counter()
                for _ in range(timing):
                    outputs(model, images, prompts)
                synchronize(base.device)
                row["img_per_s"] = round(timing * len(images) / (time.perf_counter() - start), 1)
            if ref is None:
                ref = out
                row.update({"finite": bool(np.isfinite(out).all()), "reference": True})
                row["ok"] = row["finite"]
            else:
                row.update(compare(kind, ref, out, dtype))
            del model
        except Exception as exc:  # a failing variant is a result, not the end of the check
            row.update({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    if base.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return rows


def standin_options(work: Path, device: str) -> Any:
    """PickScore's LoadOptions on the throughput benchmark's ViT-B/16-sized random
    stand-in, copied into a Hugging Face cache in the hub's layout (the real hub-id
    path, offline)."""
    from throughput import PICKSCORE_REPO, PROCESSOR_REPO, build_standins

    from divreward.models.base import LoadOptions
    from divreward.models.weights import copy_into_hub_cache

    weights = build_standins()
    hub = work / "standin-hub"
    if not (hub / "complete").exists():
        for i, repo in enumerate((PICKSCORE_REPO, PROCESSOR_REPO)):
            snapshot = hub / ("models--" + repo.replace("/", "--"))
            if not snapshot.exists():
                copy_into_hub_cache(weights / repo, hub, repo, f"{i + 1:040x}")
        (hub / "complete").write_text("ok\n")
    return LoadOptions(cache_dir=str(hub), device=device)


def stage_models(args: argparse.Namespace) -> int:
    import torch

    from divreward.models.tiny import tiny_load_options

    device = "cpu" if args.cpu_smoke else "cuda"
    tiny = tiny_models(args.work)
    images = make_images(GROUP, seed=3, side=SIDE)
    body: dict[str, Any] = {"device": device, "group": [GROUP, SIDE], "rows": []}
    t0 = time.perf_counter()
    body["torch"] = torch.__version__
    for name in MODELS:
        opts = tiny_load_options(name, tiny, device)
        body["rows"] += check_model(name, opts, images, args.cpu_smoke)
        write_json(args.work / "models.json", body)  # what is done survives a time limit
    if not args.cpu_smoke or args.standin:
        try:
            opts = standin_options(args.work, device)
            group = make_images(STANDIN_GROUP, seed=4, side=SIDE)
            rows = check_model("pickscore", opts, group, args.cpu_smoke, timing=args.timing_runs)
            for r in rows:
                r["model"] = "pickscore (ViT-B/16 stand-in, hub cache)"
            body["standin"] = rows
        except Exception as exc:
            body["standin_error"] = f"{type(exc).__name__}: {exc}"
            print(body["standin_error"], flush=True)
    body["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.work / "models.json", body)
    rows = body["rows"] + body.get("standin", [])
    bad = [r for r in rows if not r.get("ok")]
    print(f"models: {len(rows) - len(bad)}/{len(rows)} ok in {body['seconds']} s", flush=True)
    return 0 if not bad and "standin_error" not in body else 1


# --------------------------------------------------------------------- stage: serve
def serve_config(port: int, smoke: bool, gpu_share: float) -> dict[str, Any]:
    """A tiny two-application config; every model deployment asks for ``gpu_share`` of a
    GPU (none in the CPU smoke run) and preprocesses as tensors on its device."""
    place: dict[str, Any] = {"num_cpus": 0.25} if smoke else {"num_cpus": 1, "num_gpus": gpu_share}
    ingress = {"num_replicas": 1, "num_cpus": 0.25 if smoke else 1}
    scorers = {
        name: {"weight": 1.0, "options": {"preprocess": "tensor"}, **place}
        for name in SERVE_SCORERS
    }
    embedder = {
        "name": SERVE_EMBEDDER,
        "options": {"dreamsim_type": "dino_vitb16", "preprocess": "tensor"},
        **place,
    }
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 120},
        "applications": [
            {
                "name": "diversity",
                "route_prefix": "/diversity",
                "import_path": "divreward.services.diversity_server.app:build_app",
                "args": {
                    "profile": "tiny",
                    "default_method": "diversegrpo",
                    "embedder": embedder,
                    "ingress": ingress,
                },
            },
            {
                "name": "reward",
                "route_prefix": "/",
                "import_path": "divreward.services.reward_server.app:build_app",
                "args": {
                    "profile": "tiny",
                    "diversity_app": "diversity",
                    "default_diversity": "diversegrpo",
                    "scorers": scorers,
                    "ingress": ingress,
                },
            },
        ],
    }


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"divreward serve exited with {proc.returncode} before ready")
        try:
            return dict(http("GET", url + "/readyz", timeout=10))
        except urllib.error.HTTPError as exc:
            last = exc.read()[:300]
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(2)
    raise TimeoutError(f"not ready before the deadline; last answer: {last!r}")


def stop(proc: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    """SIGINT to the service's process group (it shuts Serve and its Ray down), then
    SIGKILL to the group if it is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def stage_serve(args: argparse.Namespace) -> int:
    import yaml
    from PIL import Image

    smoke = args.cpu_smoke
    tiny = tiny_models(args.work)
    port, grpc_port = free_port(), free_port()
    share = round(0.9 / (len(SERVE_SCORERS) + 1), 2)  # every replica on one GPU
    config = serve_config(port, smoke, share)
    cfg_path = args.work / "serve-gpu-check.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        str(ROOT / ".venv" / "bin" / "divreward"),
        "serve",
        "--config",
        str(cfg_path),
        "--tiny-dir",
        str(tiny),
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--num-cpus",
        "4" if smoke else str(max(4, os.cpu_count() or 4)),
    ]
    if not smoke:
        cmd += ["--num-gpus", "1"]
    log_path = args.work / "serve.log"
    body: dict[str, Any] = {"config": config, "command": cmd, "checks": {}}
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def on_sigterm(*_: Any) -> None:
            # The shell's stage time limit sends SIGTERM: take the service down with us.
            stop(proc, 12.0)
            sys.exit(124)

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            body["ready"] = wait_ready(url, proc, time.monotonic() + args.serve_timeout)
            body["ready_s"] = round(time.perf_counter() - t0, 1)
            listed = http("GET", url + "/v1/models")
            cards = dict(listed["scorers"])
            if listed.get("embedder"):
                cards[listed["embedder"]["name"]] = listed["embedder"]
            body["models"] = cards
            images = make_images(GROUP, seed=5, side=256)
            encoded = []
            for img in images:
                import io

                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                encoded.append(base64.b64encode(buf.getvalue()).decode())
            start = time.perf_counter()
            res = http(
                "POST", url + "/v1/rewards", {"groups": [{"prompt": PROMPT, "images": encoded}]}
            )
            body["rewards_s"] = round(time.perf_counter() - start, 3)
            group = res["groups"][0]
            body["rewards"] = {k: group.get(k) for k in ("rewards", "advantages", "quality")}
            body["response_models"] = res.get("models")
        except Exception as exc:
            body["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop(proc)
    body["seconds"] = round(time.perf_counter() - t0, 1)
    body["checks"] = serve_checks(body, smoke)
    write_json(args.work / "serve.json", body)
    for k, v in body["checks"].items():
        print(f"serve: {k}: {v}", flush=True)
    if "error" in body:
        print(f"serve: {body['error']} (log: {log_path})", flush=True)
    return 0 if body["checks"] and all(v["ok"] for v in body["checks"].values()) else 1


def serve_checks(body: dict[str, Any], smoke: bool) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    if "ready" in body:
        checks["ready"] = {"ok": body["ready"].get("status") == "ready", "detail": body["ready"]}
    cards = body.get("models") or {}
    if cards:
        want = "cpu" if smoke else "cuda"
        devices = {name: card.get("device") for name, card in cards.items()}
        dtypes = {name: card.get("dtype") for name, card in cards.items()}
        checks["devices"] = {
            "ok": all(str(d).startswith(want) for d in devices.values())
            and set(devices) >= {*SERVE_SCORERS, SERVE_EMBEDDER},
            "detail": devices,
        }
        half = {"float16", "bfloat16"}
        checks["dtypes"] = {
            "ok": all(
                (d == "float32") if smoke else (d in half or n == SERVE_EMBEDDER)
                for n, d in dtypes.items()
            ),
            "detail": dtypes,
        }
        pre = {n: (c.get("options") or {}).get("preprocess") for n, c in cards.items()}
        checks["preprocess"] = {"ok": all(p == "tensor" for p in pre.values()), "detail": pre}
    if "rewards" in body:
        values = [*(body["rewards"]["rewards"] or []), *(body["rewards"]["advantages"] or [])]
        ok = len(values) == 2 * GROUP and all(math.isfinite(v) for v in values)
        checks["rewards"] = {"ok": ok, "detail": f"{GROUP} finite rewards and advantages"}
    if "error" in body:
        checks["error"] = {"ok": False, "detail": body["error"]}
    return checks


# -------------------------------------------------------------------- stage: report
def run_text(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip() or f"(no output, exit {out.returncode})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({cmd[0]} unavailable: {exc})"


def machine() -> list[str]:
    import torch

    lines = [
        f"- `nvidia-smi -L`: {run_text(['nvidia-smi', '-L'])}",
        "- driver: "
        + run_text(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
        ),
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, cuda available: {torch.cuda.is_available()}",
        f"- Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs",
        f"- git commit: {run_text(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'])}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- device 0: {torch.cuda.get_device_name(0)}")
    return lines


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def model_table(rows: list[dict[str, Any]], timed: bool = False) -> list[str]:
    head = "| model | dtype | preprocess | device | finite | agreement | tolerance | ok | load s |"
    if timed:
        head += " img/s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "min_cos" in r:
            agree, tol = f"min cos {r['min_cos']:.7f}", f">= {COS_MIN[r['dtype']]}"
        elif "max_rel_diff" in r:
            agree, tol = f"max rel {fmt(r['max_rel_diff'])}", f"<= {REL_TOL[r['dtype']]}"
        elif r.get("reference"):
            agree, tol = "reference", ""
        else:
            agree, tol = r.get("error", ""), ""
        cells = [
            r["model"],
            r["dtype"],
            r["preprocess"],
            r.get("device"),
            r.get("finite"),
            agree,
            tol,
            "yes" if r.get("ok") else "**NO**",
            r.get("load_s"),
        ]
        if timed:
            cells.append(r.get("img_per_s"))
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return lines


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def stage_report(args: argparse.Namespace) -> int:
    stages = {}
    if (args.work / "stages.txt").exists():
        for line in (args.work / "stages.txt").read_text().splitlines():
            name, rc, secs = [*line.split(), "", ""][:3]
            stages[name] = (rc, secs)
    title = "GPU check (CPU smoke run: not GPU results)" if args.cpu_smoke else "GPU check"
    out = [
        f"# {title}",
        "",
        f"Written by `bench/gpu_check.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    out += ["## Machine", "", *machine(), ""]
    out += ["## Stages", "", "| stage | exit | seconds |", "|---|---|---|"]
    out += [
        f"| {k} | {rc}{' (timed out)' if rc in ('124', '137') else ''} | {s} |"
        for k, (rc, s) in stages.items()
    ]
    out += [""]
    models = read_json(args.work / "models.json")
    out += ["## 1. Every model on stand-in weights", ""]
    if models is None:
        out += ["No result (the stage failed before writing it; see its log above).", ""]
    else:
        out += [
            f"Tiny random twins of every model through the real loaders on `{models['device']}`; "
            f"a group of {models['group'][0]} photo-like {models['group'][1]}² images. Reference: "
            "float32 with the reference preprocessing (`pil`); each other row against it. "
            "Scorers: max |Δscore| / max |score|; embedders: smallest cosine to the reference row.",
            "",
            *model_table(models["rows"]),
            "",
        ]
        if "standin" in models:
            out += [
                f"PickScore on a random CLIP ViT-B/16-sized stand-in loaded from a hub-layout "
                f"cache, a group of {STANDIN_GROUP} 512² images; img/s over repeated calls "
                "after a warm-up (preprocessing included):",
                "",
                *model_table(models["standin"], timed=True),
                "",
            ]
        if "standin_error" in models:
            out += [f"Stand-in: not run: {models['standin_error']}", ""]
    serve = read_json(args.work / "serve.json")
    out += ["## 2. Serve with `num_gpus` placement", ""]
    if serve is None:
        out += ["No result (the stage failed before writing it).", ""]
    else:
        placed = serve["config"]["applications"][1]["args"]["scorers"]
        share = next(iter(placed.values())).get("num_gpus")
        ask = f"`num_gpus: {share}`" if share else "no GPU (CPU smoke run: `num_cpus` only)"
        out += [
            f"`divreward serve` on a tiny config: scorers {', '.join(SERVE_SCORERS)} and the "
            f"{SERVE_EMBEDDER} embedder, each deployment asking for {ask}, with "
            "`preprocess: tensor`. A replica that sees no CUDA device cannot load a "
            "`cuda` model (the loaders check `torch.cuda.is_available()`), so ready replicas "
            "whose cards say `cuda` ran on the GPU.",
            "",
            f"Ready after {serve.get('ready_s')} s; `/v1/rewards` on {GROUP} images: "
            f"{serve.get('rewards_s')} s (first call).",
            "",
            "| check | ok | detail |",
            "|---|---|---|",
        ]
        for k, v in serve["checks"].items():
            out.append(
                f"| {k} | {'yes' if v['ok'] else '**NO**'} | `{json.dumps(v['detail'])[:300]}` |"
            )
        out += [""]
    out += ["## 3. Throughput (service vs in-process floor)", ""]
    bench = ROOT / "bench" / "results" / "throughput-gpu.md"
    rc = stages.get("throughput", ("not run", ""))[0]
    if args.cpu_smoke:
        out += ["Not run in a CPU smoke run.", ""]
    elif rc == "0" and bench.exists():
        body = bench.read_text().splitlines()
        out += [
            "`bench/throughput.py --device cuda --clients 1,4,16,64` "
            "(bench/results/throughput-gpu.md):",
            "",
            *[("#" + x if x.startswith("#") else x) for x in body],
            "",
        ]
    else:
        out += [f"**Failed** (exit {rc}): see `{args.work}/throughput.log`; no numbers.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stage", choices=["models", "serve", "report"])
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, float32, tiny models only")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "gpu-check")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.md")
    ap.add_argument(
        "--standin", action="store_true", help="the ViT-B/16 stand-in in a smoke run too"
    )
    ap.add_argument("--timing-runs", type=int, default=5)
    ap.add_argument("--serve-timeout", type=float, default=65.0, help="seconds to readiness")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "models":
        return stage_models(args)
    if args.stage == "serve":
        return stage_serve(args)
    return stage_report(args)


if __name__ == "__main__":
    sys.exit(main())
