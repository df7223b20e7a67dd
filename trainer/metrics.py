"""What a run writes for people to watch, through accelerate's trackers (``log_with``).

- TensorBoard (``tensorboard: true``, the default): scalars, and each evaluation's
  sample grids as images, under ``<output_dir>/tb``;
- W&B and MLflow (``log_with: [wandb]`` / ``[mlflow]``): accelerate's own trackers, in
  project ``tracker_project``, with the run's config;
- JSONL, always: ``<output_dir>/metrics.jsonl``, one JSON object per call, a tracker of
  our own (:class:`JSONLTracker`). Kept because the docs' recipes read it (the collapse
  experiment's logs, ``make demo``'s summary, docs/trainer.md) and because it needs no
  viewer.

Stable metric names (docs/trainer.md lists them all): ``reward/<scorer>``,
``reward/total``, ``reward/mean``, ``diversity/bonus``, ``diversity/k``,
``diversity/dreamsim``, ``diversity/drift``, ``loss/policy``, ``loss/reg``,
``loss/total``, ``train/clipfrac``, ``train/approx_kl``, ``train/grad_norm``,
``train/zero_std_frac``, ``perf/wait_s``, ``perf/images_per_s``, ``perf/step_s``; and
``eval/...`` for evaluations (``eval/grid/prompt_<i>``: the images).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.tracking import GeneralTracker, TensorBoardTracker, on_main_process

__all__ = ["JSONLTracker", "finite_scalars", "log_grids", "read_jsonl", "trackers"]


def finite_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` as floats (NaN, inf and None left out)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class JSONLTracker(GeneralTracker):
    """An accelerate tracker appending ``{"step", "time", **metrics}`` lines to
    ``<directory>/metrics.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        self.path = Path(directory) / "metrics.jsonl"
        self._fh: Any = None

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a")

    @property
    def tracker(self) -> Any:
        return self._fh

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        row = {"step": step, "time": time.time(), **finite_scalars(values)}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    @on_main_process
    def finish(self) -> None:
        self._fh.close()


def trackers(
    output_dir: str | Path, tensorboard: bool, log_with: Sequence[str]
) -> list[GeneralTracker | str]:
    """Accelerate's ``log_with`` for a run: JSONL, TensorBoard under ``<output_dir>/tb``
    (when asked), and the named integrations ('wandb', 'mlflow')."""
    out: list[GeneralTracker | str] = [JSONLTracker(output_dir)]
    if tensorboard:
        out.append(TensorBoardTracker("tb", output_dir))
    return [*out, *log_with]


def log_grids(accelerator: Any, grids: dict[str, torch.Tensor], step: int) -> None:
    """Evaluation sample grids, (3, H, W) float in [0, 1] each, as images in TensorBoard
    and W&B (the trackers that take images)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for key, grid in grids.items():
                tracker.writer.add_image(key, grid.clamp(0, 1), global_step=step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images(
                {k: [g.clamp(0, 1).permute(1, 2, 0).numpy()] for k, g in grids.items()}, step
            )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
