"""``make demo`` itself: starts the tiny service, trains 3 tiny SD3 steps against it,
prints the per-step numbers, stops the service and exits 0.

It runs the Makefile target with the venv stamp taken as up to date (``-o``), so that
make never reinstalls the environment under the test. The demo starts its own Ray
instance (in a subprocess, on free ports), so it is marked slow as well as serve.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP = re.compile(
    r"^step (\d)/3  reward (\S+)  bonus (\S+)  k (\S+)  diversity (\S+)  loss (\S+)  wait",
    re.MULTILINE,
)


@pytest.mark.slow
@pytest.mark.serve
@pytest.mark.timeout(600)
def test_make_demo(tiny_zoo: Any) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is not installed; the demo is a Makefile target")
    for name in ("pickscore", "clipscore", "dreamsim"):
        tiny_zoo.build(name)  # the service's tiny profile builds the rest
    proc = subprocess.run(
        ["make", "-o", ".venv/.divreward-installed", "demo", f"TINY_DIR={tiny_zoo.root}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = STEP.findall(proc.stdout)
    assert [int(s[0]) for s in steps] == [1, 2, 3], proc.stdout[-3000:]
    for _, reward, bonus, k, diversity, loss in steps:
        assert all(math.isfinite(float(v)) for v in (reward, loss, diversity))
        assert float(bonus) >= 1.0  # DiverseGRPO's E = sqrt(N / n_k)
        assert 1.0 <= float(k) <= 4.0  # clusters of a group of 4
    assert "done: 3 steps" in proc.stdout
