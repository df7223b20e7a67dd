"""``divreward demo-core``: the reward math on a deterministic synthetic sample.

Three groups of unit embeddings with known modes (5-2-1, 4-4, and one near-identical
mode of 8) and seeded quality scores; prints, per group, DiverseGRPO's clusters and
bonus and DRIFT's diversity, intrinsic reward and advantages. Needs no model.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

# (name, mode sizes, within-mode noise): the true k of each group is len(sizes).
DEMO_GROUPS: tuple[tuple[str, tuple[int, ...], float], ...] = (
    ("modes-5-2-1", (5, 2, 1), 0.3),
    ("modes-4-4", (4, 4), 0.3),
    ("one-mode", (8,), 0.05),
)
_DIM = 64


def demo_group(sizes: tuple[int, ...], noise: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors (sum(sizes), _DIM) around one random unit centre per mode."""
    centres = rng.standard_normal((len(sizes), _DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, sizes, axis=0)
    x += noise * rng.standard_normal(x.shape) / np.sqrt(_DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_demo(seed: int = 0) -> list[dict[str, Any]]:
    """The demo's results: one dict per group (JSON-friendly)."""
    from divreward.core import DiverseGRPOConfig, diversegrpo_rewards, drift_rewards

    rng = np.random.default_rng(seed)
    out = []
    for name, sizes, noise in DEMO_GROUPS:
        emb = demo_group(sizes, noise, rng)
        quality = rng.normal(21.0, 0.5, size=emb.shape[0])  # PickScore-like scale
        dg = diversegrpo_rewards(quality, emb, DiverseGRPOConfig(seed=seed))
        dr = drift_rewards(quality, emb)
        out.append(
            {
                "group": name,
                "true_k": len(sizes),
                "diversegrpo": dg.to_dict(),
                "drift": dr.to_dict(),
            }
        )
    return out


def _print_table(results: list[dict[str, Any]]) -> None:
    for res in results:
        dg, dr = res["diversegrpo"], res["drift"]
        print(
            f"group {res['group']}: true k={res['true_k']}  DiverseGRPO k={dg['k']} "
            f"sigma={dg['sigma']:.4f} beta={dg['beta']}  DRIFT lam={dr['lam']}"
        )
        print(
            f"{'i':>3} {'Q':>8} {'label':>5} {'E':>6} {'R':>8} {'A_dg':>7} "
            f"{'d':>7} {'R_int':>7} {'A_drift':>8}"
        )
        for i in range(len(dg["quality"])):
            print(
                f"{i:>3} {dg['quality'][i]:>8.3f} {dg['labels'][i]:>5d} {dg['bonus'][i]:>6.3f} "
                f"{dg['rewards'][i]:>8.3f} {dg['advantages'][i]:>7.3f} "
                f"{dr['diversity'][i]:>7.4f} {dr['intrinsic'][i]:>7.4f} "
                f"{dr['advantages'][i]:>8.3f}"
            )
        print()


def _cmd_demo(args: argparse.Namespace) -> int:
    results = run_demo(args.seed)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(results)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo-core`` to the ``divreward`` command line."""
    p = subparsers.add_parser(
        "demo-core",
        help="run the reward math on a deterministic synthetic sample (no models)",
        description=__doc__,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and k-means")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_demo)
