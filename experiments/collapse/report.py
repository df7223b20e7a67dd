"""The collapse experiment's report: a markdown table and PNG plots from the run records.

Written to the output directory:

- ``collapse.md``: the setting, the toy world (classifier accuracy, base histogram), the
  final metrics per method (mean ± std over seeds), and the diversity gain over GRPO at
  matched reward;
- ``pareto.png``: diversity (Vendi; mean pairwise distance) against mean quality along
  training, one line per method (mean over seeds at each evaluation);
- ``coverage.png``: mode coverage and KL to the ideal distribution over steps;
- ``samples.png``: a grid of final samples per method (first seed), the base on top;
- ``base_histogram.png``: the base model's mode histogram;
- ``summary.json``: every number of the table.

Matched reward (the papers' comparison): each run's final checkpoint against the GRPO run
of the same seed at the same mean quality. GRPO's diversity there is read off its
evaluation curve where its quality first reaches the run's final quality (linear
interpolation between evaluations); the gain is ``(div_run - div_GRPO) / div_GRPO``,
reported as mean ± std over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.collapse.config import METHODS
from experiments.collapse.metrics import ideal_distribution, mode_metrics

__all__ = ["matched_diversity", "write_report"]

METRICS = ("quality", "coverage", "entropy", "kl_ideal", "pairwise", "vendi")


def _fmt(values: Sequence[float | None], digits: int = 3) -> str:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if a.size == 0:
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def matched_diversity(evals: list[dict[str, Any]], q_star: float, key: str) -> float | None:
    """Diversity ``key`` where the quality curve first reaches ``q_star`` (linear
    interpolation between evaluations); None if it never does."""
    qs = [e["quality"] for e in evals]
    ds = [e[key] for e in evals]
    if qs[0] >= q_star:
        return float(ds[0])
    for i in range(1, len(qs)):
        if qs[i] >= q_star:
            f = (q_star - qs[i - 1]) / max(qs[i] - qs[i - 1], 1e-12)
            return float(ds[i - 1] + f * (ds[i] - ds[i - 1]))
    return None


def _enrich(records: list[dict[str, Any]], k: int, ideal: np.ndarray) -> None:
    for r in records:
        for e in r["evals"]:
            e.update(mode_metrics(np.asarray(e["labels"], dtype=np.int64), k, ideal))


def _curves(records: list[dict[str, Any]], method: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    runs = [r for r in records if r["method"] == method]
    steps = [e["step"] for e in runs[0]["evals"]]
    vals = np.array([[e[key] for e in r["evals"]][: len(steps)] for r in runs], dtype=float)
    return np.asarray(steps), vals


def write_report(out: Path, cfg: Any, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    methods = [m for m in cfg.methods if any(r["method"] == m for r in records)]
    base_labels = np.concatenate(
        [np.asarray(r["evals"][0]["labels"]) for r in records if r["evals"][0]["step"] == 0]
    )
    base_hist = np.bincount(base_labels, minlength=cfg.k) / len(base_labels)
    ideal = ideal_distribution(base_hist, cfg)
    _enrich(records, cfg.k, ideal)
    names = list(meta["modes"])

    # ---- final metrics and matched-reward gains
    final = {
        m: {k: [r["evals"][-1][k] for r in records if r["method"] == m] for k in METRICS}
        for m in methods
    }
    base = records[0]["evals"][0]
    # The papers' comparison: a method's final checkpoint against the GRPO checkpoint of
    # the same reward (read off GRPO's curve of the same seed index).
    matched: dict[str, dict[str, list[float | None]]] = {}
    gains: dict[str, dict[str, list[float]]] = {}
    if "grpo" in methods:
        grpo_runs = {r["seed"]: r for r in records if r["method"] == "grpo"}
        for m in methods:
            matched[m] = {"quality": [], "vendi": [], "pairwise": [], "coverage": []}
            gains[m] = {"vendi": [], "pairwise": []}
            for r in sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"]):
                g = grpo_runs.get(r["seed"])
                q = r["evals"][-1]["quality"]
                matched[m]["quality"].append(q)
                for key in ("vendi", "pairwise", "coverage"):
                    matched[m][key].append(
                        None if g is None else matched_diversity(g["evals"], q, key)
                    )
                for key in ("vendi", "pairwise"):
                    ref = matched[m][key][-1]
                    if ref is not None and ref > 0:
                        gains[m][key].append(100.0 * (r["evals"][-1][key] - ref) / ref)

    # ---- plots
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "vendi", "Vendi score"),
        (axes[1], "pairwise", "mean pairwise distance (1 - cos)"),
    ):
        for i, m in enumerate(methods):
            _, q = _curves(records, m, "quality")
            _, d = _curves(records, m, key)
            ax.plot(q.mean(0), d.mean(0), "-o", ms=3, color=colours(i), label=METHODS[m][0])
            ax.plot(q.mean(0)[-1], d.mean(0)[-1], "*", ms=12, color=colours(i))
        ax.plot([base["quality"]], [base[key]], "ks", ms=7, label="base model")
        ax.set_xlabel("mean quality reward")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Diversity vs reward along training (mean over seeds; ★ = final)")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "coverage", "modes holding >= 5% of samples"),
        (axes[1], "kl_ideal", "KL(histogram || ideal)"),
    ):
        for i, m in enumerate(methods):
            steps, v = _curves(records, m, key)
            mu, sd = v.mean(0), v.std(0)
            ax.plot(steps, mu, "-o", ms=3, color=colours(i), label=METHODS[m][0])
            ax.fill_between(steps, mu - sd, mu + sd, color=colours(i), alpha=0.12)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, cfg.k + 0.5)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Mode coverage over training (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=110)
    plt.close(fig)

    from torchvision.utils import make_grid

    rows = []
    seed0 = min(r["seed"] for r in records)
    for m in methods:
        path = out / "runs" / f"{m}-s{seed0}.grid.pt"
        rows.append((METHODS[m][0], torch.load(path)))
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.1 * len(rows) + 0.5))
    axes = np.atleast_1d(axes)
    for ax, (label, imgs) in zip(axes, rows, strict=True):
        grid = make_grid(imgs, nrow=len(imgs), padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(f"Final samples per method (seed {seed0}, same noise for every method)")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(
        range(cfg.k),
        base_hist,
        color=["tab:orange" if i in cfg.preferred else "tab:blue" for i in range(cfg.k)],
    )
    ax.plot(range(cfg.k), ideal, "k_", ms=20, mew=2, label="ideal p* (KL-regularised optimum)")
    ax.axhline(0.05, color="grey", ls=":", lw=1)
    ax.set_xticks(range(cfg.k), names, rotation=30, fontsize=7)
    ax.set_ylabel("share of samples")
    ax.set_title(
        f"Base model: mode histogram of {len(base_labels)} samples (orange = preferred modes)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "base_histogram.png", dpi=110)
    plt.close(fig)

    # ---- table
    n_seeds = len({r["seed"] for r in records})
    lines = [
        "# Mode-collapse experiment: results",
        "",
        f"K = {cfg.k} modes, preferred {[names[i] for i in cfg.preferred]} (quality "
        f"{cfg.quality_scale:g}; others {cfg.quality_scale * (1 - cfg.margin):g}); "
        f"{cfg.steps} steps x {cfg.group_size * cfg.prompts_per_step}"
        f" images per method and seed; seeds {sorted({r['seed'] for r in records})}; "
        f"evaluation on {cfg.eval_samples} samples every {cfg.eval_every} steps. Backend: "
        f"{cfg.backend} ({cfg.transport}).",
        "",
        f"Classifier accuracy on held-out renders: {meta['classifier_accuracy']:.4f}. "
        f"Base model: coverage {base['coverage']} of {cfg.k}, histogram "
        f"{np.round(base_hist, 3).tolist()}, quality {base['quality']:.3f}, Vendi "
        f"{base['vendi']:.2f}, pairwise {base['pairwise']:.3f}.",
        "",
        f"## Final metrics (mean ± std over {n_seeds} seeds)",
        "",
        "| method | quality | coverage | entropy | KL to ideal | pairwise dist. | Vendi |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        f = final[m]
        lines.append(
            f"| {METHODS[m][0]} | {_fmt(f['quality'])} | {_fmt(f['coverage'], 1)} | "
            f"{_fmt(f['entropy'])} | {_fmt(f['kl_ideal'])} | {_fmt(f['pairwise'])} | "
            f"{_fmt(f['vendi'], 2)} |"
        )
    lines += [
        "",
        "## Diversity gain at matched reward",
        "",
        "Each run's final checkpoint against the GRPO (no reg.) run of the same seed at the "
        "same mean quality: GRPO's diversity is read off its evaluation curve where its "
        "quality first reaches the run's final quality (linear interpolation between "
        "evaluations). n = seeds where GRPO reaches that quality.",
        "",
        "| method | final quality | Vendi | GRPO's Vendi there | Vendi gain | pairwise | "
        "GRPO's pairwise there | pairwise gain | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        if not matched:
            break
        g, mm = gains[m], matched[m]
        lines.append(
            f"| {METHODS[m][0]} | {_fmt(mm['quality'])} | {_fmt(final[m]['vendi'], 2)} | "
            f"{_fmt(mm['vendi'], 2)} | {_fmt(g['vendi'], 1)} % | {_fmt(final[m]['pairwise'])}"
            f" | {_fmt(mm['pairwise'])} | {_fmt(g['pairwise'], 1)} % | {len(g['vendi'])} |"
        )
    lines += [
        "",
        "Plots: `pareto.png` (diversity vs reward), `coverage.png` (coverage, KL over steps), "
        "`samples.png` (final samples), `base_histogram.png`.",
        "",
    ]
    (out / "collapse.md").write_text("\n".join(lines))
    summary = {
        "base_histogram": base_hist.tolist(),
        "ideal": ideal.tolist(),
        "final": final,
        "matched": matched,
        "gains_percent": gains,
        "wall_s": {m: [r["wall_s"] for r in records if r["method"] == m] for m in methods},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
