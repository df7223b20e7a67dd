"""The API contract: schemathesis, with all its checks, against ``/openapi.json`` of the
session's live tiny app finds nothing (no 5xx, no undocumented status or content type,
no schema-valid request refused, no schema-invalid one accepted, no 405 without Allow,
no reply off its schema, and no request held past --max-response-time).

Bounded: few examples per operation, a deterministic seed, a time limit per request and
for the whole run. Hooks (schemathesis_hooks.py) make the positive cases satisfy the
constraints a JSON schema cannot state (decodable images, the server's scorer names,
lists of matching length)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent


def test_schemathesis_finds_no_failure_and_no_hang(serve_app: Any, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "DIVREWARD_FUZZ_SCORERS": ",".join(serve_app.scorers),
    }
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{serve_app.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "8",
        "--seed",
        "11",
        "--generation-deterministic",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--max-response-time",
        "30",
        "--no-color",
        "--report-dir",
        str(tmp_path),
    ]
    out = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=480, check=False
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    summary = [line for line in text.splitlines() if " generated, " in line]
    assert summary, text[-3000:]
    # e.g. "  1234 generated, 1234 passed": nothing failed, nothing skipped as an error
    generated, _, rest = summary[-1].strip().partition(" generated, ")
    assert rest == f"{generated} passed", summary[-1]
