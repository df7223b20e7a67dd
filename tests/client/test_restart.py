"""The client across a server restart: a real ``divreward serve`` process (its own Ray
instance, free ports, tiny models) is stopped while a trainer-like loop keeps submitting
groups, then started again on the same ports; every call retries and succeeds, each
group answered exactly once. With the server left down, calls fail with a clear error
once their bounded retries are spent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from helpers import make_images

from divreward.client import (
    NO_RETRY,
    Group,
    RetryPolicy,
    RewardClient,
    ServiceUnavailableError,
)

# Two real server starts and a restart (~2.5 min on 2 cores): slow, run by `make test`.
pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.timeout(600)]

START_TIMEOUT_S = 300.0
# Generous enough to outlast a restart on a loaded 2-core machine (~40-90 s).
PATIENT = RetryPolicy(max_attempts=80, backoff_s=0.25, max_backoff_s=2.0, jitter=0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``divreward serve`` in its own process group (so that stopping it stops its Ray)."""

    def __init__(self, config: Path, http_port: int, grpc_port: int, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "divreward.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--num-cpus",
            "2",
        ]
        self.url = f"http://127.0.0.1:{http_port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            # The CLI prints this once every deployment is RUNNING (/readyz would wait for
            # a diversity app this quality-only config does not deploy).
            if "divreward: serving" in self.log.read_text(errors="replace"):
                try:
                    if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(1.0)
        raise AssertionError(
            f"server not ready in {START_TIMEOUT_S} s: {self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        """SIGTERM: the CLI shuts Serve and Ray down; then make sure the group is gone."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


def _mark_built(root: Path, name: str) -> None:
    """Add ``name`` to the tiny marker, keeping the models other fixtures recorded, so
    the server's builder finds it built."""
    from divreward.models.weights import TINY_MARKER, write_tiny_marker

    try:
        body = json.loads((root / TINY_MARKER).read_text())
    except (OSError, ValueError):
        body = {}
    names = list(dict.fromkeys([*body.get("models", []), name]))
    write_tiny_marker(root, int(body.get("seed", 0)), names)


def _config(tiny_dir: Path) -> dict[str, Any]:
    """One application: the reward service, quality only (no diversity app needed)."""
    return {
        "applications": [
            {
                "name": "reward",
                "route_prefix": "/",
                "import_path": "divreward.services.reward_server.app:build_app",
                "args": {
                    "profile": "tiny",
                    "tiny_models_dir": str(tiny_dir),
                    "scorers": {"pickscore": {"num_cpus": 0.2}},
                    "default_diversity": "none",
                    "ingress": {"num_cpus": 0.1},
                },
            }
        ]
    }


@pytest.fixture(scope="module")
def server(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tiny_zoo.build("pickscore")
    _mark_built(tiny_zoo.root, "pickscore")
    tmp = tmp_path_factory.mktemp("restart")
    config = tmp / "serve.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_zoo.root)))
    srv = Server(config, _free_port(), _free_port(), tmp / "server.log")
    try:
        srv.start()  # inside the try: a server that fails to get ready is stopped too
        yield srv
    finally:
        srv.stop()


def test_submissions_survive_a_restart(server: Server) -> None:
    """gRPC (one bidi stream, reopened) and HTTP clients, side by side, through one
    restart; each client's trainer loop submits a group every 100 ms throughout."""
    grpc_port = server.args[server.args.index("--grpc-port") + 1]
    urls = {"http": server.url, "grpc": f"grpc://127.0.0.1:{grpc_port}"}
    clients = {
        k: RewardClient(u, retry=PATIENT, downsize=False, timeout_s=30) for k, u in urls.items()
    }
    futures: dict[str, list[tuple[str, Future[Any]]]] = {k: [] for k in urls}
    stop = threading.Event()

    def trainer(kind: str) -> None:
        i = 0
        while not stop.is_set():
            gid = f"{kind}-g{i}"
            group = Group("a cat", make_images(3, i), group_id=gid)
            futures[kind].append((gid, clients[kind].submit(group)))
            i += 1
            time.sleep(0.1)

    loops = [threading.Thread(target=trainer, args=(k,)) for k in urls]
    try:
        before = clients["http"].rewards([Group("a cat", make_images(3, 0))]).groups[0]
        for t in loops:
            t.start()
        time.sleep(1.0)
        server.stop()
        with pytest.raises(ServiceUnavailableError):  # really down
            RewardClient(server.url, retry=NO_RETRY, downsize=False).health()
        time.sleep(2.0)  # submissions pile up while it is down
        server.start()
        time.sleep(1.0)
        stop.set()
        for t in loops:
            t.join(60)
        results = {
            kind: {gid: fut.result(timeout=180) for gid, fut in futs}
            for kind, futs in futures.items()
        }
        after = clients["grpc"].rewards([Group("a cat", make_images(3, 0))]).groups[0]
    finally:
        stop.set()
        for c in clients.values():
            c.close()
    # every group answered once, with its own id; the restarted server computes the same
    # numbers (same tiny weights, same pixels)
    for kind, res in results.items():
        assert len(res) == len(futures[kind]) >= 20, kind
        assert all(r.group_id == gid and len(r.rewards) == 3 for gid, r in res.items())
        np.testing.assert_allclose(res[f"{kind}-g0"].rewards, before.rewards, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after.rewards, before.rewards, rtol=1e-5, atol=1e-5)


def test_server_left_down_gives_a_clear_error(server: Server) -> None:
    grpc_port = server.args[server.args.index("--grpc-port") + 1]
    server.stop()  # and it stays down (the last test of the module)
    quick = RetryPolicy(max_attempts=3, backoff_s=0.05, max_backoff_s=0.1)
    for url in (server.url, f"grpc://127.0.0.1:{grpc_port}"):
        with RewardClient(url, retry=quick, downsize=False, timeout_s=5) as c:
            t0 = time.monotonic()
            with pytest.raises(
                ServiceUnavailableError, match=r"cannot reach .* after 3 attempt\(s\)"
            ):
                c.rewards([Group("p", make_images(2, 1))])
            fut = c.submit(Group("p", make_images(2, 1), group_id="g"))
            with pytest.raises(
                ServiceUnavailableError,
                match=r"(cannot reach .* after 3 attempt\(s\))|(failed 3 times in a row)",
            ):
                fut.result(60)
            assert time.monotonic() - t0 < 30  # bounded: no endless retrying
