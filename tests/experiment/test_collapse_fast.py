"""The collapse experiment (experiments/collapse): its definitions on hand-made numbers
(fronts read by interpolation, matched quality levels, standard errors, the 2-SE flag, "not
reached") and its pipeline end to end, small: a tiny toy world, two steps, through the
trainer's loop. Asserts outputs and definitions, never the size of an effect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments.collapse.config import METHODS, SWEEP, CollapseConfig, run_id
from experiments.collapse.metrics import mode_metrics
from experiments.collapse.report import (
    exceeds_2se,
    front_at,
    matched_gains,
    mean_se,
    quality_levels,
)
from experiments.collapse.worlds import ShapesQualityIsMode, make_world, tilted_ideal

TINY_TOY = {
    "flow_steps": 20,
    "flow_batch": 32,
    "flow_width": 64,
    "flow_depth": 1,
    "n_data": 128,
    "cnn_epochs": 1,
    "cnn_data": 128,
}


def test_mode_metrics_by_hand() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2])  # 60% / 30% / 10% of K = 4
    ideal = np.array([0.25, 0.25, 0.25, 0.25])
    m = mode_metrics(labels, 4, ideal)
    assert m["histogram"] == pytest.approx([0.6, 0.3, 0.1, 0.0])
    assert m["coverage"] == 3
    h = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert m["entropy"] == pytest.approx(h)
    assert m["kl_ideal"] == pytest.approx(math.log(4) - h)  # KL to uniform = log K - H
    assert mode_metrics(np.zeros(20, dtype=int), 4, ideal)["coverage"] == 1


def test_the_shapes_world_ideal_is_the_tilted_base() -> None:
    world = ShapesQualityIsMode(k_modes=4, preferred=[1], margin=0.2)  # tau = 0.2 / ln 2
    p = world.ideal(np.full(4, 0.25))
    assert p == pytest.approx([1 / 5, 2 / 5, 1 / 5, 1 / 5])  # preferred: twice the others
    assert tilted_ideal(np.array([0.5, 0.5]), np.array([1.0, 0.0]), 1 / math.log(3)) == (
        pytest.approx([0.75, 0.25])
    )
    with pytest.raises(ValueError, match="preferred"):
        ShapesQualityIsMode(k_modes=4, preferred=[4])
    assert make_world("shapes-quality-is-mode", {"margin": 0.3}).margin == 0.3
    with pytest.raises(ValueError, match="unknown world 'nope'"):
        make_world("nope")


def test_front_at_interpolates_on_the_first_enclosing_segment() -> None:
    q, d = [4.0, 4.5, 5.0], [2.0, 1.6, 1.0]
    assert front_at(q, d, 4.25) == pytest.approx(1.8)  # halfway between 2.0 and 1.6
    assert front_at(q, d, 4.9) == pytest.approx(1.6 + 0.8 * (1.0 - 1.6))
    assert front_at(q, d, 4.0) == pytest.approx(2.0) and front_at(q, d, 5.0) == pytest.approx(1.0)
    assert front_at(q, d, 5.1) is None and front_at(q, d, 3.9) is None  # never extrapolated
    # a non-monotone front: the first segment that encloses the level counts
    assert front_at([4.0, 4.6, 4.4], [3.0, 1.0, 2.0], 4.5) == pytest.approx(3.0 - 2.0 * 5 / 6)
    assert front_at([4.2], [2.0], 4.2) == 2.0 and front_at([4.2], [2.0], 4.3) is None
    with pytest.raises(ValueError):
        front_at([1.0, 2.0], [1.0], 1.5)


def test_quality_levels_and_standard_errors_by_hand() -> None:
    assert quality_levels(4.0, 5.0) == pytest.approx([4.25, 4.5, 4.75])
    m, se, n = mean_se([1.0, 2.0, 3.0, None])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1.0 / math.sqrt(3))  # std 1
    m, se, n = mean_se([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(se)
    assert mean_se([None])[2] == 0
    assert exceeds_2se(2.1, 1.0, 5) and not exceeds_2se(2.0, 1.0, 5)
    assert exceeds_2se(-3.0, 1.0, 2) and not exceeds_2se(9.0, math.nan, 1)


def test_matched_gains_per_seed_then_mean_and_se() -> None:
    grpo = {  # GRPO's curves: base 4.0 -> 5.0, diversity falling 2.0 -> 1.0 (seed 1: 3.0 -> 1.0)
        0: ([4.0, 4.5, 5.0], [2.0, 1.5, 1.0]),
        1: ([4.0, 5.0], [3.0, 1.0]),
        2: ([4.0, 5.0], [2.0, 1.0]),
    }
    method = {  # fronts, strongest first
        0: ([4.2, 4.8], [2.2, 1.6]),  # at 4.5: 1.9 vs GRPO 1.5 -> +26.67%
        1: ([4.2, 4.8], [2.2, 2.2]),  # at 4.5: 2.2 vs GRPO 2.0 -> +10%
        2: ([4.6, 4.8], [2.0, 1.8]),  # does not reach 4.5
    }
    g = matched_gains(method, grpo, 4.5)
    assert g["per_seed"][0]["method"] == pytest.approx(1.9)
    assert g["per_seed"][0]["gain"] == pytest.approx(100 * 0.4 / 1.5)
    assert g["per_seed"][1]["gain"] == pytest.approx(10.0)
    assert g["per_seed"][2] == {"method": None, "grpo": pytest.approx(1.5), "gain": None}
    gains = [100 * 0.4 / 1.5, 10.0]
    assert g["gain_percent"]["n"] == 2
    assert g["gain_percent"]["mean"] == pytest.approx(np.mean(gains))
    assert g["gain_percent"]["se"] == pytest.approx(np.std(gains, ddof=1) / math.sqrt(2))
    assert g["exceeds_2se"] is True  # mean 18.33 > 2 SE = 2 * 8.33
    g.update(matched_gains({0: method[0], 1: ([4.2, 4.8], [1.6, 1.6])}, grpo, 4.5))
    assert g["gain_percent"]["mean"] == pytest.approx((100 * 0.4 / 1.5 - 20.0) / 2)
    assert g["exceeds_2se"] is False  # +26.7% and -20%: within noise
    unreached = matched_gains(method, grpo, 4.9)
    assert unreached["gain_percent"]["n"] == 0 and unreached["method"]["n"] == 0
    assert not unreached["exceeds_2se"]


def test_the_sweep_is_fixed_in_the_config() -> None:
    cfg = CollapseConfig()
    assert cfg.sweep == SWEEP and cfg.methods == list(METHODS)
    for method, values in SWEEP.items():
        assert len(values) >= 3 and values == sorted(values), method
    assert cfg.strengths("grpo") == [None] and cfg.strengths("kl") == SWEEP["kl"]
    assert run_id("kl", 0.01, 3) == "kl-0.01-s3" and run_id("grpo", None, 0) == "grpo-s0"
    dg = METHODS["diversegrpo"].train_overrides(0.2, cfg)
    assert dg == {"diversity": "diversegrpo", "regulariser": "sa_reg", "reg_weight": 1.0,
                  "diversity_params": {"beta": 0.2}}  # fmt: skip
    assert METHODS["kl"].train_overrides(0.03, cfg) == {"regulariser": "kl", "reg_weight": 0.03}
    with pytest.raises(ValueError, match="unknown"):
        CollapseConfig(methods=["grpo", "nope"])


def test_pipeline_writes_the_report_and_resumes(tmp_path: Path) -> None:
    from experiments.collapse.runner import parse_args, run_experiment

    world = {
        "toy": TINY_TOY,
        "budget": {"steps": 2, "seeds": [0, 1], "eval_samples": 8, "curve_every": 1},
    }
    cfg = CollapseConfig(
        worlds=["shapes-quality-is-mode"],
        world={"shapes-quality-is-mode": world},
        methods=["grpo", "kl", "drift"],
        sweep={"kl": [0.01, 0.1], "drift": [0.5]},
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "out"),
        group_size=4,
        num_steps=3,
        backend="inprocess",
        workers=1,
        grid_samples=4,
    )
    logs: list[str] = []
    out = run_experiment(cfg, log=logs.append)
    wdir = out / "shapes-quality-is-mode"
    for name in ("collapse.md", "summary.json", "experiment.json"):
        assert (out / name).is_file(), name
    for name in ("front.png", "samples.png", "histogram.png"):
        assert (wdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    grpo = json.loads((wdir / "runs" / "grpo-s1.json").read_text())
    assert [e["step"] for e in grpo["evals"]] == [0, 1, 2]  # GRPO: its curve
    kl = json.loads((wdir / "runs" / "kl-0.1-s0.json").read_text())
    assert [e["step"] for e in kl["evals"]] == [2] and len(kl["evals"][0]["labels"]) == 8
    assert len(kl["history"]) == 2 and "reward/mean" in kl["history"][0]
    facts = json.loads((wdir / "world.json").read_text())
    # GRPO's step 0 is the base model: the same samples (same noise, LoRA starts at zero)
    assert grpo["evals"][0]["labels"] == facts["base"]["labels"]
    table = (out / "collapse.md").read_text()
    assert "| GRPO + KL, KL weight 0.1 |" in table and "Diversity at matched quality" in table
    summary = json.loads((out / "summary.json").read_text())["worlds"]["shapes-quality-is-mode"]
    assert set(summary["matched"]) == {"kl", "drift"}
    assert len(summary["matched"]["kl"]["vendi"]) == 3
    gardo_skip = json.loads((out / "experiment.json").read_text())["skipped"]
    assert "gardo" not in gardo_skip["shapes-quality-is-mode"]  # not asked for
    # resumable: a second run finds every record and trains nothing
    logs.clear()
    run_experiment(cfg, log=logs.append)
    assert any("8 runs, 8 already done" in s for s in logs), logs
    # the command line: world options and sweep values by --set
    parsed, report_only = parse_args(
        ["--set", "world.shapes-quality-is-mode.budget.seeds=[3]", "--set", "sweep.kl=[1,2,3]",
         "--report-only"]
    )  # fmt: skip
    assert parsed.world == {"shapes-quality-is-mode": {"budget": {"seeds": [3]}}}
    assert parsed.sweep["kl"] == [1, 2, 3] and parsed.sweep["drift"] == SWEEP["drift"]
    assert report_only


def test_the_installed_package_ships_no_experiment_code() -> None:
    """The experiment lives in experiments/ (run from the repository root): no installed
    package is experiment code, and no installed module imports it."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not [p for p in cfg["packages"] if p.startswith("experiments") or ".toy" in p]
    pattern = re.compile(r"^\s*(from|import)\s+experiments\b", re.M)
    offenders = [
        str(f.relative_to(root))
        for d in ("divreward", "services", "trainer")
        for f in (root / d).rglob("*.py")
        if pattern.search(f.read_text())
    ]
    assert offenders == []
