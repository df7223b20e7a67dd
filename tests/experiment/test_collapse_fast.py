"""The collapse experiment's pipeline end to end, small: a tiny toy world, two steps of
every method with one seed, through the trainer's loop. Asserts the outputs (table,
plots, records) and the metrics' definitions, not the size of any effect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments.collapse.config import METHODS, CollapseConfig
from experiments.collapse.metrics import ideal_distribution, mode_metrics
from experiments.collapse.report import matched_diversity

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


def test_ideal_distribution_is_the_tilted_base() -> None:
    cfg = CollapseConfig(k=4, preferred=[1], margin=0.2)  # tau = 0.2 / ln 2
    p = ideal_distribution(np.full(4, 0.25), cfg)
    assert p == pytest.approx([1 / 5, 2 / 5, 1 / 5, 1 / 5])  # preferred: twice the others


def test_matched_diversity_interpolates_at_the_first_crossing() -> None:
    evals = [
        {"quality": 0.8, "vendi": 6.0},
        {"quality": 0.9, "vendi": 4.0},
        {"quality": 1.0, "vendi": 2.0},
    ]
    assert matched_diversity(evals, 0.85, "vendi") == pytest.approx(5.0)
    assert matched_diversity(evals, 0.75, "vendi") == pytest.approx(6.0)
    assert matched_diversity(evals, 1.1, "vendi") is None


def test_pipeline_writes_the_table_plots_and_records(tmp_path: Path) -> None:
    from experiments.collapse.runner import run_experiment

    cfg = CollapseConfig(
        toy=TINY_TOY,
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "out"),
        seeds=[0],
        steps=2,
        eval_every=1,
        eval_samples=8,
        group_size=4,
        num_steps=3,
        backend="inprocess",
        grid_samples=4,
    )
    out = run_experiment(cfg, log=lambda s: None)
    for name in ("collapse.md", "pareto.png", "coverage.png", "samples.png",
                 "base_histogram.png", "summary.json", "experiment.json"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("pareto.png", "coverage.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "collapse.md").read_text()
    for method in METHODS:
        assert f"| {METHODS[method][0]} |" in table
        rec = json.loads((out / "runs" / f"{method}-s0.json").read_text())
        assert [e["step"] for e in rec["evals"]] == [0, 1, 2]
        assert len(rec["history"]) == 2 and "reward/mean" in rec["history"][0]
        assert len(rec["evals"][-1]["labels"]) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["base_histogram"]) == pytest.approx(1.0)
    assert set(summary["final"]) == set(METHODS)
    # every method starts from the same base samples (same noise, LoRA starts at zero)
    firsts = {json.dumps(json.loads((out / "runs" / f"{m}-s0.json").read_text())["evals"][0]
                         ["labels"]) for m in METHODS}  # fmt: skip
    assert len(firsts) == 1


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
