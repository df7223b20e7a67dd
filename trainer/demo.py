"""``make demo``: the whole system on tiny random models, on CPU, in a few minutes.

Starts ``divreward serve --profile tiny`` (in its own process group, on free ports),
waits until it is ready, runs 3 training steps of a tiny random SD3 against it (preset
``tiny-cpu``), printing per step the reward, the DiverseGRPO bonus, k, the DreamSim
diversity and the loss, then stops the service (SIGTERM: a clean Serve and Ray
shutdown) and exits 0. Every number is meaningless (random models): it shows the
machinery only.

    python -m divreward.trainer.demo [--steps 3] [--transport http|grpc] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the reward service exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the reward service at {url} was not ready after {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m divreward.trainer.demo", description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--transport", choices=("http", "grpc"), default="http")
    parser.add_argument("--tiny-dir", default=".cache/tiny-models")
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    from divreward.trainer.config import load_config
    from divreward.trainer.loop import train

    http_port, grpc_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{http_port}"
    url = base if args.transport == "http" else f"grpc://127.0.0.1:{grpc_port}"
    log_dir = Path(tempfile.mkdtemp(prefix="divreward-demo-"))
    out_dir = args.output_dir or str(log_dir / "run")
    cfg = load_config(
        "tiny-cpu",
        [
            f"max_steps={args.steps}",
            f"reward_url={url}",
            f"tiny_models_dir={args.tiny_dir}",
            f"output_dir={out_dir}",
            "progress=false",
            *args.overrides,
        ],
    )
    serve_cmd = [
        sys.executable, "-m", "divreward.cli", "serve", "--profile", "tiny",
        "--tiny-dir", args.tiny_dir, "--port", str(http_port), "--grpc-port", str(grpc_port),
        "--num-cpus", "4",
    ]  # fmt: skip
    print(f"starting the tiny reward service on {base} (log: {log_dir / 'serve.log'})")
    with open(log_dir / "serve.log", "wb") as serve_log:
        proc = subprocess.Popen(
            serve_cmd, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            t0 = time.monotonic()
            _wait_ready(base, proc, args.ready_timeout)
            print(f"service ready after {time.monotonic() - t0:.0f} s; training {args.steps} steps")
            result = train(cfg, print_fn=lambda s: print(s, flush=True))
        finally:
            _stop(proc)
    last = result.history[-1]
    print(
        f"done: {len(result.history)} steps, metrics in {Path(out_dir) / 'metrics.jsonl'}; "
        f"last reward {last['reward/mean']:.4g}, wait share {last['perf/wait_share']:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
