"""Plugins (``module:factory``) served like built-in models: a toy quality scorer and a
toy embedder deployed next to the session's apps, their scores and embeddings over HTTP
and gRPC equal to the same plugin objects in this process, their cards in /v1/models;
bad entries stop the start-up naming the entry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from divreward.models.base import LoadOptions
from divreward.models.plugins import PluginError, load_plugin
from experiments.collapse.data import sample_dataset
from experiments.collapse.pretrain import ToySettings, ensure_toy

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

QUALITY = "experiments.collapse.plugins:quality_scorer"
EMBEDDER = "experiments.collapse.plugins:embedder"
TINY_TOY = ToySettings(k=4, flow_steps=10, flow_batch=16, flow_width=32, flow_depth=1,
                       n_data=64, cnn_epochs=1, cnn_data=128)  # fmt: skip
REWARD_APP, DIVERSITY_APP = "plugins_reward", "plugins_diversity"


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_toy(tmp_path_factory.mktemp("toy"), TINY_TOY, log=lambda s: None)


def _args(toy_dir: Path, diversity_app: str = DIVERSITY_APP, **scorer: Any) -> tuple[Any, Any]:
    """Reward and diversity app args on the toy plugins; the reward app looks for its
    diversity app under ``diversity_app``."""
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    model = {"num_cpus": 0.1, "batch": {"max_batch_images": 64, "batch_wait_timeout_s": 0.005}}
    common: dict[str, Any] = {"ingress": {"num_cpus": 0.1}}
    reward = RewardAppArgs(
        scorers={
            "toy_quality": {
                **model,
                "plugin": QUALITY,
                "options": {"model_dir": str(toy_dir), "preferred": [1], "margin": 0.3},
                **scorer,
            }
        },
        diversity_app=diversity_app,
        **common,
    )
    diversity = DiversityAppArgs(
        embedder={**model, "name": "toy_embedder", "plugin": EMBEDDER,
                  "options": {"model_dir": str(toy_dir)}},
        **common,
    )  # fmt: skip
    return reward, diversity


@pytest.fixture(scope="module")
def plugin_app(serve_app: Any, toy_dir: Path) -> Iterator[dict[str, str]]:
    from ray import serve

    from divreward.services import launch
    from divreward.services.diversity_server.app import build_diversity_app
    from divreward.services.reward_server.app import build_reward_app

    reward, diversity = _args(toy_dir)
    launch.deploy(
        [
            (build_diversity_app(diversity), DIVERSITY_APP, "/plugins-diversity"),
            (build_reward_app(reward), REWARD_APP, "/plugins"),
        ],
        timeout_s=240.0,
    )
    try:
        yield {
            "http": serve_app.base_url + "/plugins",
            "grpc": serve_app.extra["grpc_url"],
        }
    finally:
        serve.delete(REWARD_APP)
        serve.delete(DIVERSITY_APP)


def _images(n: int = 6) -> np.ndarray:
    x, _ = sample_dataset(4, n, seed=5)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_plugin_scores_and_embeddings_over_the_wire(
    plugin_app: dict[str, str], toy_dir: Path, transport: str
) -> None:
    from divreward.client import Group, RewardClient

    images = _images()
    opts = {"model_dir": str(toy_dir), "preferred": [1], "margin": 0.3}
    scorer = load_plugin("toy_quality", QUALITY, "scorer", LoadOptions(options=opts))
    embedder = load_plugin("toy_embedder", EMBEDDER, "embedder",
                           LoadOptions(options={"model_dir": str(toy_dir)}))  # fmt: skip
    expected_q = scorer.score(list(images), ["a toy image"] * len(images))
    expected_e = embedder.embed(list(images))
    kw = {"application": REWARD_APP} if transport == "grpc" else {}
    with RewardClient(plugin_app[transport], downsize=False, **kw) as client:
        res = client.rewards(
            [Group("a toy image", images)],
            quality={"toy_quality": 1.0},
            diversity={"method": "diversegrpo"},
            return_embeddings=True,
        )
    g = res.groups[0]
    assert np.asarray(g.quality["toy_quality"]) == pytest.approx(expected_q, abs=1e-6)
    assert np.asarray(g.diversity.embeddings) == pytest.approx(expected_e, abs=1e-5)
    # R = Q + beta * E with the service's default beta (0.7)
    bonus = np.asarray(g.diversity.bonus)
    assert np.asarray(g.rewards) == pytest.approx(expected_q + 0.7 * bonus, abs=1e-6)
    card = res.models["toy_quality"]
    assert card.kind == "scorer" and card.options["plugin"] == QUALITY


def test_plugin_cards_in_v1_models(plugin_app: dict[str, str], toy_dir: Path) -> None:
    body = httpx.get(plugin_app["http"] + "/v1/models", timeout=30).json()
    text = str(body)
    assert "toy_quality" in text and "toy_embedder" in text
    assert QUALITY in text and EMBEDDER in text
    assert str(toy_dir) in text  # the cards' source: where the weights came from


def test_a_bad_path_fails_the_config_naming_the_entry(toy_dir: Path) -> None:
    with pytest.raises(
        ValueError, match=r"scorers\.toy_quality: plugin 'experiments\.collapse\.plugins:nope'"
    ):
        _args(toy_dir, plugin="experiments.collapse.plugins:nope")
    with pytest.raises(ValueError, match=r"scorers\.toy_quality: plugin 'no_such_module_x:f'"):
        _args(toy_dir, plugin="no_such_module_x:f")


@pytest.mark.slow  # a replica that fails its start-up, retried once (~1 min)
def test_a_factory_breaking_the_contract_stops_the_deploy(serve_app: Any, toy_dir: Path) -> None:
    from ray import serve

    from divreward.services import launch
    from divreward.services.diversity_server.app import build_diversity_app
    from divreward.services.reward_server.app import build_reward_app

    # an embedder factory under scorers: it imports, but returns the wrong kind
    # The reward app looks for the diversity app deployed beside it (not the module
    # fixture's, which exists only when a test before this one used it).
    reward, diversity = _args(toy_dir, "bad_diversity", plugin=EMBEDDER,
                              max_constructor_retry_count=1,
                              options={"model_dir": str(toy_dir)})  # fmt: skip
    with pytest.raises(PluginError, match=r"not a divreward\.models\.base\.Scorer"):
        load_plugin("scorers.toy_quality", EMBEDDER, "scorer",
                    LoadOptions(options={"model_dir": str(toy_dir)}))  # fmt: skip
    try:
        with pytest.raises(launch.DeployError, match="toy_quality") as err:
            launch.deploy(
                [
                    (build_diversity_app(diversity), "bad_diversity", "/bad-diversity"),
                    (build_reward_app(reward), "bad_reward", "/bad"),
                ],
                timeout_s=180.0,
            )
        assert "not a divreward.models.base.Scorer" in str(err.value)
    finally:
        for name in ("bad_reward", "bad_diversity"):
            with contextlib.suppress(Exception):  # best effort cleanup
                serve.delete(name)


def test_the_docs_config_validates_and_a_typo_is_named(tmp_path: Path, monkeypatch: Any) -> None:
    """docs/plugins.md's my_rewards.py and plugins.yaml pass the strict config check; a
    misspelt factory fails it, naming the entry."""
    import yaml

    from divreward.services.deploy_config import ConfigError, validate_config

    text = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    module = next(
        b.split("```")[0] for b in text.split("```python\n")[1:] if b.startswith('"""my_rewards.py')
    )
    config = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    (tmp_path / "my_rewards.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    validate_config(config)
    scorer = config["applications"][1]["args"]["scorers"]["brightness"]
    scorer["plugin"] = "my_rewards:brightnes"
    with pytest.raises(ConfigError, match=r"scorers\.brightness: plugin 'my_rewards:brightnes'"):
        validate_config(config)
