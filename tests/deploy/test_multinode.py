"""The reward service on a three-node Ray cluster, under load, while nodes die.

The cluster is made by Ray's own ``ray start`` (tests/deploy/raycluster.py), three nodes
on this machine with the custom resources of deploy/k8s/: a head (``divreward_head``:
Serve's controller and proxy, both ingresses, the group assembler), a "scorers" node
(``divreward_scorer``: PickScore x2 and CLIPScore) and a "diversity" node
(``divreward_diversity``: the DreamSim embedder). deploy/serve-cluster-tiny.yaml is
deployed with Ray's ``serve deploy`` through the head's dashboard, the way KubeRay
deploys a RayService's serveConfigV2; only its ports and tiny-model directory are changed
here.

Load comes from outside, through real clients (``divreward.client.RewardClient``):
``N_TRAINERS`` concurrent trainers, half over HTTP, half over gRPC streams (every
``submit`` of a gRPC client shares one bidirectional stream), mixed methods (DiverseGRPO
and DRIFT by group). The issue's 16 trainers x 50 groups (800) is scaled to
16 x ``GROUPS_PER_PHASE`` per phase, three phases (fault-free, scorer replica killed,
diversity node killed and replaced), so that the test stays within a few minutes on two
shared cores; the constants below set it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from helpers import prom_samples
from raycluster import LocalCluster, free_port, group_processes

from divreward.client import Group, RewardClient
from divreward.client.errors import RewardServiceError, ServiceUnavailableError
from divreward.client.retry import NO_RETRY, RetryPolicy
from divreward.core import (
    AdvantageConfig,
    DiverseGRPOConfig,
    DRIFTConfig,
    diversegrpo_rewards,
    drift_rewards,
)
from divreward.images import encode_image

pytestmark = [pytest.mark.slow, pytest.mark.serve, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "serve-cluster-tiny.yaml"

N_TRAINERS = 16  # as in the issue
GROUPS_PER_PHASE = 8  # per trainer and phase (the 50 scaled down, see above)
GROUP_SIZES = (4, 6)
IMAGE_SIDE = 48
METHODS = ("diversegrpo", "drift")
WEIGHTS = {"pickscore": 1.0, "clipscore": 0.5}  # the config's scorer weights
TOL = {"rtol": 1e-4, "atol": 1e-4}  # batch composition moves float32 results slightly
#: The config listens on 0.0.0.0 with bearer-token auth (tokens from the head's env).
TOKEN = "multinode-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}

#: Where each deployment must run: node role -> the custom resource that node advertises.
ROLE_RESOURCE = {
    "head": "divreward_head",
    "scorers": "divreward_scorer",
    "diversity": "divreward_diversity",
}
PLACEMENT = {
    "ServeController": "head",
    "ProxyActor": "head",
    "ServeReplica:reward:RewardIngress": "head",
    "ServeReplica:reward:GroupAssembler": "head",
    "ServeReplica:diversity:DiversityIngress": "head",
    "ServeReplica:reward:scorer-pickscore": "scorers",
    "ServeReplica:reward:scorer-clipscore": "scorers",
    "ServeReplica:diversity:embedder": "diversity",
}


# ------------------------------------------------------------------------ the cluster
@dataclass
class Deployed:
    cluster: LocalCluster
    base_url: str
    grpc_url: str
    workdir: Path


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=30)
            if r.status_code == 200:
                return
            last = r.text[:500]
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1.0)
    raise TimeoutError(f"/readyz not 200 after {timeout_s}s: {last}")


@pytest.fixture(scope="module")
def deployed(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    from fixtures_serve import mark_built

    names = ["pickscore", "clipscore", "dreamsim"]
    for name in names:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, names)
    workdir = tmp_path_factory.mktemp("multinode")
    cluster = LocalCluster(workdir, env={"DIVREWARD_API_TOKENS": TOKEN})
    try:
        cluster.start_head({ROLE_RESOURCE["head"]: 1000}, num_cpus=2)
        cluster.add_worker("scorers", {ROLE_RESOURCE["scorers"]: 1000}, num_cpus=2)
        cluster.add_worker("diversity", {ROLE_RESOURCE["diversity"]: 1000}, num_cpus=1)
        config = yaml.safe_load(CONFIG.read_text())
        http_port, grpc_port = free_port(), free_port()
        config["http_options"]["port"] = http_port
        config["grpc_options"]["port"] = grpc_port
        for app in config["applications"]:
            app["args"]["tiny_models_dir"] = str(tiny_zoo.root)
        path = workdir / "serve-config.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = cluster.serve("deploy", str(path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        base = f"http://127.0.0.1:{http_port}"
        try:
            _wait_ready(base, timeout_s=300)
        except TimeoutError:
            status = cluster.serve("status")
            raise AssertionError(f"not ready:\n{status.stdout}\n{status.stderr}") from None
        yield Deployed(cluster, base, f"grpc://127.0.0.1:{grpc_port}", workdir)
    finally:
        # SIGKILL every node's process group (a graceful drain takes ~45 s here and
        # proves nothing more); nothing of the cluster may be left behind.
        for node in reversed(cluster.nodes):
            node.kill()
        left = [p.pid for n in cluster.nodes for p in group_processes(n.pgid)]
        assert not left, f"processes left behind: {left}"


# ------------------------------------------------------------------------ state
def _node_roles(cluster: LocalCluster) -> dict[str, str]:
    roles = {}
    for n in cluster.alive_nodes():
        if n["state"] != "ALIVE":
            continue
        for role, res in ROLE_RESOURCE.items():
            if res in n["resources_total"]:
                roles[n["node_id"]] = role
    return roles


def _actors(cluster: LocalCluster) -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(
        address=cluster.dashboard,
        filters=[("state", "=", "ALIVE")],
        detail=True,
        limit=1000,
        raise_on_missing_output=False,
    )


def test_every_replica_runs_on_the_node_its_resource_names(deployed: Deployed) -> None:
    roles = _node_roles(deployed.cluster)
    assert sorted(roles.values()) == ["diversity", "head", "scorers"]
    where: dict[str, list[str]] = {}
    for a in _actors(deployed.cluster):
        if a.class_name in PLACEMENT:
            where.setdefault(a.class_name, []).append(roles.get(a.node_id, a.node_id))
    assert set(where) == set(PLACEMENT), where
    for cls, nodes in where.items():
        assert set(nodes) == {PLACEMENT[cls]}, (cls, nodes)
    assert len(where["ServeReplica:reward:scorer-pickscore"]) == 2


# ------------------------------------------------------------------------ load
def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    grad = np.linspace(0, 1, IMAGE_SIDE)[None, None, :, None] * rng.integers(
        -128, 128, size=(n, 1, 1, 3)
    )
    noise = rng.integers(-30, 30, size=(n, IMAGE_SIDE, IMAGE_SIDE, 3))
    return np.clip(base + grad + noise, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Planned:
    key: str  # the same logical group in every phase
    trainer: int
    prompt: str
    images: np.ndarray
    method: str


def _plan() -> list[Planned]:
    out = []
    for t in range(N_TRAINERS):
        for k in range(GROUPS_PER_PHASE):
            n = GROUP_SIZES[(t + k) % len(GROUP_SIZES)]
            out.append(
                Planned(
                    key=f"t{t}-g{k}",
                    trainer=t,
                    prompt=f"trainer {t} prompt {k}",
                    images=_images(n, seed=100 * t + k),
                    method=METHODS[(t + k) % len(METHODS)],
                )
            )
    return out


@dataclass
class PhaseResult:
    answers: dict[str, Any] = field(default_factory=dict)  # key -> GroupSubmissionResult
    errors: dict[str, BaseException] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return len(self.answers) + len(self.errors)


def _run_phase(
    d: Deployed, phase: str, plan: list[Planned], retry: RetryPolicy, progress: PhaseResult
) -> PhaseResult:
    """Every trainer submits its groups at once (its own client, one gRPC stream for the
    gRPC ones) and collects the answers; ``progress`` fills in as they complete."""
    lock = threading.Lock()

    def trainer(t: int) -> None:
        url = d.base_url if t % 2 == 0 else d.grpc_url
        mine = [p for p in plan if p.trainer == t]
        with RewardClient(url, retry=retry, timeout_s=60.0, headers=AUTH) as client:
            futures = {
                client.submit(
                    Group(p.prompt, p.images, group_id=f"{phase}/{p.key}"),
                    diversity={"method": p.method},
                    return_embeddings=True,
                ): p
                for p in mine
            }
            for fut in concurrent.futures.as_completed(futures):
                p = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:
                    with lock:
                        progress.errors[p.key] = exc
                    continue
                with lock:
                    if p.key in progress.answers:
                        progress.duplicates.append(p.key)
                    progress.answers[p.key] = res

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(N_TRAINERS) as pool:
        list(pool.map(trainer, range(N_TRAINERS)))
    progress.seconds = time.monotonic() - t0
    return progress


def _in_background(fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return fut


# ------------------------------------------------------------------------ checks
def _reference(p: Planned, res: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and advantages from the core math on the service's own scores and
    embeddings (what the service must have computed, exactly)."""
    (assembled,) = res.groups
    g = assembled.result
    emb = np.asarray(g.diversity.embeddings, dtype=np.float64)
    total = np.zeros(len(p.images))
    for name, w in WEIGHTS.items():
        total += w * np.asarray(g.quality[name], dtype=np.float64)
    params = res.params.diversity.model_dump()
    cfg = {k: v for k, v in params.items() if k != "method"}
    adv = AdvantageConfig(eps=res.params.advantage.eps)
    if p.method == "diversegrpo":
        r = diversegrpo_rewards(total, emb, DiverseGRPOConfig(**cfg), adv)
        return r.rewards, r.advantages
    dr = drift_rewards(total, emb, DRIFTConfig(**cfg), adv)
    return dr.rewards, dr.advantages


