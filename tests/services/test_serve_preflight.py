"""``divreward serve`` stops early, in seconds, with one message that says what to do:
real models on a CPU without ``--device cpu``; missing weights (offline: before Ray
starts; online: from the replica, one line with the ``divreward weights pull``
command); a config whose resources cannot fit the cluster (8 GPUs on a CPU-only Ray).
And :func:`fit_problems`' arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_serve import SERVE_EMBEDDER, SERVE_EMBEDDER_OPTIONS, free_port, mark_built

from divreward.services.deploy_config import DIVERSITY_IMPORT, REWARD_IMPORT
from divreward.services.launch import Demand, fit_problems

pytestmark = [pytest.mark.timeout(600)]


def _serve(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "divreward.cli", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _env(offline: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DIVREWARD_API_TOKENS",)}
    env.pop("DIVREWARD_WEIGHTS_DIR", None)
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    else:
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def test_real_models_on_a_cpu_need_device_cpu(tmp_path: Path) -> None:
    rc, out, took = _serve(["--profile", "real"], _env(HF_HUB_CACHE=str(tmp_path / "c")))
    assert rc == 2, out
    assert "real models would run on the CPU: diversity/embedder, reward/scorer-pickscore" in out
    assert "pass --device cpu" in out and "deploy/serve-1gpu.yaml" in out
    assert took < 60


def test_missing_weights_offline_stop_before_ray_with_the_pull_command(tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    env = _env(HF_HUB_CACHE=str(tmp_path / "c"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    rc, out, took = _serve(
        ["--profile", "real", "--device", "cpu", "--weights-dir", str(empty)], env
    )
    assert rc == 1, out
    fetch = f"`divreward weights pull --profile real --weights-dir {empty}`"
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(ln.endswith(fetch) for ln in lines), out
    assert "weights of yuvalkirstain/PickScore_v1 missing (model.safetensors or " in out
    assert str(empty / "yuvalkirstain" / "PickScore_v1") in out  # where it looked
    assert "Traceback" not in out and "ray" not in out.lower().replace("real", "")
    assert took < 60


def _two_apps(
    tiny_dir: Path, weights: Path, reward_scorer: dict[str, Any], reward_profile: str
) -> dict[str, Any]:
    return {
        "applications": [
            {
                "name": "diversity",
                "route_prefix": "/diversity",
                "import_path": DIVERSITY_IMPORT,
                "args": {
                    "profile": "tiny",
                    "tiny_models_dir": str(tiny_dir),
                    "embedder": {"name": SERVE_EMBEDDER, "options": SERVE_EMBEDDER_OPTIONS},
                    "ingress": {"num_cpus": 0},
                },
            },
            {
                "name": "reward",
                "route_prefix": "/",
                "import_path": REWARD_IMPORT,
                "args": {
                    "profile": reward_profile,
                    "tiny_models_dir": str(tiny_dir),
                    "weights_dir": str(weights),
                    "scorers": {"pickscore": reward_scorer},
                    "ingress": {"num_cpus": 0},
                },
            },
        ]
    }


@pytest.mark.serve
def test_eight_gpus_on_a_cpu_only_ray_fail_fast_naming_the_deployment(
    tiny_zoo: Any, tmp_path: Path
) -> None:
    for name in ("pickscore", SERVE_EMBEDDER):
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, ["pickscore", SERVE_EMBEDDER])
    config = tmp_path / "serve.yaml"
    apps = _two_apps(tiny_zoo.root, tmp_path / "w", {"num_gpus": 8, "num_cpus": 0.25}, "tiny")
    config.write_text(yaml.safe_dump(apps))
    rc, out, took = _serve(["--config", str(config), "--num-cpus", "2"], _env())
    assert rc == 2, out
    assert (
        "deployment 'scorer-pickscore' of application 'reward' asks for GPU 8 per replica, "
        "but no node of this Ray cluster has that much (largest node: GPU 0; cluster total: GPU 0)"
    ) in out
    assert took < 30, f"took {took:.1f}s"


@pytest.mark.serve
@pytest.mark.slow
def test_missing_weights_in_a_replica_are_one_short_error(tiny_zoo: Any, tmp_path: Path) -> None:
    """Online (no HF_HUB_OFFLINE), nothing is checked before the deployment: the replica
    looks in the weights dir, then asks the hub (HF_ENDPOINT: a port where nothing
    listens), and the command ends with one line naming the repository and the pull."""
    tiny_zoo.build(SERVE_EMBEDDER)
    mark_built(tiny_zoo.root, [SERVE_EMBEDDER])
    empty = tmp_path / "weights"
    empty.mkdir()
    config = tmp_path / "serve.yaml"
    scorer = {"num_cpus": 0.25, "max_constructor_retry_count": 1}
    config.write_text(yaml.safe_dump(_two_apps(tiny_zoo.root, empty, scorer, "real")))
    env = _env(
        offline=False,
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HUB_CACHE=str(tmp_path / "hf"),
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    args = [
        "--config",
        str(config),
        "--num-cpus",
        "2",
        "--device",
        "cpu",
        "--deploy-timeout",
        "240",
    ]
    rc, out, _ = _serve(args, env)
    assert rc == 1, out
    (last,) = [ln for ln in out.splitlines() if ln.startswith("divreward serve: deployment failed")]
    assert "Traceback" not in out[out.index(last) :]  # after it: Serve's shutdown log only
    assert last.startswith(
        "divreward serve: deployment failed: WeightsNotFoundError: weights for "
        "'yuvalkirstain/PickScore_v1' not found; looked in: the weights directory"
    ), out[-3000:]
    assert last.endswith(
        f"Fetch them with `divreward weights pull pickscore --weights-dir {empty}`"
    )


# ------------------------------------------------------------------ fit_problems


def _d(name: str, replicas: int, **need: float) -> Demand:
    return Demand("reward", name, replicas, dict(need))


def test_fit_problems_totals_and_the_largest_node() -> None:
    nodes = [{"CPU": 8.0, "GPU": 1.0, "memory": 32 * 2**30}, {"CPU": 4.0, "pool": 1000.0}]
    totals = {"CPU": 12.0, "GPU": 1.0, "memory": 32 * 2**30, "pool": 1000.0}
    fits = [_d("a", 2, CPU=2.0, GPU=0.5), _d("b", 1, CPU=4.0, pool=0.01)]
    assert fit_problems(fits, totals, nodes) == []
    # 3 x 0.5 GPU = 1.5 > 1: the total, with who asks for it
    (p,) = fit_problems([_d("a", 3, GPU=0.5)], totals, nodes)
    assert p == (
        "the deployments ask for GPU 1.5 in all (reward/a 3 x 0.5), but this Ray cluster has GPU 1"
    )
    # one replica larger than any node (12 CPUs in total, 8 at most on one node)
    (p,) = fit_problems([_d("big", 1, CPU=10.0)], totals, nodes)
    assert "asks for CPU 10 per replica" in p and "largest node: CPU 8" in p
    # a custom resource nobody advertises, and memory in GiB
    (p,) = fit_problems([_d("x", 1, other=1.0)], totals, nodes)
    assert "asks for other 1 per replica" in p and "cluster total: other 0" in p
    (p,) = fit_problems([_d("m", 1, memory=64 * 2**30)], totals, nodes)
    assert "64 GiB of memory per replica" in p
