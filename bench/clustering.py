"""Time DiverseGRPO's spectral clustering against the group size (DiverseGRPO's open
question 1: does it scale?).

Synthetic clustered unit embeddings of DreamSim's size (1792), exact solver (dense
affinity, full eigendecomposition) vs approximate solver (sparse kNN affinity,
per-component partial eigensolver), median of a few repetitions. Each row also says
whether the clustering found the true modes (k and adjusted Rand index vs the truth).

    .venv/bin/python bench/clustering.py            # writes bench/results/clustering.{json,md}
    .venv/bin/python bench/clustering.py --quick    # fewer repetitions, prints only

Every case runs once per BLAS thread count in ``--blas-threads`` (default: 1 and 2,
set with threadpoolctl): on a loaded machine OpenBLAS's threads spin against other
processes and small eigendecompositions got up to 100x slower with 2 threads than with
1 (measured here). Timings are wall-clock; on a shared machine they are noisy (the load
average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

# scipy ships its own OpenBLAS, loaded lazily by the solvers: load it now so that the
# thread limits below reach both libraries (numpy's and scipy's).
import scipy.linalg
import scipy.sparse.linalg  # noqa: F401
from _common import markdown, table

from divreward.core import DiverseGRPOConfig, drift_rewards, spectral_cluster

DIM = 1792
RESULTS = Path(__file__).resolve().parent / "results"

# (N, mode sizes, repetitions, solvers): DiverseGRPO's group sizes first, then larger.
CASES: tuple[tuple[int, tuple[int, ...], int, tuple[str, ...]], ...] = (
    (8, (5, 2, 1), 200, ("exact",)),
    (24, (10, 8, 4, 2), 200, ("exact",)),
    (64, (8,) * 8, 50, ("exact",)),
    (256, (32,) * 8, 10, ("exact", "approximate")),
    (1024, (128,) * 8, 5, ("exact", "approximate")),
    (4096, (512,) * 8, 3, ("approximate",)),
)


def clustered(sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (sum(sizes), DIM) around random centres; within-mode 1 - cos ~ 0.1."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, sizes, axis=0)
    x += 0.45 * rng.standard_normal(x.shape) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def time_call(fn: Any, reps: int) -> tuple[float, float]:
    """Median and min wall time of ``reps`` calls, in milliseconds (one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def run(quick: bool, blas_threads: list[int]) -> dict[str, Any]:
    from threadpoolctl import threadpool_info, threadpool_limits

    rows: list[dict[str, Any]] = []
    for threads in blas_threads:
        with threadpool_limits(limits=threads, user_api="blas"):
            rows += _run_cases(quick, threads)
    return {
        "description": "spectral_cluster wall time (distances + affinity + eigen + k-means + "
        "k choice) on synthetic clustered unit embeddings, default DiverseGRPOConfig; "
        "drift_rewards for comparison",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "blas": sorted(
                {
                    f"{i.get('internal_api')} {i.get('version')}"
                    for i in threadpool_info()
                    if i.get("user_api") == "blas"
                }
            ),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "rows": rows,
    }


def _run_cases(quick: bool, threads: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, sizes, reps, solvers in CASES:
        reps = max(1, reps // 10) if quick else reps
        x, truth = clustered(sizes, seed=n)
        quality = np.random.default_rng(n).normal(size=n)
        for solver in solvers:
            cfg = DiverseGRPOConfig(solver=solver)  # type: ignore[arg-type]
            res = spectral_cluster(x, cfg)
            median_ms, min_ms = time_call(lambda x=x, cfg=cfg: spectral_cluster(x, cfg), reps)
            rows.append(
                {
                    "blas_threads": threads,
                    "n": n,
                    "dim": DIM,
                    "true_k": len(sizes),
                    "solver": solver,
                    "k": res.k,
                    "ari_vs_truth": _ari(res.labels, truth),
                    "reps": reps,
                    "median_ms": round(median_ms, 3),
                    "min_ms": round(min_ms, 3),
                }
            )
            print(
                f"threads={threads} N={n:5d} {solver:11s} k={res.k} (true {len(sizes)}) "
                f"ARI={rows[-1]['ari_vs_truth']:.3f}  median {median_ms:9.2f} ms  "
                f"min {min_ms:9.2f} ms  ({reps} reps)",
                flush=True,
            )
        drift_ms, _ = time_call(lambda x=x, q=quality: drift_rewards(q, x), reps)
        rows.append(
            {
                "blas_threads": threads,
                "n": n,
                "dim": DIM,
                "true_k": len(sizes),
                "solver": "drift_rewards",
                "k": None,
                "ari_vs_truth": None,
                "reps": reps,
                "median_ms": round(drift_ms, 3),
                "min_ms": None,
            }
        )
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    about = [
        f"Generated by `bench/clustering.py` on {m['cpu_count']} CPU cores "
        f"({m['platform']}, numpy {m['numpy']}, {', '.join(m['blas'])}); load average "
        "after the run "
        f"{m['load_average_after']} (a shared machine: treat timings as noisy).",
        "Synthetic unit embeddings of dimension 1792, default `DiverseGRPOConfig`; time of "
        "`spectral_cluster` (distances, affinity, eigendecomposition, k-means, k choice), "
        "median of `reps` calls after one warm-up; `drift_rewards` rows for comparison.",
    ]
    header = ["BLAS threads", "N", "true k", "solver", "k found", "ARI vs truth"]
    header += ["median ms", "min ms", "reps"]
    rows = [
        [
            r["blas_threads"],
            r["n"],
            r["true_k"],
            r["solver"],
            "" if r["k"] is None else r["k"],
            "" if r["ari_vs_truth"] is None else f"{r['ari_vs_truth']:.3f}",
            f"{r['median_ms']:.2f}",
            "" if r["min_ms"] is None else f"{r['min_ms']:.2f}",
            r["reps"],
        ]
        for r in result["rows"]
    ]
    return markdown("Clustering benchmark", about, table(header, rows, "rrrlrrrrr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer reps; do not write files")
    parser.add_argument(
        "--blas-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="BLAS thread counts to run every case under (default: 1 2)",
    )
    args = parser.parse_args()
    result = run(args.quick, args.blas_threads)
    if args.quick:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clustering.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "clustering.md").write_text(to_markdown(result))
    print(f"wrote {RESULTS / 'clustering.json'} and {RESULTS / 'clustering.md'}")


if __name__ == "__main__":
    main()
