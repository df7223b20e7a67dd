"""docker-compose.yml: validated by Debian's ``docker-compose config`` (no Docker engine
needed), its structure checked against the other deployment files, and the tiny
profile's commands run here as plain processes: a head, one worker, the deploy step,
``/readyz``, one ``/v1/rewards``, then a clean stop.

Running the containers' commands on one host needs a few changes, and only these: host
names become 127.0.0.1, fixed ports become free ones (plus the per-node ports Ray
otherwise takes by default: dashboard agent, client server, worker ports), the dashboard
listens on loopback, and the Serve config is a copy with free HTTP/gRPC ports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from raycluster import FAST_FAILURE_ENV, RayNode, free_port, group_processes

from divreward.images import encode_image
from divreward.services.deploy_config import validate_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
POOLS = {"divreward_scorer": 1000, "divreward_diversity": 1000}
TOKEN = "compose-test-token"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the anchors and merge keys


def _flag(cmd: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in cmd if a.startswith(f"{name}=")]
    return value


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose missing")
@pytest.mark.parametrize(
    "profiles", [[], ["tiny"], ["trainer"], ["tiny", "trainer"], ["monitoring"]]
)
def test_docker_compose_config_validates(profiles: list[str]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "DIVREWARD_API_TOKENS": "x"},
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("prefix", ["", "tiny-"])
def test_head_workers_and_deploy_match_the_cluster_layout(prefix: str) -> None:
    services = compose()["services"]
    head, worker, deploy = (services[f"{prefix}{n}"] for n in ("head", "worker", "deploy"))
    hcmd, wcmd = head["command"], worker["command"]
    assert hcmd[:3] == ["ray", "start", "--head"] and hcmd[-1] == "--block"
    assert json.loads(_flag(hcmd, "--resources")) == {"divreward_head": 1000}
    assert _flag(hcmd, "--num-gpus") == "0"
    assert wcmd[:2] == ["ray", "start"] and wcmd[-1] == "--block"
    assert _flag(wcmd, "--address") == f"{prefix}head:6379"
    # the same custom resources as the Kubernetes pools (and as the Serve config asks)
    assert json.loads(_flag(wcmd, "--resources")) == POOLS
    assert worker["depends_on"][f"{prefix}head"] == {"condition": "service_healthy"}
    assert "ports" not in worker  # no fixed host port: `--scale worker=N` works
    script = deploy["command"][-1]
    words = shlex.split(script)
    assert words[:2] == ["serve", "deploy"]
    assert words[words.index("--address") + 1] == f"http://{prefix}head:8265"
    config = yaml.safe_load((ROOT / words[2]).read_text())
    schema = validate_config(config)  # strictly: every key, the builders' args
    assert schema.http_options.host == "0.0.0.0"
    assert all(a["args"]["auth"]["enabled"] for a in config["applications"])
    assert "docker/wait_ready.py" in script and (ROOT / "docker" / "wait_ready.py").is_file()
    expected = "serve-cluster-tiny.yaml" if prefix else "serve-cluster-gpu.yaml"
    assert words[2] == f"deploy/{expected}"
    for svc in (head, worker, deploy):
        assert svc["shm_size"] in ("8gb", "1gb")  # Ray's object store lives in /dev/shm
        assert svc["environment"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert all(p.startswith("127.0.0.1:") for p in head["ports"])
    assert {p.split(":")[-1] for p in head["ports"]} == {"8000", "9000", "8265"}
    if not prefix:
        gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
        assert "deploy" not in head  # the head is CPU only
    for svc in (head, worker):  # Ray drains a node on SIGTERM for up to 30 s
        assert svc["stop_grace_period"] == "45s"


def test_monitoring_profile_scrapes_every_ray_node() -> None:
    """Prometheus resolves every service that runs `ray start` and scrapes the port each
    one exports its metrics on; Grafana gets that Prometheus and the generated dashboard."""
    services = compose()["services"]
    ray_nodes = {
        name: svc["command"]
        for name, svc in services.items()
        if svc.get("command", [])[:2] == ["ray", "start"]
    }
    assert set(ray_nodes) == {"head", "worker", "tiny-head", "tiny-worker"}
    ports = {int(_flag(cmd, "--metrics-export-port")) for cmd in ray_nodes.values()}
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(ray_nodes) and {sd["port"]} == ports
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "divreward.yaml").read_text())[
        "providers"
    ]
    dashboards = provider["options"]["path"]
    assert mounts["./deploy/grafana/divreward.json"] == f"{dashboards}/divreward.json"
    assert all(s.get("profiles") == ["monitoring"] for s in (services["prometheus"], grafana))


def test_the_weights_service_fills_the_cache_before_the_head_starts() -> None:
    services = compose()["services"]
    weights, head = services["weights"], services["head"]
    assert head["depends_on"]["weights"] == {"condition": "service_completed_successfully"}
    assert weights["restart"] == "no"  # one shot
    script = weights["command"][-1]
    check, pull = (shlex.split(part) for part in script.split(" || "))
    deploy_config = shlex.split(services["deploy"]["command"][-1])[2]
    assert check == ["divreward", "weights", "check", "--serve-config", deploy_config]
    assert pull == ["divreward", "weights", "pull", "--serve-config", deploy_config]
    env = weights["environment"]
    assert env["HF_TOKEN"] == "${HF_TOKEN:-}"  # gated repositories
    # Either volume alone works: a model in /weights (the resolver's first place) is
    # used from there (check passes), any other goes to the writable hf-cache volume,
    # shared with every Ray node.
    assert env["HF_HOME"] == "/hf-cache" and env["DIVREWARD_WEIGHTS_DIR"] == "/weights"
    for svc in (weights, head, services["worker"]):
        assert "hf-cache:/hf-cache" in svc["volumes"]
        assert "${DIVREWARD_WEIGHTS:-./weights}:/weights:ro" in svc["volumes"]
    # the trainer's policy the same way, before the trainer starts
    tw, trainer = services["trainer-weights"], services["trainer"]
    assert tw["profiles"] == ["trainer"]
    assert trainer["depends_on"]["trainer-weights"] == {
        "condition": "service_completed_successfully"
    }
    preset = "${DIVREWARD_TRAIN_PRESET:-diversegrpo-sd35-pickscore}"
    assert f"divreward weights pull --preset {preset}" in tw["command"][-1]
    assert trainer["command"][3] == preset


@pytest.mark.parametrize("name", ["trainer", "tiny-trainer"])
def test_trainer_service_trains_against_the_head(name: str) -> None:
    svc = compose()["services"][name]
    assert svc["profiles"] == ["trainer" if name == "trainer" else "tiny"]
    cmd = svc["command"]
    assert cmd[:3] == ["divreward", "train", "--preset"]
    preset = cmd[3]
    if name == "tiny-trainer":
        assert preset == "tiny-cpu"
    else:
        preset = preset.split(":-")[1].rstrip("}")  # ${DIVREWARD_TRAIN_PRESET:-default}
    assert (ROOT / "trainer" / "presets" / f"{preset}.yaml").is_file()
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    head = "tiny-head" if name == "tiny-trainer" else "head"
    assert f"reward_url=grpc://{head}:9000" in sets and "reward_backend=service" in sets
    deploy = "tiny-deploy" if name == "tiny-trainer" else "deploy"
    assert svc["depends_on"][deploy] == {"condition": "service_completed_successfully"}
    assert "DIVREWARD_API_TOKEN" in svc["environment"]


# ------------------------------------------------------------ the commands, for real
def _localize_head(cmd: list[str], gcs: int, dash: int) -> list[str]:
    out = []
    for a in cmd:
        if a == "--port=6379":
            a = f"--port={gcs}"
        elif a == "--dashboard-host=0.0.0.0":
            a = "--dashboard-host=127.0.0.1"
        out.append(a)
    return [
        *_per_node(
            out[:-1], extra=[f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}"]
        ),
        "--block",
    ]


def _per_node(cmd: list[str], extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    metrics = "--metrics-export-port="
    return [
        *(f"{metrics}{free_port()}" if a.startswith(metrics) else a for a in cmd),
        *extra,
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--object-store-memory={200 * 1024 * 1024}",
    ]


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` in an environment value, as ``docker
    compose`` substitutes it from the caller's environment (here: the test's)."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: os.environ.get(m[1], m[2] or ""), value)


def _exe(cmd: list[str]) -> list[str]:
    """The venv's ``ray``/``serve`` (the image has them on PATH)."""
    venv_bin = Path(os.sys.executable).parent
    return [str(venv_bin / cmd[0]) if (venv_bin / cmd[0]).exists() else cmd[0], *cmd[1:]]


