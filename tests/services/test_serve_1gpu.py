"""deploy/serve-1gpu.yaml: strictly valid, the paper's pair (PickScore + DreamSim) on one
GPU, and what ``divreward serve``'s fit check says about it on a one-GPU node (fits) and
on a CPU-only one (names the deployments and the GPU)."""

from __future__ import annotations

from pathlib import Path

from divreward.services.config import DiversityAppArgs, RewardAppArgs
from divreward.services.deploy_config import load_config
from divreward.services.launch import config_targets, fit_problems, resource_demands

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve-1gpu.yaml"


def test_the_one_gpu_config_fits_one_gpu_and_not_a_cpu() -> None:
    data = load_config(CONFIG)
    apps = {a["name"]: a["args"] for a in data["applications"]}
    reward = RewardAppArgs.model_validate(apps["reward"])
    diversity = DiversityAppArgs.model_validate(apps["diversity"])
    assert reward.default_quality() == {"pickscore": 1.0} and list(reward.scorers) == ["pickscore"]
    assert diversity.embedder.name == "dreamsim"
    assert diversity.embedder.options == {"dreamsim_type": "ensemble"}
    assert reward.profile == diversity.profile == "real"
    demands = resource_demands(config_targets(data))
    gpus = {f"{d.app}/{d.deployment}": d.per_replica.get("GPU", 0) * d.replicas for d in demands}
    assert gpus["reward/scorer-pickscore"] == gpus["diversity/embedder"] == 0.5
    assert sum(gpus.values()) == 1.0  # the whole card, shared by the two models
    one_gpu = {"CPU": 8.0, "GPU": 1.0, "memory": 32 * 2**30}
    assert fit_problems(demands, one_gpu, [one_gpu]) == []
    cpu_only = {"CPU": 8.0, "memory": 32 * 2**30}
    problems = fit_problems(demands, cpu_only, [cpu_only])
    assert len(problems) == 2 and all("asks for GPU 0.5 per replica" in p for p in problems)
    assert "deployment 'embedder' of application 'diversity'" in problems[0]
