"""The one registry of models. Importing it loads no weights and touches no GPU.

Adding a model is one module in ``divreward/models/`` that defines

    def load(opts: LoadOptions) -> Scorer | Embedder        # the real loader
    def build_tiny(out_dir: pathlib.Path, seed: int) -> None  # tiny random twin, same layout

plus one line in ``REGISTRY`` below. A test fails if a registered model has no tiny
builder or no contract-test entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from divreward.models.base import Embedder, LoadOptions, ModelKind, Scorer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    module: str  # module under divreward.models implementing load/build_tiny
    default_source: str  # hub id (or a dreamsim type / open_clip name, as the module says)
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # per-model default options


# name -> spec. Keep one line per model (wrapped only for length).
REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown model {name!r}; registered models: {valid}") from None


def _module(spec: ModelSpec) -> Any:
    return importlib.import_module(f"divreward.models.{spec.module}")


def load_model(name: str, opts: LoadOptions | None = None) -> Scorer | Embedder:
    """Load a registered model with the real loader (hub id or local weights)."""
    spec = get_spec(name)
    opts = opts or LoadOptions()
    merged = {**spec.defaults, **opts.options}
    opts = replace(opts, source=opts.source or spec.default_source, options=merged)
    return _module(spec).load(opts)


def build_tiny(name: str, out_dir: str | Path, seed: int = 0) -> None:
    """Write the tiny random twin of ``name`` under ``out_dir`` (same layout as real)."""
    _module(get_spec(name)).build_tiny(Path(out_dir), seed)
