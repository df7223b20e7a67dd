"""Checkpoint state files: JSON plus safetensors, read back exactly, never unpickled."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from divreward.trainer import checkpoint as ckpt


def test_state_round_trips_exactly_through_json_and_safetensors(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999))
    p.grad = torch.randn(3, 2)
    opt.step()
    random.random(), np.random.rand(), torch.rand(1)  # move every generator along
    state = {
        "step": 7,
        "lora": [p.detach().clone()],
        "optimizer": opt.state_dict(),
        "rng": ckpt.rng_state(),
        "config": {"name": "x", "betas": [0.9, 0.999], "none": None},
    }
    ckpt.save_state(ckpt.checkpoint_dir(tmp_path, 7), state)
    directory = ckpt.find_latest(tmp_path)
    assert directory == tmp_path / "checkpoints" / "step_7"
    files = sorted(f.name for f in directory.iterdir())
    assert files == [ckpt.STATE_FILE, ckpt.TENSORS_FILE]
    json.loads((directory / ckpt.STATE_FILE).read_text())  # plain JSON
    back = ckpt.load_state(directory)
    assert back["step"] == 7 and back["config"] == state["config"]
    assert torch.equal(back["lora"][0], p.detach())
    o = back["optimizer"]
    assert o["param_groups"] == opt.state_dict()["param_groups"]  # tuples and int keys kept
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(o["state"][0][k], v), k
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3)
    fresh.load_state_dict(o)
    # the RNG states come back exactly: the next draws are the same
    want = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.set_rng_state(back["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])


def test_a_pickled_state_is_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.pt").write_bytes(b"\x80\x04not read")
    with pytest.raises(ValueError, match="never unpickles"):
        ckpt.load_state(tmp_path)
    with pytest.raises(ValueError, match=r"no trainer_state\.json there"):
        ckpt.load_state(tmp_path / "missing")
