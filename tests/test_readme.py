"""The README's Python example runs, as written, against the session's Serve app (tiny
models), over HTTP and over gRPC, and gives what the API gives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _client_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "RewardClient(" in b and ".rewards(" in b]
    return block


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_readme_client_example_runs(serve_app: Any, transport: str) -> None:
    url = serve_app.base_url if transport == "http" else serve_app.extra["grpc_url"]
    code = _client_example().replace('"http://127.0.0.1:8000"', repr(url), 1)
    assert repr(url) in code, "the README example no longer names http://127.0.0.1:8000"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)  # NHWC uint8
    scope: dict[str, Any] = {"images": images}
    exec(compile(code, str(README), "exec"), scope)  # our own README
    res = scope["res"]
    group = res.groups[0]
    assert len(group.rewards) == len(group.advantages) == len(group.diversity.labels) == 6
    assert abs(float(np.mean(group.advantages))) < 1e-6  # group-relative (Eq. 3)
    # DiverseGRPO: R = Q + beta * E with the server's beta (0.7 by default)
    beta = res.params.diversity.beta
    np.testing.assert_allclose(
        group.rewards,
        np.asarray(group.quality["total"]) + beta * np.asarray(group.diversity.bonus),
        rtol=1e-6,
        atol=1e-6,
    )
    scope["client"].close()
