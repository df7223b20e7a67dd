"""``divreward serve`` as a user runs it: a subprocess with its own local Ray instance.

Started with ``--profile tiny`` on free ports, it answers /readyz and /v1/rewards (marked
tiny); Ctrl-C (SIGINT) makes it exit 0 and leaves none of its processes (raylet,
gcs_server, workers) behind. With ``--profile real --device cpu`` and no weights (offline)
it fails at start, before Ray, naming where it looked and the pull command (the path
through a replica: tests/services/test_serve_preflight.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fixtures_serve import SERVE_EMBEDDER, free_port, mark_built
from services_helpers import b64, make_group, png

from divreward.schema import RewardsResponse

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]

TINY_MODELS = ["pickscore", "clipscore", SERVE_EMBEDDER]  # what the default tiny config runs


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("DIVREWARD_API_TOKENS", None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "divreward.cli", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # our signals reach this process only
        )


def _tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def _tree(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _kill(procs: list[psutil.Process], proc: subprocess.Popen[bytes]) -> None:
    """Clean up after a failed test: only the processes this test started."""
    for p in [*procs, psutil.Process(proc.pid)] if proc.poll() is None else procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = _alive(procs)
        if not left:
            return []
        time.sleep(0.5)
    return _alive(procs)


def test_serve_tiny_answers_then_ctrl_c_leaves_no_ray_process(
    tiny_zoo: Any, tmp_path: Path
) -> None:
    for name in TINY_MODELS:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, TINY_MODELS)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _start(
        [
            "--profile",
            "tiny",
            "--port",
            str(port),
            "--tiny-dir",
            str(tiny_zoo.root),
            "--num-cpus",
            "2",
        ],
        log,
    )
    base = f"http://127.0.0.1:{port}"
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"divreward serve exited {proc.returncode}:\n{_tail(log)}"
            try:
                if httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready in 300 s:\n{_tail(log)}"
            time.sleep(1)
        body = {"groups": [{"prompt": "a fox", "images": b64(png(make_group(8, seed=5)))}]}
        r = httpx.post(f"{base}/v1/rewards", json=body, timeout=120)
        assert r.status_code == 200, r.text
        resp = RewardsResponse.model_validate_json(r.content)
        assert resp.profile == "tiny" and "TINY RANDOM MODELS" in resp.warnings[0]
        assert resp.params.quality == {"pickscore": 1.0, "clipscore": 0.5}
        assert all(card.profile == "tiny" for card in resp.models.values())

        tree = _tree(proc)
        names = {p.name() for p in tree if p.is_running()}
        assert {"raylet", "gcs_server"} <= names, names  # we do watch the Ray processes
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C must not abort the shutdown
        assert proc.wait(timeout=120) == 0, _tail(log)
        assert "KeyboardInterrupt" not in log.read_text(errors="replace"), _tail(log)
        assert "divreward: shutting down" in log.read_text(errors="replace")
        left = _wait_gone(tree, timeout_s=20)
        assert not left, "stray processes after Ctrl-C:\n" + "\n".join(left)
    finally:
        _kill(tree or _tree(proc), proc)


def test_real_profile_without_weights_fails_at_start_with_the_zoo_message(tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    log = tmp_path / "serve.log"
    proc = _start(
        [
            "--profile",
            "real",
            "--port",
            str(free_port()),
            "--weights-dir",
            str(empty),
            "--device",
            "cpu",
            "--num-cpus",
            "2",
            "--deploy-timeout",
            "240",
        ],
        log,
    )
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            tree += [p for p in _tree(proc) if p not in tree]
            time.sleep(1)
        assert proc.returncode == 1, f"exit {proc.returncode}:\n{_tail(log)}"
        text = log.read_text(errors="replace")
        assert "divreward serve: weights of yuvalkirstain/PickScore_v1 missing" in text
        assert f"`divreward weights pull --profile real --weights-dir {empty}`" in text
        assert str(empty) in text  # where it looked
        assert "Traceback" not in text
        assert not _wait_gone(tree, timeout_s=20)
    finally:
        _kill(tree, proc)
