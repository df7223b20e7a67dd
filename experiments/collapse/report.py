"""The collapse experiment's report: fronts, diversity at matched quality, plots.

Read from ``<out>/<world>/`` (``world.json``: the base model, the oracle policy, the
world's facts; ``runs/*.json``: one record per run) and written to ``<out>/``:

- ``collapse.md``: per world, the oracle and GRPO-collapse checks, every method's front
  (final metrics per strength, mean ± SE over seeds), and the diversity at matched quality;
- ``summary.json``: every number of the tables;
- ``<world>/front.png``: quality against diversity (Vendi; mean pairwise distance), each
  method's front (its strengths) and GRPO's curve (its checkpoints), mean ± SE over seeds
  in both directions; the base model, the oracle policy, the matched quality levels;
- ``<world>/samples.png``: final samples of the first seed per method and strength;
- ``<world>/histogram.png``: mode histograms of the base model and the oracle policy,
  and the ideal distribution.

**Definitions** (the functions below; tests/experiment checks them on hand-made numbers):

- A *front* is a sequence of (quality, diversity) points in the order of its parameter:
  GRPO's evaluations by training step (step 0 is the base model), a method's final
  checkpoints from its strongest strength to its weakest (the order in which quality
  can rise, as along GRPO's curve).
- *Diversity at quality Q* on a front (:func:`front_at`): linear interpolation on the first
  segment of the front whose two qualities enclose Q; ``None`` ("not reached") when no
  segment does. Never extrapolated.
- *Matched quality levels* (:func:`quality_levels`): 25%, 50% and 75% of the way from the
  base model's quality to GRPO's final quality (both the mean over seeds), on GRPO's
  curve: fixed by this rule before any result.
- *Gain at matched quality* (:func:`matched_gains`): per seed, (d_method(Q) - d_GRPO(Q)) /
  d_GRPO(Q) in percent, both read on the same seed's fronts; mean ± SE over the seeds where
  both reach Q (SE = sample std / sqrt(n)); *exceeds 2 SE* when n >= 2 and |mean| > 2 SE.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.collapse.config import METHODS, run_id
from experiments.collapse.metrics import mode_metrics

__all__ = [
    "LEVEL_FRACTIONS",
    "exceeds_2se",
    "front_at",
    "load_world",
    "matched_gains",
    "mean_se",
    "quality_levels",
    "write_report",
]

#: Where the matched quality levels sit between the base and GRPO's final quality.
LEVEL_FRACTIONS = (0.25, 0.5, 0.75)
METRICS = ("quality", "coverage", "entropy", "kl_ideal", "pairwise", "vendi")
DIVERSITY = ("vendi", "pairwise")


# ----------------------------------------------------------------------------- definitions


def mean_se(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, standard error (sample std / sqrt(n); nan when n < 2) and n of the values
    that are not None; (nan, nan, 0) for none."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return math.nan, math.nan, 0
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size >= 2 else math.nan
    return float(a.mean()), se, int(a.size)


def exceeds_2se(mean: float, se: float, n: int) -> bool:
    """A difference counts when it is more than two standard errors from 0 (n >= 2)."""
    return n >= 2 and math.isfinite(se) and abs(mean) > 2 * se


def front_at(qualities: Sequence[float], diversities: Sequence[float], q: float) -> float | None:
    """Diversity at quality ``q`` on a front (points in the front's order): linear
    interpolation on the first segment whose qualities enclose ``q``; None when none
    does (the front does not reach ``q``; never extrapolated)."""
    qs, ds = list(map(float, qualities)), list(map(float, diversities))
    if len(qs) != len(ds):
        raise ValueError(f"front_at: {len(qs)} qualities, {len(ds)} diversities")
    if len(qs) == 1:
        return ds[0] if qs[0] == q else None
    for i in range(len(qs) - 1):
        q0, q1 = qs[i], qs[i + 1]
        if min(q0, q1) <= q <= max(q0, q1):
            if q1 == q0:
                return ds[i]
            f = (q - q0) / (q1 - q0)
            return ds[i] + f * (ds[i + 1] - ds[i])
    return None


def quality_levels(base_quality: float, grpo_final_quality: float) -> list[float]:
    """The matched quality levels: LEVEL_FRACTIONS of the way from the base to GRPO."""
    return [base_quality + f * (grpo_final_quality - base_quality) for f in LEVEL_FRACTIONS]


def matched_gains(
    method_fronts: Mapping[int, tuple[Sequence[float], Sequence[float]]],
    grpo_fronts: Mapping[int, tuple[Sequence[float], Sequence[float]]],
    level: float,
) -> dict[str, Any]:
    """Per seed (the seeds of ``method_fronts``): the method's and GRPO's diversity at
    ``level`` and the gain in percent; their mean ± SE and whether the gain exceeds 2 SE.
    A front that does not reach the level gives None for that seed."""
    per_seed: dict[int, dict[str, float | None]] = {}
    for seed, (mq, md) in sorted(method_fronts.items()):
        d_m = front_at(mq, md, level)
        g = grpo_fronts.get(seed)
        d_g = None if g is None else front_at(g[0], g[1], level)
        gain = None
        if d_m is not None and d_g is not None and d_g > 0:
            gain = 100.0 * (d_m - d_g) / d_g
        per_seed[seed] = {"method": d_m, "grpo": d_g, "gain": gain}
    m, se, n = mean_se([v["gain"] for v in per_seed.values()])
    dm, dm_se, n_m = mean_se([v["method"] for v in per_seed.values()])
    dg, dg_se, n_g = mean_se([v["grpo"] for v in per_seed.values()])
    return {
        "level": level,
        "per_seed": per_seed,
        "method": {"mean": dm, "se": dm_se, "n": n_m},
        "grpo": {"mean": dg, "se": dg_se, "n": n_g},
        "gain_percent": {"mean": m, "se": se, "n": n},
        "exceeds_2se": exceeds_2se(m, se, n),
        "seeds": len(per_seed),
    }


# ----------------------------------------------------------------------------- loading


def _label(method: str, strength: float | None) -> str:
    m = METHODS[method]
    return m.label if strength is None else f"{m.label}, {m.knob_label} {strength:g}"


def load_world(out: Path, world: str, cfg: Any) -> dict[str, Any] | None:
    """A world's facts and its runs' records (the config's methods, strengths and the
    world's seeds that have a record), with the mode metrics added to every evaluation."""
    wdir = Path(out) / world
    if not (wdir / "world.json").is_file():
        return None
    facts = json.loads((wdir / "world.json").read_text())
    k = len(facts["modes"])
    seeds = list(facts["options"]["budget"]["seeds"])
    base_labels = np.asarray(facts["base"]["labels"], dtype=np.int64)
    base_hist = np.bincount(base_labels, minlength=k) / max(len(base_labels), 1)
    from experiments.collapse.worlds import make_world

    ideal = make_world(world, _options(facts)).ideal(base_hist)
    facts["base_histogram"] = base_hist.tolist()
    facts["ideal"] = ideal.tolist()
    for key in ("base", "oracle"):
        if facts.get(key):
            facts[key].update(mode_metrics(np.asarray(facts[key]["labels"]), k, ideal))
    runs: dict[tuple[str, float | None], dict[int, dict[str, Any]]] = {}
    for method in cfg.methods:
        for strength in cfg.strengths(method):
            for seed in seeds:
                path = wdir / "runs" / f"{run_id(method, strength, seed)}.json"
                if not path.is_file():
                    continue
                rec = json.loads(path.read_text())
                for e in rec["evals"]:
                    e.update(mode_metrics(np.asarray(e["labels"], dtype=np.int64), k, ideal))
                runs.setdefault((method, strength), {})[seed] = rec
    facts["runs"] = runs
    facts["seeds"] = seeds
    return facts


def _options(facts: dict[str, Any]) -> dict[str, Any]:
    """The world's options as given (its dump has every field; none is derived)."""
    return dict(facts["options"])


# ----------------------------------------------------------------------------- analysis


def _fronts(
    facts: dict[str, Any], method: str, strengths: Sequence[float | None], key: str
) -> dict[int, tuple[list[float], list[float]]]:
    """seed -> the method's front (qualities, diversities ``key``) in the front's order;
    only seeds with every point."""
    runs = facts["runs"]
    out: dict[int, tuple[list[float], list[float]]] = {}
    if method == "grpo":
        for seed, rec in runs.get(("grpo", None), {}).items():
            out[seed] = ([e["quality"] for e in rec["evals"]], [e[key] for e in rec["evals"]])
        return out
    order = sorted((s for s in strengths if s is not None), reverse=True)  # strongest first
    for seed in facts["seeds"]:
        recs = [runs.get((method, s), {}).get(seed) for s in order]
        if all(r is not None for r in recs):
            out[seed] = (
                [r["evals"][-1]["quality"] for r in recs],  # type: ignore[index]
                [r["evals"][-1][key] for r in recs],  # type: ignore[index]
            )
    return out


def analyse_world(facts: dict[str, Any], cfg: Any, skipped: Mapping[str, str]) -> dict[str, Any]:
    """Every number of a world's section."""
    runs = facts["runs"]
    res: dict[str, Any] = {"world": facts["world"], "skipped": dict(skipped), "final": {}}
    for method in cfg.methods:
        for strength in cfg.strengths(method):
            recs = runs.get((method, strength), {})
            if not recs:
                continue
            res["final"][_label(method, strength)] = {
                "method": method,
                "strength": strength,
                **{
                    k: dict(
                        zip(
                            ("mean", "se", "n"),
                            mean_se([r["evals"][-1][k] for r in recs.values()]),
                            strict=True,
                        )
                    )
                    for k in METRICS
                },
            }
    grpo = runs.get(("grpo", None), {})
    if grpo:
        base_q = mean_se([r["evals"][0]["quality"] for r in grpo.values()])[0]
        final_q = mean_se([r["evals"][-1]["quality"] for r in grpo.values()])[0]
        cov0 = [r["evals"][0]["coverage"] for r in grpo.values()]
        cov1 = [r["evals"][-1]["coverage"] for r in grpo.values()]
        res["grpo_collapse"] = {
            "seeds": len(grpo),
            "coverage_fell": int(sum(b > a for a, b in zip(cov1, cov0, strict=True))),
            "base_coverage": mean_se(cov0)[0],
            "final_coverage": dict(zip(("mean", "se", "n"), mean_se(cov1), strict=True)),
            "final_quality": final_q,
        }
        levels = quality_levels(base_q, final_q)
        res["levels"] = levels
        res["matched"] = {}
        for key in DIVERSITY:
            g_fronts = _fronts(facts, "grpo", [None], key)
            for method in cfg.methods:
                if method == "grpo" or method in skipped:
                    continue
                fronts = _fronts(facts, method, cfg.strengths(method), key)
                if not fronts:
                    continue
                res["matched"].setdefault(method, {})[key] = [
                    matched_gains(fronts, g_fronts, q) for q in levels
                ]
    return res


# ----------------------------------------------------------------------------- writing


def _pm(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not d or d["n"] == 0:
        return "n/a"
    if d["n"] == 1 or not math.isfinite(d["se"]):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['se']:.{digits}f}"


def _section(facts: dict[str, Any], res: dict[str, Any], cfg: Any) -> list[str]:
    b = facts["options"]["budget"]
    lines = [
        f"## World `{facts['world']}`",
        "",
        f"{facts['summary']}. K = {len(facts['modes'])} modes. Budget: {b['steps']} steps x "
        f"{cfg.group_size} images per run, seeds {b['seeds']}, evaluation on "
        f"{b['eval_samples']} samples (GRPO every {b['curve_every']} steps).",
        "",
    ]
    base, oracle = facts["base"], facts.get("oracle")
    lines += ["| policy | quality | coverage | entropy | KL to ideal | pairwise | Vendi |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, e in (("base model", base), ("oracle policy", oracle)):
        if e:
            lines.append(
                f"| {name} | {e['quality']:.3f} | {e['coverage']} | {e['entropy']:.3f} | "
                f"{e['kl_ideal']:.3f} | {e['pairwise']:.3f} | {e['vendi']:.2f} |"
            )
    if oracle is None:
        lines.append("")
        lines.append("This world has no oracle policy.")
    col = res.get("grpo_collapse")
    if col:
        lines += [
            "",
            f"**GRPO collapse check:** coverage fell on {col['coverage_fell']} of "
            f"{col['seeds']} seeds (base {col['base_coverage']:.1f} modes -> final "
            f"{_pm(col['final_coverage'], 1)}; final quality {col['final_quality']:.3f}).",
        ]
    for m, why in res["skipped"].items():
        lines += ["", f"**Skipped:** {METHODS[m].label}: {why}."]
    lines += [
        "",
        "### Fronts: final checkpoints (mean ± SE over seeds; GRPO: its final step)",
        "",
        "| method | quality | coverage | entropy | KL to ideal | pairwise | Vendi | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, f in res["final"].items():
        lines.append(
            f"| {label} | {_pm(f['quality'])} | {_pm(f['coverage'], 1)} | {_pm(f['entropy'])} | "
            f"{_pm(f['kl_ideal'])} | {_pm(f['pairwise'])} | {_pm(f['vendi'], 2)} | "
            f"{f['quality']['n']} |"
        )
    if "levels" in res:
        lv = ", ".join(f"{q:.3f}" for q in res["levels"])
        lines += [
            "",
            "### Diversity at matched quality",
            "",
            f"Quality levels {lv}: {', '.join(f'{int(100 * f)}%' for f in LEVEL_FRACTIONS)} "
            "of the way from the base model's quality to GRPO's final quality. Each front read "
            "by linear interpolation, per seed; the gain is relative to GRPO's curve of the "
            "same seed at the same quality; mean ± SE over the seeds where both fronts reach "
            "the level (n). **bold** = the gain exceeds 2 SE. 'not reached': the method's "
            "front does not span that quality on any seed (never extrapolated).",
            "",
        ]
        for key in DIVERSITY:
            name = "Vendi" if key == "vendi" else "pairwise distance"
            head = " | ".join(f"Q = {q:.3f}" for q in res["levels"])
            lines += [f"**{name}** gain (%), and the method's {name} there:", "",
                      f"| method | {head} |", "|---|" + "---|" * len(res["levels"])]  # fmt: skip
            for method, per in res["matched"].items():
                cells = []
                for g in per.get(key, []):
                    gp = g["gain_percent"]
                    if gp["n"] == 0:
                        cells.append("not reached" if g["method"]["n"] == 0 else "GRPO n/a")
                        continue
                    digits = 3 if key == "pairwise" else 2
                    txt = f"{_pm(gp, 1)} (n = {gp['n']}; {_pm(g['method'], digits)})"
                    cells.append(f"**{txt}**" if g["exceeds_2se"] else txt)
                lines.append(f"| {METHODS[method].label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        f"Plots: `{facts['world']}/front.png`, `{facts['world']}/samples.png`, "
        f"`{facts['world']}/histogram.png`.",
        "",
        f"![fronts]({facts['world']}/front.png)",
        "",
    ]
    return lines


def _se(a: np.ndarray) -> np.ndarray:
    """Column-wise standard error over the rows (0 for one row)."""
    if a.shape[0] < 2:
        return np.zeros(a.shape[1:])
    return np.asarray(a.std(0, ddof=1) / math.sqrt(a.shape[0]))


def _plots(out: Path, facts: dict[str, Any], res: dict[str, Any], cfg: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wdir = out / facts["world"]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, ylabel in (
        (axes[0], "vendi", "Vendi score"),
        (axes[1], "pairwise", "mean pairwise distance (1 - cos)"),
    ):
        for i, method in enumerate(cfg.methods):
            fronts = _fronts(facts, method, cfg.strengths(method), key)
            if not fronts:
                continue
            qs = np.array([f[0] for f in fronts.values()])
            ds = np.array([f[1] for f in fronts.values()])
            n = len(fronts)
            ax.errorbar(
                qs.mean(0),
                ds.mean(0),
                xerr=_se(qs),
                yerr=_se(ds),
                fmt="-o",
                ms=3,
                capsize=2,
                lw=1.2,
                color=colours(i),
                label=f"{METHODS[method].label} (n={n})",
            )
        for name, e, mk in (
            ("base model", facts["base"], "ks"),
            ("oracle", facts.get("oracle"), "k*"),
        ):
            if e:
                ax.plot([e["quality"]], [e[key]], mk, ms=9, label=name)
        for q in res.get("levels", []):
            ax.axvline(q, color="grey", ls=":", lw=1)
        ax.set_xlabel("mean quality (methods: final checkpoints; GRPO: its checkpoints)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{facts['world']}: fronts (methods: strengths; GRPO: checkpoints), mean ± SE over "
        "seeds; dotted: matched quality levels",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(wdir / "front.png", dpi=110)
    plt.close(fig)

    rows: list[tuple[str, np.ndarray]] = []
    for name in ("base", "oracle"):
        p = wdir / f"{name}.grid.npy"
        if p.is_file():
            rows.append((name, np.load(p, allow_pickle=False)))
    first = min(facts["seeds"])
    for method in cfg.methods:
        for strength in cfg.strengths(method):
            p = wdir / "runs" / f"{run_id(method, strength, first)}.grid.npy"
            if p.is_file():
                rows.append((_label(method, strength), np.load(p, allow_pickle=False)))
    if rows:
        fig, axs = plt.subplots(len(rows), 1, figsize=(12, 0.75 * len(rows) + 0.6))
        for ax, (label, imgs) in zip(np.atleast_1d(axs), rows, strict=True):
            strip = np.concatenate(
                list(np.pad(imgs, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=255)), axis=2
            )
            ax.imshow(strip.transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(label, fontsize=7, loc="left")
            ax.axis("off")
        fig.suptitle(
            f"{facts['world']}: final samples, seed {first} (same noise everywhere)", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(wdir / "samples.png", dpi=100)
        plt.close(fig)

    k = len(facts["modes"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * k + 2), 3.2))
    width = 0.4
    ax.bar(np.arange(k) - width / 2, facts["base_histogram"], width, label="base model")
    if facts.get("oracle"):
        ax.bar(np.arange(k) + width / 2, facts["oracle"]["histogram"], width, label="oracle policy")
    ax.plot(range(k), facts["ideal"], "k_", ms=16, mew=2, label="ideal p*")
    ax.axhline(0.05, color="grey", ls=":", lw=1)
    ax.set_xticks(range(k), facts["modes"], rotation=30, fontsize=7)
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(wdir / "histogram.png", dpi=100)
    plt.close(fig)


def write_report(
    out: Path, cfg: Any, skipped: Mapping[str, Mapping[str, str]] | None = None
) -> None:
    """collapse.md, summary.json and each world's plots, from the records under ``out``."""
    out = Path(out)
    exp = out / "experiment.json"
    experiment = json.loads(exp.read_text()) if exp.is_file() else {}
    if skipped is None:
        skipped = experiment.get("skipped", {})
    skipped = skipped or {}
    lines = [
        "# Mode-collapse experiment: results",
        "",
        "Written by `make bench-collapse` (`python -m experiments.collapse`); the definitions "
        "are in `experiments/collapse/report.py`, the sweep in `experiments/collapse/config.py`.",
        "",
        "Sweep (strengths, weakest to strongest): "
        + "; ".join(
            f"{METHODS[m].label}: {METHODS[m].knob_label} {cfg.sweep[m]}"
            for m in cfg.methods
            if METHODS[m].knob
        )
        + ". GRPO: its checkpoints.",
        "",
    ]
    for i, sess in enumerate(experiment.get("sessions", []), 1):
        per = ", ".join(
            f"{w} {t['wall_s']:.0f} s ({t['runs']} runs)"
            for w, t in sess.get("timings", {}).items()
        )
        state = "finished" if sess.get("finished") else "in progress or interrupted"
        lines.append(
            f"Session {i} (started {sess['started']}, {state}): {sess.get('wall_s', 0):.0f} s "
            f"wall; {per}."
        )
        lines.append("")
    summary: dict[str, Any] = {"worlds": {}}
    for world in cfg.worlds:
        facts = load_world(out, world, cfg)
        if facts is None:
            lines += [f"## World `{world}`", "", "No results.", ""]
            continue
        res = analyse_world(facts, cfg, skipped.get(world, {}))
        lines += _section(facts, res, cfg)
        _plots(out, facts, res, cfg)
        summary["worlds"][world] = {
            "base": facts["base"],
            "oracle": facts.get("oracle"),
            "base_histogram": facts["base_histogram"],
            "ideal": facts["ideal"],
            "wall_s": {
                run_id(m, s, seed): r["wall_s"]
                for (m, s), recs in facts["runs"].items()
                for seed, r in recs.items()
            },
            **res,
        }
    (out / "collapse.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")


def _jsonable(x: Any) -> Any:
    """Plain JSON: NaN (an undefined SE) as null, numpy scalars as numbers, keys as str."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
