"""The within-mode worlds (shapes, digits): their pixel oracles on hand-made images, the
plugin scorers against the oracles, the oracle policy on a hand-made world, and tiny
builds of both worlds through ``ensure_toy``. No Ray, no training runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from divreward.models.base import LoadOptions
from experiments.collapse import digits_world, shapes_world
from experiments.collapse.data import _BACKGROUND, COLOURS
from experiments.collapse.nets import ModeCNN
from experiments.collapse.oracles import centring, centroid, centroid_offset, foreground, redness
from experiments.collapse.plugins import images_to_tensor
from experiments.collapse.pretrain import ToySettings, ensure_toy
from experiments.collapse.quality import best_renders, oracle_policy
from experiments.collapse.worlds import make_world

TINY = {
    "flow_steps": 5,
    "flow_batch": 16,
    "flow_width": 32,
    "flow_depth": 1,
    "n_data": 64,
    "cnn_epochs": 1,
    "cnn_data": 64,
}


def canvas(colour: tuple[float, float, float], dy: int = 0, dx: int = 0, bg: float = _BACKGROUND):
    """(1, 3, 16, 16): a 4x4 square of ``colour`` centred on the image, shifted by (dy, dx)."""
    x = torch.full((1, 3, 16, 16), bg, dtype=torch.float64)
    x[0, :, 6 + dy : 10 + dy, 6 + dx : 10 + dx] = torch.tensor(colour, dtype=torch.float64)[
        :, None, None
    ]
    return x


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    return list((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))


# ----------------------------------------------------------------------------- oracles


def test_foreground_weights_follow_the_ramp() -> None:
    x = torch.full((1, 3, 16, 16), 0.12, dtype=torch.float64)
    x[0, :, 0, 0] = 0.12 + 0.2 / math.sqrt(3)  # RGB distance 0.2: halfway up the ramp
    x[0, :, 0, 1] = 0.12 + 0.05 / math.sqrt(3)  # 0.05: below the threshold
    x[0, 0, 0, 2] = 0.9  # distance 0.78: full ink
    f = foreground(x, 0.12)[0]
    assert f[0, 0].item() == pytest.approx(0.5)
    assert f[0, 1].item() == 0.0
    assert f[0, 2].item() == 1.0
    assert f.sum().item() == pytest.approx(1.5)


def test_a_centred_red_square_scores_the_maximum() -> None:
    x = canvas(COLOURS["red"])
    assert centroid_offset(x, _BACKGROUND).item() == pytest.approx(0.0, abs=1e-12)
    assert centring(x, _BACKGROUND, 2.0).item() == pytest.approx(1.0)
    assert redness(x, _BACKGROUND).item() == 1.0  # (0.9 - 0.15) / 0.5 = 1.5, clipped
    assert shapes_world.quality()(x.float())[0] == pytest.approx(5.0)  # 4 * 1 + 1 * 1


@pytest.mark.parametrize(("dy", "dx"), [(1, 2), (-3, 0), (2, -2)])
def test_known_offsets_give_the_formula(dy: int, dx: int) -> None:
    x = canvas(COLOURS["blue"], dy, dx)
    c, mass = centroid(x, _BACKGROUND)
    assert c[0].tolist() == pytest.approx([dy, dx])
    assert mass.item() == 16
    d2 = dy**2 + dx**2
    assert centring(x, _BACKGROUND, 2.0).item() == pytest.approx(math.exp(-d2 / 8))
    assert redness(x, _BACKGROUND).item() == 0.0  # blue
    q = shapes_world.quality(within=4.0, between=1.0)(x.float())[0]
    assert q == pytest.approx(4 * math.exp(-d2 / 8))


def test_an_empty_image_scores_zero() -> None:
    x = torch.full((2, 3, 16, 16), _BACKGROUND, dtype=torch.float64)
    assert torch.isinf(centroid_offset(x, _BACKGROUND)).all()
    assert centring(x, _BACKGROUND, 2.0).tolist() == [0.0, 0.0]
    assert redness(x, _BACKGROUND).tolist() == [0.0, 0.0]


def test_redness_reads_the_ink_weighted_mean_colour() -> None:
    x = canvas(COLOURS["red"])  # 16 red pixels
    x[0, :, 6:10, 10:14] = torch.tensor((0.15, 0.3, 0.95), dtype=torch.float64)[:, None, None]
    mean = (np.array(COLOURS["red"]) + np.array((0.15, 0.3, 0.95))) / 2  # 16 blue pixels
    expected = float(np.clip((mean[0] - mean[1:].max()) / 0.5, 0, 1))
    assert redness(x, _BACKGROUND).item() == pytest.approx(expected)


# ----------------------------------------------------------------------------- plugins


def test_shapes_plugin_equals_the_oracle() -> None:
    scorer = shapes_world.quality_scorer(LoadOptions(options={"within": 3.0, "between": 0.5}))
    x, _ = shapes_world.ShapesSettings().sample(24, 3, "test")
    imgs = to_uint8(x)
    got = scorer.score(imgs, ["p"] * len(imgs))
    t = images_to_tensor(imgs)
    want = 3.0 * centring(t, _BACKGROUND, 2.0) + 0.5 * redness(t, _BACKGROUND)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
    comps = scorer.score_components(imgs, ["p"] * len(imgs))
    np.testing.assert_allclose(comps["centring"], centring(t, _BACKGROUND, 2.0).numpy())
    assert set(comps) == {"score", "centring", "redness"}
    # a perfect image through uint8: still the maximum
    best = to_uint8(canvas(COLOURS["red"]).float())
    assert scorer.score(best, ["p"])[0] == pytest.approx(3.5)


def test_shapes_plugin_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown options"):
        shapes_world.quality_scorer(LoadOptions(options={"scale": 2}))
    with pytest.raises(ValueError, match="within must be >= 0"):
        shapes_world.quality_scorer(LoadOptions(options={"within": -1}))


def _fake_dir(tmp_path: Path, k: int, seed: int = 0) -> Path:
    """A world directory with random (untrained) classifier and regressors."""
    torch.manual_seed(seed)
    (tmp_path / "meta.json").write_text(json.dumps({"k": k}))
    save_file(ModeCNN(k).state_dict(), str(tmp_path / "classifier.safetensors"))
    for i in (0, 1):
        save_file(ModeCNN(2).state_dict(), str(tmp_path / f"regressor{i}.safetensors"))
    return tmp_path


def test_regressor_plugin_is_the_weighted_clipped_regression(tmp_path: Path) -> None:
    d = _fake_dir(tmp_path, 8)
    opts = {"model_dir": str(d), "member": 1, "within": 2.0, "between": 3.0}
    scorer = shapes_world.regressor_scorer_plugin(LoadOptions(options=opts))
    x, _ = shapes_world.ShapesSettings().sample(10, 4, "test")
    imgs = to_uint8(x)
    net = ModeCNN(2)
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(d / "regressor1.safetensors")))
    with torch.no_grad():
        p = net(images_to_tensor(imgs)).double().clamp(0, 1)
    np.testing.assert_allclose(scorer.score(imgs, ["p"] * 10), (2 * p[:, 0] + 3 * p[:, 1]).numpy())
    with pytest.raises(ValueError, match="member must be 0 or 1"):
        shapes_world.regressor_scorer_plugin(LoadOptions(options={**opts, "member": 2}))


def test_digits_plugin_equals_the_oracle(tmp_path: Path) -> None:
    d = _fake_dir(tmp_path, 10)
    opts = {"model_dir": str(d), "preferred": [3, 7], "within": 4.0, "between": 1.0}
    scorer = digits_world.quality_scorer(LoadOptions(options=opts))
    x, _ = digits_world.DigitsSettings().sample(12, 5, "test")
    imgs = to_uint8(x)
    t = images_to_tensor(imgs)
    from experiments.collapse.pretrain import load_cnn

    clf = load_cnn(d / "classifier.safetensors", 10)
    with torch.no_grad():
        pref = torch.softmax(clf(t), 1)[:, [3, 7]].sum(1).double()
    want = 4.0 * centring(t, 0.0, digits_world.SIGMA) + pref
    np.testing.assert_allclose(scorer.score(imgs, ["p"] * 12), want.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        digits_world.quality_scorer(LoadOptions(options={**opts, "preferred": [10]}))


# ----------------------------------------------------------------------------- digits data


def test_digit_splits_are_disjoint_and_held_out() -> None:
    s = digits_world.splits()
    assert [len(s[k]) for k in ("test", "classifier", "embedder", "flow")] == [297, 750, 750, 1500]
    assert not set(s["test"]) & set(s["classifier"])
    assert not set(s["test"]) & set(s["embedder"])
    assert not set(s["classifier"]) & set(s["embedder"])
    assert not set(s["test"]) & set(s["flow"])
    assert len(set(s["test"]) | set(s["flow"])) == 1797


def test_a_shift_moves_the_digit_centroid_by_exactly_the_shift() -> None:
    idx = digits_world.splits()["test"][:5]
    base = digits_world.render_digits(idx, np.zeros((5, 2), dtype=int))
    moved = digits_world.render_digits(idx, np.tile([1, -2], (5, 1)))
    c0, m0 = centroid(base, 0.0)
    c1, m1 = centroid(moved, 0.0)
    np.testing.assert_allclose((c1 - c0).numpy(), np.tile([1.0, -2.0], (5, 1)), atol=1e-9)
    np.testing.assert_allclose(m1.numpy(), m0.numpy())
    # the digits oracle: a centred symmetric blob scores 1, two pixels off exp(-4 / (2 * 1.5^2))
    blob = canvas((1.0, 1.0, 1.0), bg=0.0)
    assert centring(blob, 0.0, 1.5).item() == pytest.approx(1.0)
    off = canvas((1.0, 1.0, 1.0), 2, 0, bg=0.0)
    assert centring(off, 0.0, 1.5).item() == pytest.approx(math.exp(-4 / 4.5))


# ----------------------------------------------------------------------------- oracle policy


class _TwoModes(ToySettings):
    """Hand-made world: mode 0 = red squares at offsets 0 and (1, 2), mode 1 = blue squares
    at (0, 0) and (2, 0) (repeated to ``n``)."""

    def sample(self, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = [
            canvas(COLOURS["red"]),
            canvas(COLOURS["red"], 1, 2),
            canvas(COLOURS["blue"]),
            canvas(COLOURS["blue"], 2, 0),
        ]
        x = torch.cat([imgs[i % 4] for i in range(n)]).float()
        y = torch.tensor([(i % 4) // 2 for i in range(n)])
        return x, y


def test_oracle_policy_by_hand() -> None:
    r = oracle_policy(_TwoModes(k=2), shapes_world.quality(), n=4)
    assert r["best"] == pytest.approx([5.0, 4.0])
    assert r["mixture"] == pytest.approx(4.5)
    assert r["max"] == pytest.approx(5.0)
    assert r["ratio"] == pytest.approx(0.9)
    q = [5.0, 4 * math.exp(-5 / 8) + 1, 4.0, 4 * math.exp(-4 / 8)]
    assert r["data_mean"] == pytest.approx(sum(q) / 4)
    assert r["coverage"] == 2


# ----------------------------------------------------------------------------- tiny builds


def test_the_k_modes_world_keeps_its_cache_key() -> None:
    assert ToySettings().key().startswith("k8-s0-")
    assert shapes_world.ShapesSettings().key().startswith("shapes-k8-s0-")
    assert ToySettings().key() != ToySettings(cnn_epochs=8).key()


@pytest.mark.parametrize("world", ["shapes", "digits"])
def test_tiny_world_builds_with_its_regressors(tmp_path: Path, world: str) -> None:
    cls = shapes_world.ShapesSettings if world == "shapes" else digits_world.DigitsSettings
    d = ensure_toy(tmp_path, cls(**TINY), log=lambda s: None)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["world"] == world
    assert meta["k"] == (8 if world == "shapes" else 10)
    assert len(meta["regressor_mae"]) == 2
    for f in ("classifier.safetensors", "embedder.safetensors", "regressor0.safetensors"):
        assert (d / f).is_file()
    assert meta["prompts"][0] == "a toy image" and len(meta["prompts"]) == meta["k"] + 1


def test_oracle_policy_skips_renders_the_classifier_puts_elsewhere() -> None:
    def classify(x: torch.Tensor) -> np.ndarray:  # calls the centred red square mode 1
        centred_red = (redness(x, _BACKGROUND) > 0.5) & (centroid_offset(x, _BACKGROUND) < 0.1)
        y = (redness(x, _BACKGROUND) < 0.5).long()
        return torch.where(centred_red, 1, y).numpy()

    r = oracle_policy(_TwoModes(k=2), shapes_world.quality(), n=4, classify=classify)
    assert r["best"] == pytest.approx([4 * math.exp(-5 / 8) + 1, 4.0])
    q = [5.0, 4 * math.exp(-5 / 8) + 1, 4.0, 4 * math.exp(-4 / 8)]
    assert r["data_mean"] == pytest.approx(sum(q) / 4)  # over every render


def test_best_renders_interleave_each_modes_best() -> None:
    x = best_renders(_TwoModes(k=2), shapes_world.quality(), n=3, seed=0, pool=2)
    want = [canvas(COLOURS["red"]), canvas(COLOURS["blue"]), canvas(COLOURS["red"], 1, 2)]
    torch.testing.assert_close(x, torch.cat(want).float())
    with pytest.raises(ValueError, match="fewer than 3 renders"):
        best_renders(_TwoModes(k=2), shapes_world.quality(), n=6, seed=0, pool=2)


@pytest.mark.parametrize("name", ["shapes-within-mode", "digits"])
def test_worlds_name_their_plugins(tmp_path: Path, name: str) -> None:
    world = make_world(name, {"within": 3.0, "between": 0.5})
    k = 8 if name == "shapes-within-mode" else 10
    world._dir = _fake_dir(tmp_path, k)
    assert world.k == k and len(world.mode_names()) == k
    q = world.quality()
    assert q.options["within"] == 3.0 and q.options["between"] == 0.5
    scorer = q.load("scorer")
    x, _ = world.settings().sample(2 * k, 1, "test")
    imgs = to_uint8(x)
    np.testing.assert_allclose(
        scorer.score(imgs, ["p"] * len(imgs)), world.parts_quality()(images_to_tensor(imgs))
    )
    aux = world.aux_scorers()
    assert [a.name for a in aux] == [f"{q.name}_reg0", f"{q.name}_reg1"]
    assert [a.options["member"] for a in aux] == [0, 1]
    assert all(a.load("scorer").score(imgs[:2], ["p", "p"]).shape == (2,) for a in aux)
    assert world.embedder().options == {"model_dir": str(tmp_path)}
    assert world.ideal(np.array([0.5, 0.3, 0.2])).tolist() == pytest.approx([1 / 3] * 3)
