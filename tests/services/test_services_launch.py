"""The one start-up path (services/launch.py) and a config file's overrides.

Without Ray: the merge of a ``deployments:`` entry and the app's ``runtime_env`` into a
deployment's options follows Serve's rules; an override naming a deployment the app lacks
stops ``divreward serve`` with exit 2 before Ray starts; services/ uses no private Serve
API. With the session's Ray instance: overrides of num_replicas, user_config and
ray_actor_options and the app's runtime_env env_vars reach the running replicas; an
unschedulable replica is a DeployError at the deadline; a ``serve.run`` that raises is
reported at once.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fixtures_serve import TEST_RESOURCE, TEST_RESOURCE_TOTAL
from helpers import prom_samples, prom_sum
from services_helpers import b64, make_group, png, quality_only_app

from divreward.services.common.deployments import Overrides, merge_options
from divreward.services.deploy_config import default_config

SERVICES = Path(__file__).resolve().parents[2] / "services"


# -- merging (no Ray) ---------------------------------------------------------------
CODE = {
    "name": "scorer-x",
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.25},
    "max_ongoing_requests": 8,
    "user_config": {"max_batch_images": 32, "batch_wait_timeout_s": 0.005},
}


def test_fields_given_replace_the_codes_and_the_rest_stays() -> None:
    out = merge_options(CODE, {"name": "scorer-x", "user_config": {"max_batch_images": 4}})
    assert out["user_config"] == {"max_batch_images": 4}  # the whole user_config
    assert {k: v for k, v in out.items() if k != "user_config"} == {
        k: v for k, v in CODE.items() if k != "user_config"
    }
    assert CODE["user_config"] == {"max_batch_images": 32, "batch_wait_timeout_s": 0.005}


def test_ray_actor_options_given_replace_the_whole_dict() -> None:
    out = merge_options(CODE, {"ray_actor_options": {"resources": {"head": 0.01}}})
    assert out["ray_actor_options"] == {"resources": {"head": 0.01}}  # num_cpus/gpus gone


def test_app_runtime_env_lies_under_the_deployments_own() -> None:
    app_env = {"env_vars": {"A": "app", "B": "app"}, "pip": ["x"], "working_dir": "s3://w"}
    own = {"runtime_env": {"env_vars": {"B": "own"}, "pip": ["y"]}, "num_cpus": 1}
    out = merge_options(CODE, {"ray_actor_options": own}, app_env)
    assert out["ray_actor_options"] == {
        "num_cpus": 1,
        "runtime_env": {
            "env_vars": {"A": "app", "B": "own"},
            "pip": ["y"],
            "working_dir": "s3://w",
        },
    }
    # A deployment without an override gets the app's runtime_env on the code's options.
    plain = merge_options(CODE, None, {"env_vars": {"A": "app"}})
    assert plain["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 0.25,
        "runtime_env": {"env_vars": {"A": "app"}},
    }
    assert merge_options(CODE, None, {}) == CODE


def test_num_replicas_and_autoscaling_are_one_choice() -> None:
    auto = {"min_replicas": 1, "max_replicas": 4}
    out = merge_options(CODE, {"num_replicas": "auto"})
    assert out["num_replicas"] == "auto" and "autoscaling_config" not in out
    out = merge_options(CODE, {"num_replicas": "auto", "autoscaling_config": auto})
    assert out["num_replicas"] == "auto" and out["autoscaling_config"] == auto
    code_auto = {
        **{k: v for k, v in CODE.items() if k != "num_replicas"},
        "autoscaling_config": auto,
    }
    out = merge_options(code_auto, {"num_replicas": "auto"})  # keeps the code's autoscaling
    assert out["num_replicas"] == "auto" and out["autoscaling_config"] == auto
    out = merge_options(code_auto, {"num_replicas": 3})  # a fixed count replaces autoscaling
    assert out["num_replicas"] == 3 and "autoscaling_config" not in out
    out = merge_options(CODE, {"autoscaling_config": auto})  # autoscaling alone
    assert out["autoscaling_config"] == auto and "num_replicas" not in out
    with pytest.raises(ValueError, match="exclude each other"):
        merge_options(CODE, {"num_replicas": 2, "autoscaling_config": auto})


@pytest.mark.parametrize(
    ("runtime_env", "named"),
    [
        ({"working_dir": "./code"}, "working_dir './code'"),
        ({"working_dir": "/abs/code"}, "working_dir '/abs/code'"),
        ({"py_modules": ["s3://bucket/ok.zip", "my_rewards"]}, "py_modules 'my_rewards'"),
    ],
)
def test_a_local_path_in_a_replicas_runtime_env_is_refused(
    runtime_env: dict[str, Any], named: str
) -> None:
    """Ray ships local code only for a job; a replica given a local working_dir never
    starts ("Expected URI but received path"), so it is refused before anything runs."""
    with pytest.raises(ValueError, match="local path") as err:
        merge_options(CODE, None, runtime_env)
    assert f"deployment 'scorer-x': runtime_env {named}" in str(err.value)
    own = {"ray_actor_options": {"runtime_env": runtime_env}}
    with pytest.raises(ValueError, match=re.escape(named)):
        merge_options(CODE, own)


def test_remote_uris_in_a_replicas_runtime_env_pass() -> None:
    env = {"working_dir": "https://example.com/code.zip", "py_modules": ["gs://b/m.zip"]}
    merged = merge_options(CODE, None, env)
    assert merged["ray_actor_options"]["runtime_env"] == env


def test_a_field_deployments_do_not_take_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'scorer-x': \['rolling_update_percentage'\]"):
        merge_options(CODE, {"rolling_update_percentage": 50})


def _config_with(app: str, deployments: list[dict[str, Any]]) -> dict[str, Any]:
    config = default_config("real")
    for entry in config["applications"]:
        if entry["name"] == app:
            entry["deployments"] = deployments
    return config


def test_an_override_of_a_missing_deployment_names_the_available_ones(tmp_path: Path) -> None:
    from divreward.services.launch import config_targets

    config = _config_with("reward", [{"name": "scorer-pickscor", "num_replicas": 2}])
    with pytest.raises(ValueError) as err:
        config_targets(config)
    assert str(err.value) == (
        "application 'reward': deployments: no deployment named 'scorer-pickscor' in this "
        "application (its deployments: RewardIngress, scorer-pickscore, GroupAssembler)"
    )
    with pytest.raises(
        ValueError, match=r"'diversity'.*its deployments: DiversityIngress, embedder"
    ):
        config_targets(_config_with("diversity", [{"name": "Embedder"}]))
    with pytest.raises(ValueError, match="'RewardIngress' is listed twice"):
        Overrides.from_app_config({"deployments": [{"name": "RewardIngress"}] * 2})


def test_cli_stops_with_exit_2_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from divreward.services import launch
    from divreward.services.cli import register, run_serve

    started: list[str] = []
    # Another test may have started Ray in this process already: record any start instead
    # of asking ray.is_initialized().
    monkeypatch.setattr(launch, "init_local_ray", lambda *a, **k: started.append("local"))
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append("init"))
    monkeypatch.setattr(launch, "shutdown", lambda: None)

    local_code = _config_with("reward", [])
    for app in local_code["applications"]:
        if app["name"] == "reward":
            app["runtime_env"] = {"working_dir": "."}
    cases = [
        (
            _config_with("reward", [{"name": "nope", "num_replicas": 2}]),
            "divreward serve: application 'reward': deployments: no deployment named 'nope'",
        ),
        (  # Serve's config schema refuses it (merge_options would too, for builders' callers)
            local_code,
            "applications.1.runtime_env: Value error, runtime_envs in the Serve config "
            "support only remote URIs in working_dir and py_modules",
        ),
    ]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for config, message in cases:
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        args = parser.parse_args(["serve", "--config", str(path), "--port", "1"])
        assert run_serve(args) == 2
        assert message in capsys.readouterr().err
    assert started == []


def test_a_failed_serve_run_reports_the_deployments_messages_read_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve.run's own text names only the deployment ("Failed to update the deployments
    [...]"); the constructor's exception is in the deployment's message. A status read
    before serve.run raised may still say DEPLOYING, so the report reads it again."""
    from types import SimpleNamespace

    from divreward.services import launch

    def status(app_status: str, message: str) -> SimpleNamespace:
        dep = SimpleNamespace(status=app_status.replace("DEPLOY_", ""), message=message)
        app = SimpleNamespace(status=app_status, message="", deployments={"Ingress": dep})
        return SimpleNamespace(applications={"app-x": app})

    answers = iter(
        [
            status("DEPLOYING", ""),  # the poll's read, before serve.run raised
            status("DEPLOY_FAILED", "ValueError: no application named 'elsewhere'"),
        ]
    )
    monkeypatch.setattr(launch.serve, "status", lambda: next(answers))
    failed = "Deploying application app-x failed: Failed to update the deployments ['Ingress']."
    run = SimpleNamespace(target=launch.Target(None, "app-x", "/x"), error=RuntimeError(failed))
    with pytest.raises(launch.DeployError) as err:
        launch._poll([run], time.monotonic() + 60, 60, 0.01, until_registered=False)  # type: ignore[list-item]
    text = str(err.value)
    assert "'app-x': serve.run raised RuntimeError: Deploying application app-x failed" in text
    assert "deployment 'Ingress': FAILED ValueError: no application named 'elsewhere'" in text
    assert err.value.__cause__ is run.error