def _check_answers(
    plan: list[Planned], phase: str, got: PhaseResult, ref: PhaseResult | None
) -> None:
    """Every group answered exactly once, with its own numbers: the core math on the
    served scores and embeddings, and the same scores as the fault-free run."""
    assert not got.duplicates, got.duplicates
    assert not got.errors, {
        k: f"{e!r} attempts={getattr(e, 'attempts', '?')}"[:400] for k, e in got.errors.items()
    }
    assert set(got.answers) == {p.key for p in plan}
    for p in plan:
        res = got.answers[p.key]
        assert res.error is None, (p.key, res.error)
        assert res.group_id == f"{phase}/{p.key}"
        assert len(res.rewards) == len(res.advantages) == len(p.images)
        assert res.params.diversity.method == p.method
        rewards, advantages = _reference(p, res)
        np.testing.assert_allclose(res.rewards, rewards, rtol=1e-12, atol=1e-12, err_msg=p.key)
        np.testing.assert_allclose(
            res.advantages, advantages, rtol=1e-12, atol=1e-12, err_msg=p.key
        )
        if ref is None:
            continue
        base = ref.answers[p.key]
        for name in WEIGHTS:
            np.testing.assert_allclose(
                res.quality[name], base.quality[name], **TOL, err_msg=f"{p.key} {name}"
            )
        np.testing.assert_allclose(
            res.groups[0].result.diversity.embeddings,
            base.groups[0].result.diversity.embeddings,
            **TOL,
            err_msg=p.key,
        )
        np.testing.assert_allclose(res.rewards, base.rewards, **TOL, err_msg=p.key)
        np.testing.assert_allclose(res.advantages, base.advantages, **TOL, err_msg=p.key)


