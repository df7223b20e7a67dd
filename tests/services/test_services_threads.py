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