def test_services_use_no_private_serve_api() -> None:
    private = re.compile(r"_get_global_client|run_many|RunTarget|serve\._private|serve\.context")
    hits = [
        f"{path.relative_to(SERVICES.parent)}:{i}: {line.strip()}"
        for path in sorted(SERVICES.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not hits, "private Serve API in services/:\n" + "\n".join(hits)


# -- on the session's Ray instance ----------------------------------------------------
APP, PREFIX, TOKENS_ENV = "launch_overrides", "/launch-overrides", "DIVREWARD_LAUNCH_TEST_TOKENS"
INGRESS_SLOTS = 1.5


@pytest.fixture(scope="module")
def overridden_app(serve_app: Any) -> Iterator[str]:
    """A quality-only reward app deployed from a config with overrides; its URL."""
    from ray import serve

    from divreward.services import launch

    app = quality_only_app(APP, PREFIX, serve_app.tiny_models_dir)
    app["args"]["auth"] = {"enabled": True, "tokens_env": TOKENS_ENV}
    app |= {
        # The token exists only in the replicas' environment, through the app's runtime_env.
        "runtime_env": {"env_vars": {TOKENS_ENV: "tok-from-runtime-env"}},
        "deployments": [
            {"name": "scorer-pickscore", "num_replicas": 2, "user_config": {"max_batch_images": 3}},
            {
                "name": "RewardIngress",
                "ray_actor_options": {"num_cpus": 0.1, "resources": {TEST_RESOURCE: INGRESS_SLOTS}},
            },
        ],
    }
    targets = launch.config_targets({"applications": [app]})
    launch.deploy(targets, timeout_s=240)
    try:
        yield serve_app.base_url + PREFIX
    finally:
        serve.delete(APP)


@pytest.mark.serve
@pytest.mark.timeout(400)
def test_overrides_and_runtime_env_reach_the_running_deployments(
    overridden_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray import serve

    monkeypatch.delenv(TOKENS_ENV, raising=False)
    deployments = serve.status().applications[APP].deployments
    assert deployments["scorer-pickscore"].replica_states == {"RUNNING": 2}  # num_replicas
    assert deployments["RewardIngress"].replica_states == {"RUNNING": 1}
    # ray_actor_options: the ingress replica holds the custom resource it was given.
    deadline = time.monotonic() + 30
    while ray.available_resources().get(TEST_RESOURCE) != TEST_RESOURCE_TOTAL - INGRESS_SLOTS:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)

    # runtime_env env_vars: the ingress replica knows the token; this process does not.
    body = {"prompts": ["a fox"] * 8, "images": b64(png(make_group(8, seed=3)))}
    assert httpx.post(f"{overridden_app}/v1/score", json=body, timeout=60).status_code == 401
    auth = {"authorization": "Bearer tok-from-runtime-env"}
    r = httpx.post(f"{overridden_app}/v1/score", json=body, headers=auth, timeout=120)
    assert r.status_code == 200, r.text
    # user_config: 8 images in forward passes of at most 3 -> 3 passes, 8 images.
    metrics = prom_samples(httpx.get(f"{overridden_app}/metrics", headers=auth, timeout=30).text)
    assert prom_sum(metrics, "divreward_batch_images_count", scorer="pickscore") == 3, metrics
    assert prom_sum(metrics, "divreward_batch_images_sum", scorer="pickscore") == 8


@pytest.mark.serve
@pytest.mark.timeout(120)
def test_an_unschedulable_replica_is_a_deploy_error_at_the_deadline(serve_app: Any) -> None:
    """Also over a running application of the same name: its RUNNING status must not be
    taken for the new deploy's."""
    from ray import serve

    from divreward.services import launch

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0})
    class Echo:
        def __call__(self) -> str:
            return "echo"

    @serve.deployment(name="Nowhere", ray_actor_options={"resources": {"no_such_node": 1}})
    class Nowhere:
        def __call__(self) -> str:
            return "never"

    name, prefix = "launch_nowhere", "/launch-nowhere"
    try:
        launch.deploy([(Echo.bind(), name, prefix)], timeout_s=60)
        t0 = time.monotonic()
        with pytest.raises(launch.DeployError) as err:
            launch.deploy([(Nowhere.bind(), name, prefix)], timeout_s=5)
        elapsed = time.monotonic() - t0
        assert 5 <= elapsed < 30, elapsed
        assert "not RUNNING after 5s" in str(err.value)
        assert f"application {name!r}" in str(err.value)
        assert "deployment 'Nowhere'" in str(err.value)
    finally:
        serve.delete(name)


