"""The deployment files: docker-compose.yml and the KubeRay RayService manifest.

No Docker engine or Kubernetes API server runs on the build machines, so the compose
file is checked with Debian's ``docker-compose config`` (skipped where it is not
installed) and the manifest against a JSON schema of the RayService fields it uses
(KubeRay v1), with its serveConfigV2 validated strictly like the files in deploy/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from divreward.services.deploy_config import validate_config

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "k8s" / "rayservice.yaml"
COMPOSE = ROOT / "docker-compose.yml"

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {"containerPort": {"type": "integer"}},
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"requests": _STR_MAP, "limits": _STR_MAP},
        },
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER}},
        }
    },
}
# The part of KubeRay's ray.io/v1 RayService CRD that this manifest uses.
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "serviceUnhealthySecondThreshold": {"type": "integer"},
                "deploymentUnhealthySecondThreshold": {"type": "integer"},
                "upgradeStrategy": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": ["NewCluster", "None", "NewClusterWithIncrementalUpgrade"]}
                    },
                },
                "serveService": {"type": "object"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "properties": {"rayStartParams": _STR_MAP, "template": _POD_TEMPLATE},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["groupName", "rayStartParams", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "rayStartParams": _STR_MAP,
                                    "template": _POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def test_rayservice_matches_schema(manifest: dict[str, Any]) -> None:
    jsonschema.validate(manifest, RAYSERVICE_SCHEMA)
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"


def test_rayservice_serve_config_is_strictly_valid(manifest: dict[str, Any]) -> None:
    cfg = validate_config(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    assert {a.name for a in cfg.applications} == {"reward", "diversity"}
    assert cfg.grpc_options.port == 9000


def test_rayservice_exposes_http_and_grpc(manifest: dict[str, Any]) -> None:
    ports = {p["name"]: p["port"] for p in manifest["spec"]["serveService"]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 9000}
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    container_ports = {p["containerPort"] for p in head["containers"][0]["ports"]}
    assert {8000, 9000, 6379, 8265} <= container_ports


def _advertised(group: dict[str, Any]) -> dict[str, float]:
    raw = group["rayStartParams"].get("resources", '"{}"')
    return json.loads(json.loads(raw))  # KubeRay wants a quoted JSON string


def test_every_deployment_lands_on_a_worker_group_with_gpus(manifest: dict[str, Any]) -> None:
    """Scorers and the embedder ask for a custom resource that exactly one GPU worker
    group advertises, and their GPU fractions fit that group's GPUs."""
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    by_resource = {}
    for g in groups:
        for name in _advertised(g):
            by_resource[name] = g
    cfg = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    models: list[dict[str, Any]] = []
    for app in cfg["applications"]:
        args = app["args"]
        models += list(args.get("scorers", {}).values())
        if "embedder" in args:
            models.append(args["embedder"])
    assert len(models) == 6
    for m in models:
        (res,) = m["resources"]
        group = by_resource[res]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert 0 < m["num_gpus"] <= int(limits["nvidia.com/gpu"])
    assert set(by_resource) == {"divreward_scorer", "divreward_diversity"}


def test_env_is_shared_and_tokens_come_from_a_secret(manifest: dict[str, Any]) -> None:
    spec = manifest["spec"]["rayClusterConfig"]
    envs = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]] + [
        g["template"]["spec"]["containers"][0]["env"] for g in spec["workerGroupSpecs"]
    ]
    for env in envs:
        tokens = next(e for e in env if e["name"] == "DIVREWARD_API_TOKENS")
        assert tokens["valueFrom"]["secretKeyRef"]["name"] == "divreward-api-tokens"


def test_compose_file_refers_to_valid_serve_config() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    cmd = compose["services"]["divreward"]["command"]
    config = ROOT / cmd[cmd.index("--config") + 1]
    validate_config(yaml.safe_load(config.read_text()))
    gpu = compose["services"]["divreward"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for svc in compose["services"].values():
        assert svc["shm_size"] == "8gb"  # Ray's object store lives in /dev/shm
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose missing"
)
def test_compose_config_validates() -> None:
    for extra in ([], ["--profile", "tiny"]):
        proc = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), *extra, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
