"""Scorers and embedders from outside the zoo, named by import path (``"pkg.mod:factory"``).

A plugin is a factory with the signature of a registry module's loader::

    def factory(opts: LoadOptions) -> Scorer | Embedder      # opts.options = the entry's options

It is loaded and checked against the same contract as the built-in models before anything
uses it: the right base class, an ``info`` :class:`~divreward.models.base.ModelInfo` of that
kind, an embedder's ``dim``, and one probe call whose output has the contract's shape and
dtype (finite scores; finite, unit-norm embedding rows). Every failure is a
:class:`PluginError` that names the config entry and the import path, so a bad entry stops
start-up with a message that says which one.

The returned model reports the entry's name (``info.name``) and its import path
(``info.options["plugin"]``), so a service's model cards say where each number came from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from divreward.models.base import Embedder, LoadOptions, ModelInfo, ModelKind, Scorer

__all__ = ["PluginError", "check_import_path", "load_plugin", "probe_image", "resolve_factory"]

_KINDS: dict[str, type] = {"scorer": Scorer, "embedder": Embedder}


class PluginError(ValueError):
    """A plugin entry cannot be used; the message names the entry and its path."""


def _split(path: str, entry: str) -> tuple[str, str]:
    if not isinstance(path, str) or path.count(":") != 1:
        raise PluginError(
            f"{entry}: plugin {path!r} must be an import path 'package.module:factory'"
        )
    module, _, attr = path.partition(":")
    module, attr = module.strip(), attr.strip()
    if not module or not attr or not all(p.isidentifier() for p in module.split(".")):
        raise PluginError(
            f"{entry}: plugin {path!r} must be an import path 'package.module:factory'"
        )
    if not all(p.isidentifier() for p in attr.split(".")):
        raise PluginError(f"{entry}: plugin {path!r}: {attr!r} is not a Python name")
    return module, attr


def resolve_factory(path: str, entry: str) -> Callable[[LoadOptions], Any]:
    """Import ``path`` (``"pkg.mod:factory"``, the attribute may be dotted) and return the
    callable it names; :class:`PluginError` naming ``entry`` otherwise."""
    module_name, attr = _split(path, entry)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own import-time error
        raise PluginError(
            f"{entry}: plugin {path!r}: cannot import module {module_name!r} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(
                f"{entry}: plugin {path!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise PluginError(
            f"{entry}: plugin {path!r}: {attr!r} is a {type(obj).__name__}, not a callable "
            "factory(opts) -> Scorer | Embedder"
        )
    return obj  # type: ignore[no-any-return]


def check_import_path(path: str, entry: str) -> None:
    """Cheap start-up check of a config entry: the path resolves to a callable (imports
    the module; builds nothing)."""
    resolve_factory(path, entry)


def probe_image() -> np.ndarray:
    """A small deterministic (32, 32, 3) uint8 image for the probe call."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)


def _check_contract(obj: object, kind: ModelKind, entry: str, path: str) -> None:
    where = f"{entry}: plugin {path!r}"
    model: Any = obj
    base = _KINDS[kind]
    if not isinstance(obj, base):
        raise PluginError(
            f"{where}: the factory returned a {type(model).__name__}, not a "
            f"divreward.models.base.{base.__name__} (the entry is a {kind})"
        )
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        raise PluginError(
            f"{where}: the model's .info is {type(info).__name__}, not a "
            "divreward.models.base.ModelInfo"
        )
    if info.kind != kind:
        raise PluginError(f"{where}: info.kind is {info.kind!r}, expected {kind!r}")
    res = getattr(model, "max_resolution", None)
    if not isinstance(res, int) or isinstance(res, bool) or res < 1:
        raise PluginError(f"{where}: max_resolution must be a positive int, got {res!r}")
    images = [probe_image(), probe_image()[::-1].copy()]
    try:
        if kind == "scorer":
            out = model.score(images, ["a probe", "a probe"])
        else:
            dim = getattr(model, "dim", None)
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise PluginError(f"{where}: an embedder needs a positive int .dim, got {dim!r}")
            out = model.embed(images)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{where}: the probe call failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(out, np.ndarray):
        raise PluginError(
            f"{where}: {'score' if kind == 'scorer' else 'embed'} returned a "
            f"{type(out).__name__}, not a numpy array"
        )
    if kind == "scorer":
        if out.shape != (2,) or not np.issubdtype(out.dtype, np.floating):
            raise PluginError(
                f"{where}: score(2 images) returned {out.dtype} of shape {out.shape}; the "
                "contract is a float array of shape (len(images),)"
            )
    else:
        if out.shape != (2, model.dim) or out.dtype != np.float32:
            raise PluginError(
                f"{where}: embed(2 images) returned {out.dtype} of shape {out.shape}; the "
                f"contract is float32 of shape (len(images), dim={model.dim})"
            )
        norms = np.linalg.norm(out.astype(np.float64), axis=1)
        if np.isfinite(norms).all() and not np.allclose(norms, 1.0, atol=1e-3):
            raise PluginError(
                f"{where}: embed returned rows of norm {norms.round(4).tolist()}; the "
                "contract is unit-normalised rows"
            )
    if not np.isfinite(out).all():
        raise PluginError(f"{where}: the probe call returned non-finite values")


def load_plugin(
    entry: str,
    path: str,
    kind: ModelKind,
    opts: LoadOptions | None = None,
    *,
    name: str | None = None,
) -> Scorer | Embedder:
    """Build the model of config entry ``entry`` from ``path``, check it against the
    contract of ``kind``, and return it named ``name`` (default: the entry's last dotted
    part, ``scorers.mine`` -> ``mine``).

    ``opts`` is passed to the factory as is (device, dtype, source, and the entry's
    ``options``). Raises :class:`PluginError` naming ``entry`` and ``path``.
    """
    if kind not in _KINDS:
        raise PluginError(f"{entry}: kind must be 'scorer' or 'embedder', got {kind!r}")
    factory = resolve_factory(path, entry)
    opts = opts or LoadOptions()
    try:
        model = factory(opts)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{entry}: plugin {path!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from exc
    _check_contract(model, kind, entry, path)
    name = name or entry.rpartition(".")[2]
    model.info = replace(model.info, name=name, options={**model.info.options, "plugin": path})
    return model  # type: ignore[no-any-return]
