"""Plugins by import path: loaded, checked against the model contract, renamed after
their entry; every failure names the entry and the path."""

from __future__ import annotations

import numpy as np
import pytest

from divreward.models.base import Embedder, LoadOptions, Scorer
from divreward.models.plugins import PluginError, check_import_path, load_plugin

IMG = np.full((8, 8, 3), 51, dtype=np.uint8)  # mean 0.2 of 255


def test_scorer_plugin_is_loaded_with_its_options_and_named_after_its_entry() -> None:
    m = load_plugin(
        "scorers.bright", "plugin_examples:brightness", "scorer", LoadOptions(options={"scale": 5})
    )
    assert isinstance(m, Scorer)
    assert m.score([IMG, IMG * 0], ["a", "b"]) == pytest.approx([1.0, 0.0])
    assert m.info.name == "bright" and m.info.kind == "scorer"
    assert m.info.options == {"plugin": "plugin_examples:brightness"}


def test_embedder_plugin_passes_the_contract() -> None:
    m = load_plugin("embedder", "plugin_examples:colours", "embedder", name="hist")
    assert isinstance(m, Embedder) and m.info.name == "hist"
    e = m.embed([IMG])
    assert e.shape == (1, 3) and e.dtype == np.float32
    assert np.linalg.norm(e[0]) == pytest.approx(1.0, abs=1e-6)


def test_check_import_path_resolves_without_building() -> None:
    check_import_path("plugin_examples:raises", "scorers.x")  # the factory is not called


@pytest.mark.parametrize(
    ("path", "kind", "message"),
    [
        ("no_colon", "scorer", "must be an import path 'package.module:factory'"),
        ("a:b:c", "scorer", "must be an import path"),
        (":f", "scorer", "must be an import path"),
        ("not_a_module_xyz:f", "scorer", "cannot import module 'not_a_module_xyz'"),
        ("plugin_examples:missing", "scorer", "has no attribute 'missing'"),
        ("plugin_examples:NOT_CALLABLE", "scorer", "is a int, not a callable"),
        ("plugin_examples:raises", "scorer", "the factory raised RuntimeError: weights not found"),
        ("plugin_examples:not_a_model", "scorer", "returned a object, not a .*Scorer"),
        ("plugin_examples:wrong_kind", "scorer", "returned a ColourHistogram, not a .*Scorer"),
        ("plugin_examples:brightness", "embedder", "returned a Brightness, not a .*Embedder"),
        ("plugin_examples:no_info", "scorer", r"\.info is dict, not a .*ModelInfo"),
        ("plugin_examples:bad_shape", "scorer", r"shape \(2, 2\); the contract is a float array"),
        ("plugin_examples:not_unit", "embedder", "contract is unit-normalised rows"),
        ("plugin_examples:nan_scores", "scorer", "non-finite"),
    ],
)
def test_a_bad_entry_is_a_clear_error_naming_it(path: str, kind: str, message: str) -> None:
    with pytest.raises(PluginError, match=message) as err:
        load_plugin("scorers.mine", path, kind)  # type: ignore[arg-type]
    assert str(err.value).startswith("scorers.mine: ")
    assert isinstance(err.value, ValueError)


def _docs_module(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """docs/plugins.md's my_rewards.py, written out and importable."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    blocks = text.split("```python\n")[1:]
    source = next(b.split("```")[0] for b in blocks if b.startswith('"""my_rewards.py'))
    (tmp_path / "my_rewards.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_docs_example_plugins_load_and_score(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _docs_module(tmp_path, monkeypatch)
    s = load_plugin(
        "scorers.brightness",
        "my_rewards:brightness",
        "scorer",
        LoadOptions(options={"target": 0.6}),
    )
    grey = np.full((8, 8, 3), 102, dtype=np.uint8)  # brightness 0.4
    assert s.score([grey], ["p"]) == pytest.approx([0.8])
    assert s.info.name == "brightness" and s.info.options["plugin"] == "my_rewards:brightness"
    e = load_plugin("embedder", "my_rewards:mean_colour", "embedder")
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert e.embed([red])[0] == pytest.approx(np.array([2, 1, 1]) / np.sqrt(6), abs=1e-6)