def _counters(url: str) -> dict[tuple[str, str, str, str], float]:
    """``(counter, route, scorer, status class or error kind)`` -> value, from the
    reward ingress's /metrics (one ingress replica: every request of the test went
    through it)."""
    r = httpx.get(f"{url}/metrics", timeout=30, headers=AUTH)
    assert r.status_code == 200, r.text[:300]
    out: dict[tuple[str, str, str, str], float] = {}
    for name, labels, value in prom_samples(r.text):
        if name.startswith("divreward_") and name.endswith("_total"):
            key = (
                name,
                labels.get("route", ""),
                labels.get("scorer", ""),
                labels.get("status_class", labels.get("kind", "")),
            )
            out[key] = out.get(key, 0.0) + value  # summed over tenants
    return out


def _delta(
    after: dict[tuple[str, str, str, str], float], before: dict[tuple[str, str, str, str], float]
) -> dict[tuple[str, str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


GROUP_ROUTES = {"/v1/groups": "http", "grpc:RewardStream": "grpc"}


def _answered_once(delta: dict[tuple[str, str, str, str], float], transport: str) -> float:
    """Groups computed and answered with 200 over a transport: 200s minus the answers
    replayed from the request-id cache."""
    ok = _requests_by_status(delta).get(f"{transport}:2xx", 0.0)
    replays = sum(
        v
        for (metric, route, _, _), v in delta.items()
        if metric == "divreward_idempotent_replays_total" and GROUP_ROUTES.get(route) == transport
    )
    return ok - replays


def _requests_by_status(delta: dict[tuple[str, str, str, str], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (metric, route, _, status), v in delta.items():
        if metric == "divreward_requests_total" and route in GROUP_ROUTES:
            key = f"{GROUP_ROUTES[route]}:{status}"
            out[key] = out.get(key, 0) + v
    return out


# ------------------------------------------------------------------------ probes
@dataclass
class Probe:
    started: float
    ended: float
    outcome: str  # "200", "503+retry-after", "UNAVAILABLE", ... or an exception name
    ok: bool | None = None  # the answer's numbers were right (for 200s)


class Prober:
    """Background loops during a phase: /readyz, and raw requests with no retries over
    HTTP and gRPC whose every answer must be a success with the right numbers or a
    retryable refusal."""

    def __init__(
        self,
        d: Deployed,
        group: Planned,
        expected: Any,
        raw: bool = True,
        readyz_timeout_s: float = 5.0,
    ) -> None:
        self.d = d
        self.readyz_timeout_s = readyz_timeout_s
        self.group = group
        self.expected = expected
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.readyz: list[Probe] = []
        self.raw: list[Probe] = []
        self._threads = [threading.Thread(target=self._readyz, daemon=True)]
        if raw:
            self._threads += [
                threading.Thread(target=self._raw, args=(url,), daemon=True)
                for url in (d.base_url, d.grpc_url)
            ]

    def __enter__(self) -> Prober:
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _readyz(self) -> None:
        """A probe every 0.5 s, each on its own (a slow answer does not delay the next),
        with a budget like a Kubernetes probe's timeout (5 s): no answer in time is not
        ready."""

        def probe(c: httpx.Client) -> None:
            t0 = time.monotonic()
            try:
                outcome = str(c.get(f"{self.d.base_url}/readyz").status_code)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.readyz.append(Probe(t0, time.monotonic(), outcome))

        with (
            httpx.Client(timeout=self.readyz_timeout_s) as c,
            concurrent.futures.ThreadPoolExecutor(12) as pool,
        ):
            while not self.stop.is_set():
                pool.submit(probe, c)
                self.stop.wait(0.5)

    def _raw(self, url: str) -> None:
        if url.startswith("http"):
            self._raw_http(url)
        else:
            self._raw_grpc(url)

    def _record(self, t0: float, outcome: str, ok: bool | None) -> None:
        self.raw.append(Probe(t0, time.monotonic(), outcome, ok))

    def _right(self, rewards: Any, advantages: Any) -> bool:
        return bool(
            np.allclose(rewards, self.expected.rewards, **TOL)
            and np.allclose(advantages, self.expected.advantages, **TOL)
        )

    def _raw_http(self, url: str) -> None:
        """Plain POST /v1/rewards, no retries: the status and Retry-After as sent."""
        files = [encode_image(im, "PNG") for im in self.group.images]
        body = {
            "groups": [
                {
                    "prompt": self.group.prompt,
                    "images": [base64.b64encode(f).decode("ascii") for f in files],
                }
            ],
            "diversity": {"method": self.group.method},
        }
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/rewards", json=body)
                except httpx.HTTPError as exc:
                    self._record(t0, f"http:{type(exc).__name__}", None)
                    continue
                if r.status_code == 200:
                    (g,) = r.json()["groups"]
                    self._record(t0, "http:200", self._right(g["rewards"], g["advantages"]))
                else:
                    retry_after = "+retry-after" if r.headers.get("retry-after") else ""
                    self._record(t0, f"http:{r.status_code}{retry_after}", None)
                self.stop.wait(0.3)

    def _raw_grpc(self, url: str) -> None:
        """Unary gRPC Rewards through the client with retries off: the status code."""
        with RewardClient(url, retry=NO_RETRY, timeout_s=60.0, headers=AUTH) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                ok: bool | None = None
                try:
                    res = client.rewards(
                        [Group(self.group.prompt, self.group.images)],
                        diversity={"method": self.group.method},
                    )
                    outcome = "200"
                    ok = self._right(res.groups[0].rewards, res.groups[0].advantages)
                except ServiceUnavailableError as exc:
                    outcome = "UNAVAILABLE" if "UNAVAILABLE" in str(exc) else f"unreachable {exc}"
                except RewardServiceError as exc:
                    outcome = str(exc.status)
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"[:200]
                self._record(t0, f"grpc:{outcome}", ok)
                self.stop.wait(0.3)


# ------------------------------------------------------------------------ the test
def _wait_until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def test_load_and_faults(deployed: Deployed) -> None:
    d = deployed
    plan = _plan()
    n_http = sum(1 for p in plan if p.trainer % 2 == 0)
    n_images = sum(len(p.images) for p in plan)
    report: dict[str, Any] = {}

    # -- phase A: fault-free --------------------------------------------------------
    before = _counters(d.base_url)
    # /readyz's verdict under load: a budget longer than the server's own 30 s per
    # deployment, so every probe gets the server's answer, however busy this machine
    # (that a busy replica answers at once is tests/services/test_services_batch_limits).
    with Prober(d, plan[0], None, raw=False, readyz_timeout_s=60.0) as probe_a:
        a = _run_phase(d, "A", plan, RetryPolicy(), PhaseResult())
    _check_answers(plan, "A", a, None)
    delta = _delta(_counters(d.base_url), before)
    by_status = _requests_by_status(delta)
    # Prometheus adds up: one request per group, over each transport, all 200.
    assert by_status == {"http:2xx": n_http, "grpc:2xx": len(plan) - n_http}, by_status
    model_images: dict[str, float] = {}
    for (metric, _, scorer, _), v in delta.items():
        if metric == "divreward_images_total":  # by route: summed
            model_images[scorer] = model_images.get(scorer, 0.0) + v
    assert model_images.get("pickscore") == n_images, model_images
    assert model_images.get("clipscore") == n_images, model_images
    not_ready = [
        (round(p.started - probe_a.t0, 1), round(p.ended - p.started, 2), p.outcome)
        for p in probe_a.readyz
        if p.outcome != "200"
    ]
    assert probe_a.readyz and not not_ready, f"/readyz (start s, took s, outcome): {not_ready}"
    report["A"] = {
        "groups": len(plan),
        "seconds": round(a.seconds, 1),
        "readyz_max_s": round(max(p.ended - p.started for p in probe_a.readyz), 2),
    }
    print("multinode phase A:", report["A"], flush=True)

    # -- phase B: a scorer replica's process killed mid-run ------------------------
    roles = _node_roles(d.cluster)
    victims = [
        a_ for a_ in _actors(d.cluster) if a_.class_name == "ServeReplica:reward:scorer-pickscore"
    ]
    assert len(victims) == 2 and {roles[v.node_id] for v in victims} == {"scorers"}
    victim = victims[0]
    before = _counters(d.base_url)
    b_progress = PhaseResult()
    fut = _in_background(_run_phase, d, "B", plan, RetryPolicy(max_attempts=8), b_progress)
    _wait_until(lambda: b_progress.done >= len(plan) // 4, 300, "phase B made no progress")
    killed_at = b_progress.done
    os.kill(victim.pid, 9)
    b = fut.result(timeout=600)
    # Later phases still run when one fails: the report then says what each one saw.
    failures: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            failures.append(message[:3000])

    def audit(
        phase: str, got: PhaseResult, before: dict[tuple[str, str, str, str], float]
    ) -> dict[str, float]:
        """The phase's answers (as phase A's), and Prometheus still adding up: each group
        computed and answered once (the failed attempts are the non-200s)."""
        try:
            _check_answers(plan, phase, got, a)
        except AssertionError as exc:
            failures.append(f"phase {phase}: {exc}"[:3000])
        delta = _delta(_counters(d.base_url), before)
        by_status = _requests_by_status(delta)
        check(_answered_once(delta, "http") == n_http, f"phase {phase} counters: {by_status}")
        check(_answered_once(delta, "grpc") == len(plan) - n_http, f"phase {phase}: {by_status}")
        return by_status

    by_status = audit("B", b, before)
    retried = {k: v for k, v in by_status.items() if not k.endswith(":2xx")}
    report["B"] = {
        "killed_pid": victim.pid,
        "killed_after_groups": killed_at,
        "seconds": round(b.seconds, 1),
        "server_side_failed_attempts": retried,
        "groups_lost": {k: str(e)[:200] for k, e in b.errors.items()},
    }
    print("multinode phase B:", report["B"], flush=True)

    # Serve replaces the dead replica on the scorers node.
    def two_pickscores() -> bool:
        pids = [
            x.pid
            for x in _actors(d.cluster)
            if x.class_name == "ServeReplica:reward:scorer-pickscore"
        ]
        return len(pids) == 2 and victim.pid not in pids

    _wait_until(two_pickscores, 120, "the killed pickscore replica was not replaced")

    # -- phase C: the whole diversity node killed, then a replacement started -------
    (div_node,) = [n for n in d.cluster.nodes if n.name == "diversity"]
    before = _counters(d.base_url)
    patient = RetryPolicy(max_attempts=40, backoff_s=0.5, max_backoff_s=2.0)
    c_progress = PhaseResult()
    with Prober(d, plan[0], a.answers[plan[0].key]) as probe_c:
        time.sleep(1.0)
        fut = _in_background(_run_phase, d, "C", plan, patient, c_progress)
        _wait_until(lambda: c_progress.done >= len(plan) // 4, 300, "phase C made no progress")
        t_kill = time.monotonic()
        div_node.kill()
        # Stay without a diversity node long enough for the service to notice.
        time.sleep(8.0)
        t_replace = time.monotonic()
        d.cluster.add_worker("diversity", {ROLE_RESOURCE["diversity"]: 1000}, num_cpus=1)
        c = fut.result(timeout=600)
        _wait_ready(d.base_url, timeout_s=120)
        t_ready = time.monotonic()
        time.sleep(2.0)
    by_status = audit("C", c, before)
    report["C"] = {
        "seconds": round(c.seconds, 1),
        "recovered_after_s": round(t_ready - t_kill, 1),
        "server_side_attempts": by_status,
        "groups_lost": {k: str(e)[:200] for k, e in c.errors.items()},
    }
    # /readyz tells the truth: never 200 while no diversity node exists, not ready at
    # least once then, 200 again once recovered.
    readyz = [(round(p.started - t_kill, 1), p.outcome) for p in probe_c.readyz]
    outage = [p for p in probe_c.readyz if p.started > t_kill + 1.0 and p.ended < t_replace + 2.0]
    report["C"]["readyz_during_outage"] = sorted({p.outcome for p in outage})
    check(bool(outage), f"no /readyz probe during the outage: {readyz}")
    check(
        all(p.outcome != "200" for p in outage),
        f"/readyz said 200 with no diversity node: {readyz}",
    )
    check(any(p.outcome in ("503", "timeout") for p in outage), f"/readyz: {readyz}")
    after = [p.outcome for p in probe_c.readyz if p.started > t_ready]
    check(after[-1:] == ["200"], f"/readyz after recovery: {after}")
    # Requests in flight during the outage: a success with the right numbers, or a
    # retryable refusal (503/429 with Retry-After, or UNAVAILABLE); never a wrong answer.
    allowed = {"http:200", "grpc:200", "http:503+retry-after", "http:429+retry-after"}
    allowed |= {"grpc:UNAVAILABLE", "grpc:RESOURCE_EXHAUSTED"}
    outcomes = [(round(p.started - t_kill, 1), p.outcome) for p in probe_c.raw]
    report["C"]["raw_outcomes"] = {o: sum(1 for _, x in outcomes if x == o) for _, o in outcomes}
    check(
        all(p.ok for p in probe_c.raw if p.outcome.endswith(":200")),
        f"a wrong answer: {outcomes}",
    )
    check({o for _, o in outcomes} <= allowed, f"not retryable: {outcomes}")
    print("multinode report:", json.dumps(report, indent=1, default=str))
    assert not failures, "\n".join(failures)
