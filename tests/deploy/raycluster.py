"""A multi-node Ray cluster on one machine, started with Ray's own ``ray start``.

Each node is one ``ray start ... --block`` process in its own session: everything it
starts (gcs_server, raylet, dashboard, agents, the workers that host Serve replicas)
stays in its process group, so a node is stopped with SIGTERM to ``ray start`` and
killed outright - the way a machine dies - with SIGKILL to the group. Nothing here calls
``ray stop``, which would stop every Ray process of the user on the machine.

Nodes sharing a host need their own ports: a free GCS/dashboard/client-server port on
the head, a free dashboard-agent port per node, and OS-chosen worker ports
(``--min-worker-port=0``). In separate containers or pods those flags are unnecessary.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))

#: GCS node-death detection, faster than Ray's defaults (3 s period, 5 misses), so a
#: killed node is declared dead within a few seconds in the tests.
FAST_FAILURE_ENV = {
    # A test cluster on loopback: no Ray cluster token (new clusters turn it on and
    # every CLI and state call would then need the token).
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_processes(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group (zombies excluded)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


@dataclass
class RayNode:
    """One ``ray start --block`` process and its process group."""

    name: str
    resources: dict[str, float]
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> RayNode:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **FAST_FAILURE_ENV, **self.env},
        )
        log.close()
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> set[int]:
        return {p.pid for p in group_processes(self.pgid)}

    def kill(self) -> None:
        """SIGKILL to every process of the node at once (a machine that dies), then wait
        until the kernel has removed them all."""
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            if not group_processes(self.pgid) or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM to ``ray start`` (it drains and stops its processes), then SIGKILL
        to whatever of the group is left after ``timeout_s``; returns the exit code of
        ``ray start`` (None if it had to be killed)."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = self.proc.returncode
        deadline = time.monotonic() + 10
        while group_processes(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if group_processes(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=30)
        return code

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _node_flags(resources: dict[str, float], num_cpus: int, object_store_bytes: int) -> list[str]:
    """What every node starts with: loopback, its CPUs and custom resources, no GPU,
    worker ports chosen by Ray, a free agent port, no usage stats, in the foreground."""
    return [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--resources={json.dumps(resources)}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        "--block",
    ]


def head_argv(
    gcs_port: int,
    dashboard_port: int,
    resources: dict[str, float],
    num_cpus: int,
    object_store_bytes: int,
) -> list[str]:
    return [
        RAY,
        "start",
        "--head",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        *_node_flags(resources, num_cpus, object_store_bytes),
    ]


def worker_argv(
    gcs_port: int, resources: dict[str, float], num_cpus: int, object_store_bytes: int
) -> list[str]:
    return [
        RAY,
        "start",
        f"--address=127.0.0.1:{gcs_port}",
        *_node_flags(resources, num_cpus, object_store_bytes),
    ]


class LocalCluster:
    """A head and named worker nodes, each advertising its custom resources."""

    def __init__(
        self,
        workdir: Path,
        object_store_bytes: int = 200 * 1024 * 1024,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})  # every node's environment (its replicas inherit it)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.object_store_bytes = object_store_bytes
        self.nodes: list[RayNode] = []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, resources: dict[str, float], num_cpus: int = 2) -> RayNode:
        argv = head_argv(
            self.gcs_port, self.dashboard_port, resources, num_cpus, self.object_store_bytes
        )
        node = RayNode("head", resources, argv, self.workdir / "head.log", env=self.env).start()
        self.nodes.append(node)
        self.wait_nodes({"head": resources}, timeout_s=120, node=node)
        return node

    def add_worker(
        self, name: str, resources: dict[str, float], num_cpus: int = 1, attempts: int = 3
    ) -> RayNode:
        """Start a worker node and wait until it is ALIVE. ``ray start`` gives up when the
        GCS does not answer within 30 s (an overloaded 2-core machine, a GCS busy with a
        dead node): start it again then, as an orchestrator restarting the Pod would."""
        for attempt in range(1, attempts + 1):
            argv = worker_argv(self.gcs_port, resources, num_cpus, self.object_store_bytes)
            n = sum(1 for x in self.nodes if x.name == name)
            log = self.workdir / f"{name}-{n}.log"
            node = RayNode(name, resources, argv, log, env=self.env).start()
            self.nodes.append(node)
            try:
                self.wait_nodes({name: resources}, timeout_s=120, node=node)
                return node
            except RuntimeError:  # ray start exited
                node.kill()
                self.nodes.remove(node)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def alive_nodes(self) -> list[dict[str, Any]]:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False)
        return [n.__dict__ if not isinstance(n, dict) else n for n in nodes]

    def wait_nodes(
        self, wanted: dict[str, dict[str, float]], timeout_s: float, node: RayNode
    ) -> None:
        """Until, for each wanted resource set, an ALIVE node advertises it."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start for {node.name} exited:\n{node.tail()}")
            try:
                alive = [n for n in self.alive_nodes() if n["state"] == "ALIVE"]
                if all(
                    sum(
                        all(n["resources_total"].get(k) == v for k, v in res.items()) for n in alive
                    )
                    >= sum(1 for x in self.nodes if x.name == name and x.proc.poll() is None)
                    for name, res in wanted.items()
                ):
                    return
            except Exception as exc:  # dashboard not up yet
                last = exc
            time.sleep(1.0)
        raise TimeoutError(
            f"node {node.name} did not join in {timeout_s}s ({last}):\n{node.tail()}"
        )

    def serve(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Ray's own ``serve`` CLI against the head's dashboard (what KubeRay does with a
        RayService's serveConfigV2)."""
        return subprocess.run(
            [SERVE, *args, f"--address={self.dashboard}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )

    def stop(self) -> dict[str, int | None]:
        """Workers first, then the head; every process group is gone afterwards."""
        codes: dict[str, int | None] = {}
        for node in [n for n in self.nodes if n.name != "head"] + [
            n for n in self.nodes if n.name == "head"
        ]:
            codes[f"{node.name}:{node.pgid}"] = node.stop()
        return codes
