"""The Serve config files in deploy/, the builders' typed args and the CLI's config
preparation (no Ray: all of it runs before anything starts)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from divreward.services.cli import prepare_config
from divreward.services.config import (
    DiversityAppArgs,
    RewardAppArgs,
    ScorerArgs,
)
from divreward.services.deploy_config import (
    DIVERSITY_IMPORT,
    REWARD_IMPORT,
    ConfigError,
    builder_args_model,
    default_config,
    load_config,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["deploy/serve-tiny.yaml", "deploy/serve-gpu.yaml"]


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_files_validate_strictly(name: str) -> None:
    data = load_config(ROOT / name)
    apps = {a["name"]: a for a in data["applications"]}
    assert set(apps) == {"diversity", "reward"}
    assert apps["reward"]["route_prefix"] == "/"
    assert apps["diversity"]["route_prefix"] == "/diversity"
    reward = RewardAppArgs.model_validate(apps["reward"]["args"])
    diversity = DiversityAppArgs.model_validate(apps["diversity"]["args"])
    assert reward.diversity_app == "diversity"
    assert reward.default_quality()["pickscore"] == 1.0
    assert diversity.embedder.name == "dreamsim"
    if "tiny" in name:
        assert reward.profile == diversity.profile == "tiny"
        assert data["http_options"]["host"] == "127.0.0.1"
        assert all(s.num_gpus == 0 for s in reward.scorers.values())
    else:
        assert reward.profile == diversity.profile == "real"
        # A non-loopback host: auth on in both apps, tokens from the environment.
        assert data["http_options"]["host"] == "0.0.0.0"
        assert reward.auth.enabled and diversity.auth.enabled
        assert reward.scorers["pickscore"].num_gpus > 0
        assert reward.default_quality() == {"pickscore": 1.0}
        assert set(reward.scorers) >= {"pickscore", "hpsv3", "hpsv21"}


MISSPELLINGS = [
    # (where to put the misspelt key, expected path in the message)
    (lambda c: c.__setitem__("http_option", {}), "http_option: unknown key"),
    (lambda c: c["http_options"].__setitem__("prot", 1), "http_options.prot: unknown key"),
    (lambda c: c["applications"][0].__setitem__("route_prefx", "/x"), "route_prefx: unknown key"),
    (
        lambda c: c["applications"][0].__setitem__(
            "deployments", [{"name": "embedder", "num_replica": 2}]
        ),
        "applications[0].deployments[0].num_replica: unknown key",
    ),
    (
        lambda c: c["applications"][0].__setitem__(
            "deployments", [{"name": "embedder", "ray_actor_options": {"num_gpu": 1}}]
        ),
        "ray_actor_options.num_gpu: unknown key",
    ),
    (
        lambda c: c["applications"][0].__setitem__(
            "deployments", [{"name": "embedder", "autoscaling_config": {"max_replica": 2}}]
        ),
        "autoscaling_config.max_replica: unknown key",
    ),
    (
        lambda c: c["applications"][1]["args"]["scorers"]["pickscore"].__setitem__("weigth", 2),
        "applications[1].args.scorers.pickscore.weigth: Extra inputs are not permitted",
    ),
    (
        lambda c: c["applications"][0]["args"]["embedder"].__setitem__("num_replica", 2),
        "applications[0].args.embedder.num_replica: Extra inputs are not permitted",
    ),
    (
        lambda c: c["applications"][1]["args"].__setitem__("core", {"diversegrpo": {"beta2": 1}}),
        "applications[1].args.core.diversegrpo.beta2: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize("mutate,expected", MISSPELLINGS)
def test_misspelt_keys_are_errors(mutate: Any, expected: str) -> None:
    data = copy.deepcopy(_load("deploy/serve-tiny.yaml"))
    mutate(data)
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert expected in str(info.value)


def test_serve_itself_would_ignore_a_misspelt_key() -> None:
    """Why the strict check exists: Serve's own schema drops the unknown key silently."""
    from ray.serve.schema import ServeDeploySchema

    data = _load("deploy/serve-tiny.yaml")
    data["applications"][0]["deployments"] = [{"name": "embedder", "num_replica": 2}]
    schema = ServeDeploySchema.model_validate(data)
    assert schema.applications[0].deployments[0].model_dump(exclude_unset=True) == {
        "name": "embedder"
    }


def test_builders_take_typed_args() -> None:
    assert builder_args_model(REWARD_IMPORT) is RewardAppArgs
    assert builder_args_model(DIVERSITY_IMPORT) is DiversityAppArgs


@pytest.mark.parametrize("profile", ["real", "tiny"])
def test_default_configs_validate(profile: str) -> None:
    data = default_config(profile)
    validate_config(data)
    assert {a["args"]["profile"] for a in data["applications"]} == {profile}
    assert data["http_options"] == {"host": "127.0.0.1", "port": 8000}


@pytest.mark.parametrize(("cpus", "per_model"), [(2, 1), (8, 4), (1, 0.5), (5, 2)])
def test_the_default_real_config_gives_the_models_whole_cores(cpus: int, per_model: float) -> None:
    from divreward.services.model_deployments import replica_threads

    data = validate_config(default_config("real", cpus=cpus))
    apps = {a.name: a.args for a in data.applications}
    scorer = RewardAppArgs.model_validate(apps["reward"]).scorers["pickscore"]
    embedder = DiversityAppArgs.model_validate(apps["diversity"]).embedder
    assert scorer.num_cpus == embedder.num_cpus == per_model
    assert replica_threads(scorer) == replica_threads(embedder) == max(1, int(per_model))
    ingress = [RewardAppArgs.model_validate(apps["reward"]).ingress.num_cpus]
    ingress.append(DiversityAppArgs.model_validate(apps["diversity"]).ingress.num_cpus)
    # everything schedules on the local instance
    assert sum(ingress) == 0 and scorer.num_cpus + embedder.num_cpus <= cpus