@pytest.mark.serve
@pytest.mark.timeout(120)
def test_an_error_raised_by_serve_run_is_reported_at_once(serve_app: Any) -> None:
    from ray import serve

    from divreward.services import launch

    @serve.deployment
    class Echo:
        def __call__(self) -> str:
            return "echo"

    t0 = time.monotonic()
    with pytest.raises(launch.DeployError, match=r"'launch_bad_prefix': serve\.run raised") as err:
        launch.deploy([(Echo.bind(), "launch_bad_prefix", "no-leading-slash")], timeout_s=120)
    assert time.monotonic() - t0 < 20
    assert "no-leading-slash" in str(err.value)


def test_readiness_checks_nothing_outside_serve() -> None:
    import asyncio
    from types import SimpleNamespace

    from divreward.services.common.deployments import unavailable_deployments

    assert asyncio.run(unavailable_deployments(SimpleNamespace())) == {}


@pytest.mark.serve
@pytest.mark.timeout(300)
def test_readyz_answers_503_at_once_naming_a_deployment_without_a_replica(
    serve_app: Any,
) -> None:
    from ray import serve

    from divreward.services import launch

    name, prefix = "launch_readyz", "/launch-readyz"
    app = {
        **quality_only_app(name, prefix, serve_app.tiny_models_dir),
        "deployments": [
            {
                "name": "scorer-pickscore",
                "ray_actor_options": {"num_cpus": 0.1, "resources": {"no_such_node": 1}},
            }
        ],
    }
    try:
        with pytest.raises(launch.DeployError, match="scorer-pickscore"):
            launch.deploy(launch.config_targets({"applications": [app]}), timeout_s=5)
        url = f"{serve_app.base_url}{prefix}/readyz"
        deadline = time.monotonic() + 120
        while (r := httpx.get(url, timeout=60)).status_code == 404:  # ingress not routed yet
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        t0 = time.monotonic()
        r = httpx.get(url, timeout=60)
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert elapsed < 10, elapsed  # the probe of a replica-less deployment waits 30 s
        body = r.json()
        assert body["status"] == "not_ready"
        assert list(body["deployments"]) == [f"{name}/scorer-pickscore"]
        assert body["deployments"][f"{name}/scorer-pickscore"].startswith("no running replica")
    finally:
        serve.delete(name)
