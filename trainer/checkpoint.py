"""Checkpoints that resume exactly.

``<output_dir>/checkpoints/step_<n>/`` holds:

- ``lora/pytorch_lora_weights.safetensors``: the LoRA with the EMA weights swapped in
  (the adapter's ``save_lora``), loadable by diffusers' ``pipeline.load_lora_weights``;
- ``trainer_state.pt``: the trained (not averaged) LoRA tensors, the optimiser, the EMA,
  every RNG state, the step and the config, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["find_latest", "load_state", "rng_state", "save_state", "set_rng_state"]

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)  # a crash never leaves a half-written state
    return directory / STATE_FILE


def find_latest(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    best: tuple[int, Path] | None = None
    for d in root.glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", d.name)
        if m and (d / STATE_FILE).is_file() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), d)
    return best[1] if best else None


def load_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.is_file():
        raise ValueError(
            f"--resume {str(path)!r}: no {STATE_FILE} there; give a checkpoint directory "
            "(<output_dir>/checkpoints/step_N) or 'latest'"
        )
    return torch.load(f, map_location="cpu", weights_only=False)