def test_args_name_unknown_models_and_kinds() -> None:
    with pytest.raises(ValueError, match=r"scorers.hpsv9: 'hpsv9' is not a registered scorer"):
        RewardAppArgs(scorers={"hpsv9": ScorerArgs()})
    with pytest.raises(ValueError, match=r"'dreamsim' is not a registered scorer; valid: \["):
        RewardAppArgs(scorers={"dreamsim": ScorerArgs()})
    with pytest.raises(
        ValueError, match=r"embedder.name: 'pickscore' is not a registered embedder"
    ):
        DiversityAppArgs(embedder={"name": "pickscore"})
    with pytest.raises(ValueError, match="at least one scorer needs a non-zero default weight"):
        RewardAppArgs(scorers={"pickscore": ScorerArgs(weight=0.0)})
    with pytest.raises(ValueError, match="autoscaling: required when num_replicas is 'auto'"):
        ScorerArgs(num_replicas="auto")
    with pytest.raises(ValueError, match=r"autoscaling: unknown keys \['max_replica'\]"):
        ScorerArgs(num_replicas="auto", autoscaling={"max_replica": 3})


def _cli_args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "config": None,
        "profile": None,
        "host": None,
        "port": None,
        "token_file": None,
        "tenants": None,
        "tiny_dir": None,
        "weights_dir": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_cli_refuses_non_loopback_without_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKENS", raising=False)
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0 .* without auth"):
        prepare_config(_cli_args(host="0.0.0.0", profile="tiny"))
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nsecret-1\n\nsecret-2\n")
    config = prepare_config(_cli_args(host="0.0.0.0", profile="tiny", token_file=tokens))
    for app in config["applications"]:
        assert app["args"]["auth"] == {"enabled": True, "token_file": str(tokens)}
        assert app["args"]["profile"] == "tiny"
    assert config["http_options"]["host"] == "0.0.0.0"
    # Tokens from the environment switch auth on as well.
    monkeypatch.setenv("DIVREWARD_API_TOKENS", "abc,def")
    config = prepare_config(_cli_args(host="10.1.2.3"))
    assert all(a["args"]["auth"]["enabled"] for a in config["applications"])
    # Loopback needs no auth.
    monkeypatch.delenv("DIVREWARD_API_TOKENS")
    config = prepare_config(_cli_args(port=8123))
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert not any(a["args"]["auth"].get("enabled") for a in config["applications"])


def test_cli_tenants_file_switches_auth_on_and_is_checked_before_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKENS", raising=False)
    monkeypatch.delenv("DIVREWARD_TENANTS_FILE", raising=False)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  - {name: team-a, token: s3cret, weight: 2}\n")
    config = prepare_config(_cli_args(host="0.0.0.0", profile="tiny", tenants=tenants))
    for app in config["applications"]:
        assert app["args"]["auth"] == {"enabled": True, "tenants_file": str(tenants)}
    # the environment variable works as well: the replicas read the file it names
    monkeypatch.setenv("DIVREWARD_TENANTS_FILE", str(tenants))
    config = prepare_config(_cli_args(host="10.1.2.3"))
    assert all(a["args"]["auth"] == {"enabled": True} for a in config["applications"])
    # a bad file stops it before anything starts, naming the entry
    tenants.write_text("tenants:\n  - {name: team-a, token: s3cret, weight: 0}\n")
    with pytest.raises(ValueError, match=r"tenants\[0\]\.weight: Input should be greater than 0"):
        prepare_config(_cli_args(host="10.1.2.3"))


def test_cli_auth_without_tokens_fails_before_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKENS", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="auth is enabled but no token was found"):
        prepare_config(_cli_args(token_file=empty))
    with pytest.raises(ValueError, match=r"auth\.token_file: cannot read"):
        prepare_config(_cli_args(token_file=tmp_path / "missing"))


def test_cli_applies_flags_over_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIVREWARD_API_TOKENS", "t1")  # serve-gpu.yaml has auth on
    config = prepare_config(
        _cli_args(
            config=ROOT / "deploy/serve-gpu.yaml",
            profile="tiny",
            host="127.0.0.1",
            port=18000,
            tiny_dir=tmp_path,
        )
    )
    assert config["http_options"]["port"] == 18000
    for app in config["applications"]:
        assert app["args"]["profile"] == "tiny"
        assert app["args"]["tiny_models_dir"] == str(tmp_path.resolve())


def test_constructor_retry_count_below_servers_minimum_is_refused_at_validation() -> None:
    """Serve refuses max_constructor_retry_count < 1 only at deploy time; the args say it
    first, naming the field."""
    from pydantic import ValidationError

    from divreward.services.config import ModelDeploymentArgs

    with pytest.raises(ValidationError, match="max_constructor_retry_count"):
        ModelDeploymentArgs(max_constructor_retry_count=0)
    assert ModelDeploymentArgs(max_constructor_retry_count=1).max_constructor_retry_count == 1
