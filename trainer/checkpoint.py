"""Checkpoints that resume exactly.

``<output_dir>/checkpoints/step_<n>/`` holds:

- ``lora/pytorch_lora_weights.safetensors``: the LoRA with the EMA weights swapped in
  (the adapter's ``save_lora``), loadable by diffusers' ``pipeline.load_lora_weights``;
- ``trainer_state.json`` and ``trainer_state.safetensors``: the trained (not averaged)
  LoRA tensors, the optimiser, the EMA, every RNG state, the step and the config, so
  ``--resume`` continues exactly. The state's structure and scalars are JSON; every
  tensor (and numpy array) is stored in the safetensors file and named in the JSON by
  its key. Nothing is unpickled on resume: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["find_latest", "load_state", "rng_state", "save_state", "set_rng_state"]

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "trainer_state.safetensors"
_LEGACY_FILE = "trainer_state.pt"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON-able data; its tensors and arrays go to ``tensors`` (by key)."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(
            obj.astype(np.int64 if obj.dtype.kind in "iu" else obj.dtype)
        )
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"trainer state: cannot store a {type(obj).__name__} in a checkpoint")


def _decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(data, list):
        return [_decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__ndarray__" in data:
        return tensors[data["__ndarray__"]].numpy().astype(np.dtype(data["dtype"]))
    if "__tuple__" in data:
        return tuple(_decode(v, tensors) for v in data["__tuple__"])
    if "__items__" in data:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in data["__items__"]}
    return {k: _decode(v, tensors) for k, v in data.items()}


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
    """Write ``state`` (nested dicts, lists, tuples, scalars, tensors, numpy arrays) as
    JSON plus safetensors; returns the JSON file. The JSON is written last, so a crash
    never leaves a state that :func:`find_latest` would pick."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    data = _encode(state, tensors)
    tmp = directory / (TENSORS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(directory / TENSORS_FILE)
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(directory / STATE_FILE)
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
    if not f.is_file() and (p / _LEGACY_FILE).is_file():
        raise ValueError(
            f"--resume {str(path)!r}: a pickled {_LEGACY_FILE} of an earlier version; "
            f"resume now reads {STATE_FILE} + {TENSORS_FILE} and never unpickles (a "
            "pickle runs code). Its LoRA (lora/) still loads for evaluation"
        )
    if not f.is_file():
        raise ValueError(
            f"--resume {str(path)!r}: no {STATE_FILE} there; give a checkpoint directory "
            "(<output_dir>/checkpoints/step_N) or 'latest'"
        )
    from safetensors.torch import load_file

    tensors = load_file(str(f.parent / TENSORS_FILE), device="cpu")
    return dict(_decode(json.loads(f.read_text()), tensors))
