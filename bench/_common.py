"""What the benchmark scripts share: a local service on the tiny models, on free loopback
ports (Ray + Serve in this process's cluster; ``launch.shutdown()`` stops it), and the
Markdown of their reports."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["free_port", "loadavg", "make_images", "markdown", "start_tiny_service", "table"]

#: Every tiny model deployment's share of the CPU and batching.
_MODEL = {"num_cpus": 0.2, "batch": {"max_batch_images": 64, "batch_wait_timeout_s": 0.005}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_images(n: int, seed: int, side: int = 512) -> list[np.ndarray]:
    """Smooth, photo-like side x side images (gradients and discs): JPEG sizes like real
    renders (tens of kB at 512), unlike noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = []
    for _ in range(n):
        img = np.zeros((side, side, 3), np.float32)
        for c in range(3):
            a, b, d = rng.uniform(-1, 1, 3)
            img[..., c] = 0.5 + 0.25 * (a * x + b * y) + 0.1 * np.sin(6.28 * (d * x + a * y))
        for _ in range(4):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
            img[mask] = rng.uniform(0, 1, 3)
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return out


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def start_tiny_service(
    tiny_dir: Path,
    scorers: Mapping[str, float],
    embedder_options: Mapping[str, Any],
    *,
    args: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    scorer_args: Mapping[str, Any] | None = None,
    ingress_args: Mapping[str, Any] | None = None,
    **start_kwargs: Any,
) -> tuple[str, str]:
    """The reward and diversity applications on the tiny models of ``scorers`` (name ->
    weight) and DreamSim (with ``embedder_options``), built under ``tiny_dir`` when
    missing; returns (http_url, grpc_url). ``args``: more args of both applications
    (e.g. ``auth``, ``ingress``); ``model``: the model deployments' settings instead of
    the default; ``scorer_args`` / ``ingress_args``: more settings of every scorer
    deployment / of the reward ingress (e.g. ``num_replicas``); ``start_kwargs`` go to
    ``launch.start``."""
    from divreward.models.tiny import build_all
    from divreward.services import launch
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    build_all(tiny_dir, 0, [*scorers, "dreamsim"])
    common: dict[str, Any] = {
        "profile": "tiny",
        "tiny_models_dir": str(tiny_dir),
        "ingress": {"num_cpus": 0.1},
        **(args or {}),
    }
    m = dict(model or _MODEL)
    reward = RewardAppArgs(
        scorers={n: {**m, **(scorer_args or {}), "weight": w} for n, w in scorers.items()},
        **{**common, "ingress": {**common["ingress"], **(ingress_args or {})}},
    )
    embedder = {**m, "name": "dreamsim", "options": dict(embedder_options)}
    diversity = DiversityAppArgs(embedder=embedder, **common)
    http_port, grpc_port = free_port(), free_port()
    launch.start(
        launch.serve_start_options("127.0.0.1", http_port, grpc_port=grpc_port),
        num_cpus=4,
        **start_kwargs,
    )
    launch.deploy_services(reward, diversity, timeout_s=600)
    return f"http://127.0.0.1:{http_port}", f"grpc://127.0.0.1:{grpc_port}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table's lines; ``align`` has an ``r`` for each right-aligned column."""
    rules = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    return [
        f"| {' | '.join(header)} |",
        f"|{'|'.join(rules)}|",
        *(f"| {' | '.join(str(c) for c in row)} |" for row in rows),
    ]


def markdown(title: str, *blocks: str | list[str]) -> str:
    """A report: the title, then the blocks (a paragraph, or a list of lines such as a
    :func:`table`), a blank line between each."""
    lines = [f"# {title}"]
    for block in blocks:
        lines += ["", *([block] if isinstance(block, str) else block)]
    return "\n".join(lines) + "\n"
