"""What a run writes for people to watch: JSONL (always) and TensorBoard (optional).

Stable metric names (docs/trainer.md lists them all): ``reward/<scorer>``,
``reward/total``, ``reward/mean``, ``diversity/bonus``, ``diversity/k``,
``diversity/dreamsim``, ``diversity/drift``, ``loss/policy``, ``loss/reg``,
``loss/total``, ``train/clipfrac``, ``train/approx_kl``, ``train/grad_norm``,
``train/zero_std_frac``, ``perf/wait_s``, ``perf/images_per_s``, ``perf/step_s``; and
``eval/...`` for evaluations.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsWriter", "read_jsonl"]


class MetricsWriter:
    """Appends one JSON object per call to ``<dir>/metrics.jsonl``; mirrors scalars to
    TensorBoard under ``<dir>/tb`` when ``tensorboard`` is true."""

    def __init__(self, directory: str | Path, tensorboard: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._fh = self.path.open("a")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        }
        self._fh.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
