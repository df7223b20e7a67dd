"""``divreward rewards`` against the real Serve app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import Service, make_images
from PIL import Image

from divreward.cli import main
from divreward.client import Group, RewardClient

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]


def test_rewards_command_prints_one_row_per_image(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imgs = make_images(3, 500)
    files = []
    for i, a in enumerate(imgs):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(files[-1])
    rc = main(
        [
            "rewards",
            "--url",
            service.grpc_url,
            "--prompt",
            "a cat",
            "--method",
            "drift",
            "--no-downsize",
            *map(str, files),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0
    lines = out.out.strip().splitlines()
    with RewardClient(service.http_url, downsize=False) as c:
        ref = c.rewards([Group("a cat", imgs)], diversity={"method": "drift"}).groups[0]
    scorers = sorted(n for n in ref.quality if n != "total")  # the CLI sorts them
    assert scorers == ["clipscore", "pickscore"]
    header = ["image", *scorers, "quality", "reward", "advantage", "cluster"]
    assert lines[0].split("\t") == header
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [str(f) for f in files]
    np.testing.assert_allclose([float(r[4]) for r in rows], ref.rewards, atol=1e-4)
    assert all(r[6] == "-" for r in rows)  # DRIFT has no clusters
    assert "profile 'tiny'" in out.err


def test_rewards_command_reports_errors(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["rewards", "--url", service.http_url, "--prompt", "p", str(tmp_path / "no.png")])
    assert rc == 1
    assert "cannot read file" in capsys.readouterr().err