@pytest.mark.slow
@pytest.mark.serve
@pytest.mark.timeout(600)
def test_tiny_profile_commands_run_as_plain_processes(tiny_zoo: Any, tmp_path: Path) -> None:
    from fixtures_serve import mark_built

    names = ["pickscore", "clipscore", "dreamsim"]
    for name in names:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, names)
    services = compose()["services"]
    gcs, dash, http, grpc = free_port(), free_port(), free_port(), free_port()
    env = {
        **FAST_FAILURE_ENV,
        **{k: _interpolate(str(v)) for k, v in services["tiny-head"]["environment"].items()},
        "DIVREWARD_API_TOKENS": TOKEN,
        "DIVREWARD_TINY_DIR": str(tiny_zoo.root),  # prebuilt, instead of building at start
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "15",
        "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("DIVREWARD_WEIGHTS_DIR", None)
    env.pop("HF_HOME", None)
    head = RayNode(
        "head",
        {},
        _exe(_localize_head(services["tiny-head"]["command"], gcs, dash)),
        tmp_path / "head.log",
        env=env,
    )
    wcmd = [
        f"--address=127.0.0.1:{gcs}" if a == "--address=tiny-head:6379" else a
        for a in services["tiny-worker"]["command"]
    ]
    worker = RayNode(
        "worker", {}, _exe([*_per_node(wcmd[:-1]), "--block"]), tmp_path / "w.log", env=env
    )
    config = yaml.safe_load((ROOT / "deploy" / "serve-cluster-tiny.yaml").read_text())
    config["http_options"]["port"], config["grpc_options"]["port"] = http, grpc
    cfg_path = tmp_path / "serve-cluster-tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    script = (
        services["tiny-deploy"]["command"][-1]
        .replace("deploy/serve-cluster-tiny.yaml", str(cfg_path))
        .replace("http://tiny-head:8265", f"http://127.0.0.1:{dash}")
        .replace("http://tiny-head:8000", f"http://127.0.0.1:{http}")
    )
    base = f"http://127.0.0.1:{http}"
    try:
        head.start()
        _wait_for(lambda: _dashboard_up(dash), 120, head)
        worker.start()
        _wait_for(lambda: _nodes_alive(dash) >= 2, 120, worker)
        deploy = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-3000:]
        assert "is ready" in deploy.stdout
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(4)]
        body = {
            "groups": [
                {
                    "prompt": "a red bicycle",
                    "images": [base64.b64encode(encode_image(im, "PNG")).decode() for im in images],
                }
            ],
        }
        unauth = httpx.post(f"{base}/v1/rewards", json=body, timeout=60)
        assert unauth.status_code == 401  # 0.0.0.0 means bearer tokens
        r = httpx.post(
            f"{base}/v1/rewards",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=120,
        )
        assert r.status_code == 200, r.text[:1000]
        (g,) = r.json()["groups"]
        assert len(g["rewards"]) == len(g["advantages"]) == 4
        assert abs(sum(g["advantages"])) < 1e-6  # group-normalised
        assert r.json()["profile"] == "tiny"
    finally:
        # `docker compose down`: SIGTERM to each container's `ray start --block`, which
        # drains its node and stops its processes (Ray's own exit status for that is 1).
        stopped = {}
        for node in (worker, head):
            if node.proc is not None:
                t0 = time.monotonic()
                node.stop(timeout_s=60)
                stopped[node.name] = round(time.monotonic() - t0, 1)
        left = [p.pid for n in (worker, head) if n.proc for p in group_processes(n.pgid)]
        assert not left, f"processes left behind: {left}"
    print("compose plain-process stop times (s):", stopped)
    assert "Local node finished draining" in worker.tail(200)


def _dashboard_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _nodes_alive(port: int) -> int:
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=f"http://127.0.0.1:{port}", raise_on_missing_output=False)
    except Exception:
        return 0
    return sum(1 for n in nodes if n.state == "ALIVE")


def _wait_for(cond: Any, timeout_s: float, node: RayNode) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert node.proc is not None and node.proc.poll() is None, node.tail()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.name} not up after {timeout_s}s:\n{node.tail()}")
        time.sleep(1.0)
