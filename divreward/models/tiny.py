"""The tiny profile: random models of every registered architecture, for testing the
machinery (loaders, services, trainer plumbing) without any real weights.

``build_all(DIR)`` writes each model's tiny twin under ``DIR`` in the **same on-disk
layout as the real checkpoints** (e.g. ``DIR/yuvalkirstain/PickScore_v1/...``), so that
``DIR`` is used exactly like a real weights directory (``LoadOptions.weights_dir`` /
``DIVREWARD_WEIGHTS_DIR``) and the models load through their real loaders. It also
writes ``DIR/DIVREWARD_TINY_MODELS.json``; loaders that read files from under that
marker report ``profile="tiny"`` and log a WARNING. Nothing ever falls back to these
models when real weights are missing.

Everything is deterministic given the seed. Importing this module loads no weights.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

from divreward.models.base import LoadOptions
from divreward.models.registry import REGISTRY, get_spec
from divreward.models.weights import TINY_MARKER, write_tiny_marker

__all__ = ["TINY_MARKER", "TINY_SEED", "build_all", "ensure_tiny_models", "tiny_load_options"]

log = logging.getLogger(__name__)

#: The seed of the tiny models the services' tiny profile and the trainer build.
TINY_SEED = 0


def build_all(out_dir: str | Path, seed: int = 0, names: Sequence[str] | None = None) -> list[str]:
    """Build the tiny twins of ``names`` (default: every registered model) under
    ``out_dir``; return the names built. Models sharing a module (hpsv2/hpsv21) are
    built once."""
    out = Path(out_dir)
    wanted = list(REGISTRY) if names is None else list(names)
    for name in wanted:
        get_spec(name)  # ValueError naming the unknown model and the valid ones
    out.mkdir(parents=True, exist_ok=True)
    # The marker goes first, so even a half-built directory can never pass for real
    # weights; it is rewritten with the final list (earlier builds + these) at the end.
    previous = _names_in_marker(out)
    write_tiny_marker(out, seed, wanted)
    done_modules: set[str] = set()
    for name in wanted:
        module = get_spec(name).module
        if module in done_modules:
            continue
        log.info("building tiny %s under %s (seed %d)", name, out, seed)
        importlib.import_module(f"divreward.models.{module}").build_tiny(out, seed)
        done_modules.add(module)
    write_tiny_marker(out, seed, sorted(set(previous) | set(wanted), key=_registry_order))
    return wanted


def _registry_order(name: str) -> int:
    order = list(REGISTRY)
    return order.index(name) if name in order else len(order)


def _names_in_marker(out: Path) -> list[str]:
    import json

    try:
        return list(json.loads((out / TINY_MARKER).read_text()).get("models", []))
    except (OSError, ValueError):
        return []


def ensure_tiny_models(directory: Path, names: Sequence[str], seed: int = TINY_SEED) -> Path:
    """Build the tiny twins of ``names`` under ``directory`` unless already there (the
    services' tiny profile and the trainer's in-process tiny rewards).

    A file lock makes concurrent builders (two applications, two processes) build once.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            missing = [n for n in names if n not in _names_in_marker(directory)]
            if missing:
                log.warning("building tiny random models %s under %s", missing, directory)
                build_all(directory, seed=seed, names=missing)  # keeps earlier names
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory


def tiny_load_options(name: str, out_dir: str | Path, device: str = "cpu") -> LoadOptions:
    """The LoadOptions that load ``name``'s tiny twin from ``out_dir`` through the real
    loader (what the services' tiny profile and the tests use).

    The tiny directory is simply used as the weights directory: the default source of
    every model resolves to ``out_dir/<org>/<name>`` (DreamSim to ``out_dir/dreamsim``).
    """
    get_spec(name)
    out = Path(out_dir)
    if not (out / TINY_MARKER).is_file():
        raise ValueError(
            f"{out} is not a tiny-model directory (no {TINY_MARKER}); build one with "
            "`divreward make-tiny-models DIR`"
        )
    return LoadOptions(weights_dir=str(out), device=device)
