"""divreward.core stays importable in a plain process; `divreward demo-core` works."""

from __future__ import annotations

import json
import subprocess
import sys

from divreward.cli import main
from divreward.core.cli import DEMO_GROUPS, run_demo


def test_import_loads_no_heavy_framework() -> None:
    code = (
        "import sys, divreward.core\n"
        "heavy = [m for m in ('torch', 'ray', 'fastapi', 'sklearn', 'scipy.sparse') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_demo_recovers_the_known_modes() -> None:
    results = run_demo(seed=0)
    assert [r["group"] for r in results] == [g[0] for g in DEMO_GROUPS]
    for res in results:
        dg = res["diversegrpo"]
        assert dg["k"] == res["true_k"]
        sizes = next(s for name, s, _ in DEMO_GROUPS if name == res["group"])
        n = sum(sizes)
        expected_bonus = [(n / s) ** 0.5 for s in sizes for _ in range(s)]
        assert dg["bonus"] == expected_bonus
        assert abs(sum(res["drift"]["advantages"])) < 1e-9


def test_cli_json(capsys) -> None:
    assert main(["demo-core", "--json", "--seed", "1"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [r["diversegrpo"]["k"] for r in parsed] == [3, 2, 1]


def test_cli_table(capsys) -> None:
    assert main(["demo-core"]) == 0
    out = capsys.readouterr().out
    assert "group modes-5-2-1: true k=3  DiverseGRPO k=3" in out
    assert "group one-mode: true k=1  DiverseGRPO k=1" in out
