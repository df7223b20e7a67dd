"""The Kubernetes manifests (deploy/k8s/): each overlay rendered by ``kubectl kustomize``
and every rendered object checked offline.

- the RayService against the fields of KubeRay's RayService CRD, unknown keys refused
  (tests/deploy/k8s_schema.py), and its pod templates and serve Service against the
  Kubernetes OpenAPI models;
- its serveConfigV2 strictly against Serve's own schema (``ray.serve.schema`` models,
  every key, recursively) and the builders' argument models, and equal to the config
  file the other deployments use (deploy/serve-cluster-*.yaml);
- the custom resources that place each model deployment exist on exactly one pool;
- the Secret, the weights claim and the Job that fills it (HF_TOKEN from a Secret) before
  the workers mount it read-only, the probes, the gRPC port, the trainer Job.
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
from k8s_schema import RAYSERVICE_SCHEMA, check_k8s_object

from divreward.services.deploy_config import validate_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"dev": "serve-cluster-tiny.yaml", "prod": "serve-cluster-gpu.yaml"}
TENANTS_SECRET = "divreward-tenants"
TENANTS_FILE = "/etc/divreward/tenants/tenants.yaml"
TRAINER_TOKEN = {"name": "divreward-trainer-token", "key": "token"}
HF_SECRET = {"name": "divreward-hf-token", "key": "token", "optional": True}

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed"
)


def render(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


def _pods(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod template specs by group: 'head' and each worker group's name."""
    cluster = rs["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for g in cluster.get("workerGroupSpecs", []):
        out[g["groupName"]] = g["template"]["spec"]
    return out


def _advertised(params: dict[str, str]) -> dict[str, float]:
    raw = params.get("resources")
    return json.loads(json.loads(raw)) if raw else {}  # KubeRay wants a quoted JSON string


def test_every_overlay_renders_the_expected_objects(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objs = overlay
    kinds = sorted(o["kind"] for o in objs if o["kind"] != "NetworkPolicy")  # test below
    if name == "dev":  # tiny models, no weights claim, a throw-away tenant, the trainer Job
        assert kinds == ["Job", "RayService", "Secret", "Secret"]  # tenants, trainer token
    else:  # the tenants Secret is created out of band, never overwritten
        assert kinds == ["Job", "PersistentVolumeClaim", "RayService"]  # + the weights Job
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "divreward"


def test_rayservice_matches_the_kuberay_crd_and_core_schemas(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = overlay
    rs = one(objs, "RayService")
    jsonschema.validate(rs, RAYSERVICE_SCHEMA)
    problems = check_k8s_object(rs["metadata"], "V1ObjectMeta", "metadata")
    problems += check_k8s_object(rs["spec"]["serveService"], "V1Service", "serveService")
    cluster = rs["spec"]["rayClusterConfig"]
    problems += check_k8s_object(
        cluster["headGroupSpec"]["template"], "V1PodTemplateSpec", "headGroupSpec.template"
    )
    for g in cluster["workerGroupSpecs"]:
        problems += check_k8s_object(g["template"], "V1PodTemplateSpec", g["groupName"])
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert not problems, "\n".join(problems)
    assert cluster["rayVersion"] == "2.60.0"


def test_a_misspelt_field_is_caught() -> None:
    """The check is not vacuous: KubeRay's API server would prune these silently."""
    rs = one(render(K8S / "overlays" / "dev"), "RayService")
    bad = json.loads(json.dumps(rs))
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(bad, RAYSERVICE_SCHEMA)
    template = bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["volumeMount"] = []
    problems = check_k8s_object(template, "V1PodTemplateSpec", "head")
    assert any("volumeMount: unknown field of V1Container" in p for p in problems), problems


def test_serve_config_is_strictly_valid_and_equals_the_config_file(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objs = overlay
    config = yaml.safe_load(one(objs, "RayService")["spec"]["serveConfigV2"])
    schema = validate_config(config)  # Serve's ServeDeploySchema, every key checked
    assert {a.name for a in schema.applications} == {"reward", "diversity"}
    assert schema.grpc_options.port == 9000
    assert schema.http_options.host == "0.0.0.0"
    for app in config["applications"]:  # 0.0.0.0 requires bearer tokens
        assert app["args"]["auth"] == {"enabled": True, "tokens_env": "DIVREWARD_API_TOKENS"}
    assert config == yaml.safe_load((ROOT / "deploy" / OVERLAYS[name]).read_text())


def test_every_deployment_lands_on_exactly_one_pool_that_can_hold_it(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """Each model asks for a custom resource that exactly one group advertises, the
    ingresses and the assembler ask for the head's, and GPU fractions fit the pool."""
    name, objs = overlay
    rs = one(objs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]} | {
        g["groupName"]: g for g in cluster["workerGroupSpecs"]
    }
    owners: dict[str, list[str]] = {}
    for gname, g in groups.items():
        for res in _advertised(g["rayStartParams"]):
            owners.setdefault(res, []).append(gname)
    assert owners.keys() == {"divreward_head", "divreward_scorer", "divreward_diversity"}
    assert all(len(v) == 1 for v in owners.values()), owners
    assert owners["divreward_head"] == ["head"]
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    models = []
    for app in config["applications"]:
        models += list(app["args"].get("scorers", {}).values())
        if "embedder" in app["args"]:
            models.append(app["args"]["embedder"])
        for dep in app.get("deployments", []):  # ingresses and assembler: the head
            assert dep["ray_actor_options"]["resources"] == {"divreward_head": 0.01}, dep
    pinned = {d["name"] for a in config["applications"] for d in a.get("deployments", [])}
    assert pinned == {"RewardIngress", "DiversityIngress", "GroupAssembler"}
    for m in models:
        (res,) = m["resources"]
        (gname,) = owners[res]
        limits = _pods(rs)[gname]["containers"][0]["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert m.get("num_gpus", 0) <= gpus, (m, gname)
        if name == "prod":
            assert m["num_gpus"] > 0 and gpus >= 1


def test_tenants_come_from_the_secret_and_weights_from_the_claim(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, objs = overlay
    rs = one(objs, "RayService")
    for group, pod in _pods(rs).items():
        (c,) = pod["containers"]
        env = {e["name"]: e for e in c["env"]}
        # the tenants file: mounted read-only from the Secret, named by the variable
        assert env["DIVREWARD_TENANTS_FILE"]["value"] == TENANTS_FILE, group
        assert "DIVREWARD_API_TOKENS" not in env
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        tenants = mounts[str(Path(TENANTS_FILE).parent)]
        assert tenants["readOnly"] is True
        (vol,) = [v for v in pod["volumes"] if v["name"] == tenants["name"]]
        assert vol["secret"] == {"secretName": TENANTS_SECRET, "defaultMode": 0o400}
        assert "/dev/shm" in mounts  # Ray's object store
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if name == "prod":
            assert mounts["/weights"]["readOnly"] is True
            assert env["DIVREWARD_WEIGHTS_DIR"]["value"] == "/weights"
            assert [v["persistentVolumeClaim"] for v in claims] == [
                {"claimName": "divreward-weights", "readOnly": True}
            ]
        else:
            assert not claims
    if name == "dev":
        secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
        assert set(secrets) == {TENANTS_SECRET, TRAINER_TOKEN["name"]}
        for secret in secrets.values():
            assert not check_k8s_object(secret, "V1Secret", "secret")
        # the server's tenants file parses, and the trainer's token is one of its tenants
        from divreward.services.common.tenants import find_tenant, load_tenants_file

        path = tmp_path / "tenants.yaml"
        path.write_text(secrets[TENANTS_SECRET]["stringData"]["tenants.yaml"])
        token = secrets[TRAINER_TOKEN["name"]]["stringData"][TRAINER_TOKEN["key"]]
        tenant = find_tenant(load_tenants_file(path), token)
        assert tenant is not None and tenant.name == "dev-trainer"
    else:
        pvc = one(objs, "PersistentVolumeClaim")
        assert not check_k8s_object(pvc, "V1PersistentVolumeClaim", "pvc")
        assert pvc["metadata"]["name"] == "divreward-weights"
        # written by the Job, read by every node's pods
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_weights_job_fills_the_claim_before_the_workers_mount_it_read_only() -> None:
    objs = render(K8S / "overlays" / "prod")
    (job,) = [o for o in objs if o["kind"] == "Job"]
    assert job["metadata"]["name"] == "divreward-weights"
    assert not check_k8s_object(job, "V1Job", "job")
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == [
        "divreward",
        "weights",
        "pull",
        "--serve-config",
        "/opt/divreward/deploy/serve-cluster-gpu.yaml",
        "--weights-dir",
        "/weights",
    ]
    # the serve config it pulls for is the one the RayService deploys
    rs = one(objs, "RayService")
    assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == yaml.safe_load(
        (ROOT / "deploy" / "serve-cluster-gpu.yaml").read_text()
    )
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == HF_SECRET
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert not mounts["/weights"].get("readOnly")  # the only writer
    claims = [v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "divreward-weights"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    for group, pod in _pods(rs).items():
        if group == "head":
            continue
        (init,) = pod["initContainers"]  # the workers start once the claim holds the weights
        script = " ".join(init["command"])
        assert "divreward weights check --serve-config" in script
        assert "/opt/divreward/deploy/serve-cluster-gpu.yaml --weights-dir /weights" in script
        assert init["volumeMounts"] == [
            {"name": "weights", "mountPath": "/weights", "readOnly": True}
        ]
        (worker,) = pod["containers"]
        assert {m["mountPath"]: m for m in worker["volumeMounts"]}["/weights"]["readOnly"]


def test_ports_probes_and_pools(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = overlay
    rs = one(objs, "RayService")
    ports = {p["name"]: p["port"] for p in rs["spec"]["serveService"]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 9000}
    pods = _pods(rs)
    head_ports = {p["containerPort"] for p in pods["head"]["containers"][0]["ports"]}
    assert {8000, 9000, 6379, 8265} <= head_ports
    # KubeRay deploys serveConfigV2 only once the head is Ready: no /readyz probe there.
    assert "readinessProbe" not in pods["head"]["containers"][0]
    for group, pod in pods.items():
        if group == "head":
            continue
        probe = pod["containers"][0]["readinessProbe"]["exec"]["command"]
        assert "/opt/divreward/docker/wait_ready.py" in probe[-1]
        assert '"http://$FQ_RAY_IP:8000"' in probe[-1]  # the head, through KubeRay's env
    cluster = rs["spec"]["rayClusterConfig"]
    if name == "prod":
        assert cluster["enableInTreeAutoscaling"] is True
        assert rs["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
        for g in cluster["workerGroupSpecs"]:
            spec = g["template"]["spec"]
            assert spec["nodeSelector"]["divreward.io/pool"] == "gpu"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                spec["tolerations"]
            )
            assert g["maxReplicas"] > g["minReplicas"] >= 1
        assert {g["groupName"] for g in cluster["workerGroupSpecs"]} == {"scorers", "diversity"}
    else:
        (g,) = cluster["workerGroupSpecs"]  # dev: one CPU worker for every model
        assert g["replicas"] == 1
        assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]


def _check_trainer_job(job: dict[str, Any], preset: str) -> None:
    assert not check_k8s_object(job, "V1Job", "job")
    spec = job["spec"]["template"]["spec"]
    init, *pull = spec["initContainers"]
    if preset.startswith("tiny"):
        assert not pull  # nothing to fetch
    else:  # the policy's weights, pulled with the token from the Secret
        (pull_policy,) = pull
        assert f"divreward weights pull --preset {preset}" in pull_policy["command"][-1]
        env = {e["name"]: e for e in pull_policy["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == HF_SECRET
    assert init["command"][1:3] == [
        "/opt/divreward/docker/wait_ready.py",
        "http://divreward-serve:8000",
    ]
    (c,) = spec["containers"]
    cmd = c["command"]
    assert cmd[:4] == ["divreward", "train", "--preset", preset]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "reward_backend=service" in sets
    assert "reward_url=grpc://divreward-serve:9000" in sets  # the serve Service's gRPC port
    assert (ROOT / "trainer" / "presets" / f"{preset}.yaml").is_file()
    env = {e["name"]: e for e in c["env"]}
    # one token per trainer, from its own Secret (never the server's tenants file)
    assert env["DIVREWARD_API_TOKEN"]["valueFrom"]["secretKeyRef"] == TRAINER_TOKEN
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_trainer_job() -> None:
    _check_trainer_job(one(render(K8S / "trainer"), "Job"), "diversegrpo-sd35-pickscore")
    _check_trainer_job(one(render(K8S / "overlays" / "dev"), "Job"), "tiny-cpu")


def test_network_policies_open_the_api_ports_to_trainers_only(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """Ingress to the Ray pods: each other on any port; 8000/9000 from the trainers'
    namespaces and trainer pods; 8080 from Prometheus; the head's dashboard and Jobs API
    (8265) from the KubeRay operator only. Nothing else, and no Service exposes 8265."""
    name, objs = overlay
    pols = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    assert set(pols) == {"divreward-ray-nodes", "divreward-ray-head-operator"}
    ray = {"ray.io/is-ray-node": "yes"}
    opened: dict[int, list[Any]] = {}
    for pol in pols.values():
        assert not check_k8s_object(pol, "V1NetworkPolicy", "networkpolicy")
        spec = pol["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        # KubeRay's labels only (commonLabels must not leak into the selectors)
        assert spec["podSelector"]["matchLabels"].items() >= ray.items()
        assert set(spec["podSelector"]["matchLabels"]) <= {*ray, "ray.io/node-type"}
        for rule in spec["ingress"]:
            if "ports" not in rule:  # all ports: the cluster's own pods only
                assert rule["from"] == [{"podSelector": {"matchLabels": ray}}]
                continue
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                opened.setdefault(port["port"], []).extend(rule["from"])
    trainers = [
        {"namespaceSelector": {"matchLabels": {"divreward.io/trainers": "true"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "trainer"}}},
    ]
    operator = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}}
    ]
    prometheus = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    as_set = {port: sorted(map(json.dumps, sources)) for port, sources in opened.items()}
    assert as_set == {
        port: sorted(map(json.dumps, sources))
        for port, sources in {
            8000: trainers + operator,
            9000: trainers,
            8080: prometheus,
            8265: operator,
        }.items()
    }
    head = pols["divreward-ray-head-operator"]["spec"]["podSelector"]["matchLabels"]
    assert head["ray.io/node-type"] == "head"  # 8265 is opened on the head only
    rs = one(objs, "RayService")
    assert not rs["spec"].get("rayClusterConfig", {}).get("headGroupSpec", {}).get("enableIngress")
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert 8265 not in [p["port"] for p in svc["spec"]["ports"]]
    if name == "dev":  # the trainer Job's pods carry the label the policy opens 8000 to
        job = one(objs, "Job")
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
            "trainer"
        )


def test_the_pod_monitor_scrapes_rays_metrics_export_on_every_ray_pod() -> None:
    """deploy/k8s/monitoring/: every Ray pod (head and workers, KubeRay's label) on the
    container port KubeRay names ``metrics`` (8080, the metrics agent), the port the
    NetworkPolicy opens to the ``monitoring`` namespace (docs/operations.md)."""
    (pm,) = render(K8S / "monitoring")
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert pm["spec"]["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    (nodes,) = [
        o
        for o in render(K8S / "network")
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "divreward-ray-nodes"
    ]
    assert nodes["spec"]["podSelector"] == pm["spec"]["selector"]
    scrape = [
        r
        for r in nodes["spec"]["ingress"]
        if {"protocol": "TCP", "port": 8080} in r.get("ports", [])
    ]
    assert scrape and scrape[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
