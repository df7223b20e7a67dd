"""CPU threads of a model replica follow the CPUs it is given, or the typed setting."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from divreward.services.config import ModelDeploymentArgs
from divreward.services.model_deployments import ScorerServer, replica_threads


@pytest.mark.parametrize(
    ("fields", "threads"),
    [
        ({"num_cpus": 0.25}, 1),  # a fraction of a CPU: one thread
        ({"num_cpus": 1}, 1),
        ({"num_cpus": 2}, 2),
        ({"num_cpus": 3.5}, 3),
        ({"num_cpus": 0}, 1),
        ({"num_cpus": 0.25, "torch_threads": 2}, 2),  # the user's choice wins
    ],
)
def test_replica_threads_follow_the_cpus(fields: dict[str, float], threads: int) -> None:
    assert replica_threads(ModelDeploymentArgs.model_validate(fields)) == threads


def test_torch_threads_is_checked() -> None:
    with pytest.raises(ValidationError, match="torch_threads"):
        ModelDeploymentArgs.model_validate({"torch_threads": 0})


def test_the_replica_sets_torch_threads_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def stop(*_a: object, **_k: object) -> None:
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop after the threads are set")

    monkeypatch.setattr("divreward.services.model_deployments.load_model", stop)
    before = torch.get_num_threads()
    try:
        args = ModelDeploymentArgs(num_cpus=0.25, torch_threads=3)
        with pytest.raises(RuntimeError, match="stop after"):
            ScorerServer.__init__(object.__new__(ScorerServer), "pickscore", args, "real")
        assert seen == [3]
    finally:
        torch.set_num_threads(before)


def test_local_ray_keeps_a_users_niceness_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from divreward.services import launch

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(launch.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv(launch.WORKER_NICENESS_ENV, raising=False)
    launch.init_local_ray(2, None)
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2
    import os

    assert os.environ[launch.WORKER_NICENESS_ENV] == "0"
    monkeypatch.setenv(launch.WORKER_NICENESS_ENV, "5")
    launch.init_local_ray(None, None)
    assert os.environ[launch.WORKER_NICENESS_ENV] == "5"


def test_a_niced_replica_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from divreward.services import model_deployments

    monkeypatch.setattr(os, "getpriority", lambda *_: 15)
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert model_deployments.warn_if_niced("scorer 'x'") == 15
    assert "niceness 15" in caplog.text and "RAY_worker_niceness=0" in caplog.text


@pytest.mark.serve
def test_serve_replicas_run_at_normal_priority(serve_app: object) -> None:
    """Workers of the local Ray instance (every Serve replica among them) run at
    niceness 0, not Ray's default 15."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray.get(niceness.remote(), timeout=60) == 0
