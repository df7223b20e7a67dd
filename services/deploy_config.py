"""Serve config files: strict validation and the default configurations.

Serve validates a config file against its own schema but silently ignores keys it does
not know (a misspelt ``num_replica`` is simply dropped). :func:`validate_config` checks
every key against Serve's schema models recursively, validates the known free-form
dicts against their real models (``autoscaling_config``), and validates each
application's ``args`` against its builder's typed argument model, whose models forbid
unknown keys. It is used by ``divreward serve --config`` and by the tests of the files
in ``deploy/``.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "DIVERSITY_IMPORT",
    "REWARD_IMPORT",
    "ConfigError",
    "builder_args_model",
    "default_config",
    "import_builder",
    "load_config",
    "unknown_keys",
    "validate_config",
]

REWARD_IMPORT = "divreward.services.reward_server.app:build_app"
DIVERSITY_IMPORT = "divreward.services.diversity_server.app:build_app"


class ConfigError(ValueError):
    """A Serve config file is invalid; the message lists every problem with its path."""


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], str]:
    """The pydantic models an annotation may hold, and how ('one', 'list' or 'dict')."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        found: list[type[BaseModel]] = []
        shape = "one"
        for a in args:
            models, s = _models_in(a)
            found += models
            shape = s if models else shape
        return found, shape
    if origin in (list, typing.List, tuple, typing.Sequence):  # noqa: UP006
        models, _ = _models_in(args[0]) if args else ([], "one")
        return models, "list"
    if origin in (dict, typing.Dict) and len(args) == 2:  # noqa: UP006
        models, _ = _models_in(args[1])
        return models, "dict"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation], "one"
    return [], "one"


#: Free-form dicts of Serve's schema that are validated later into a real model.
def _dict_models() -> dict[str, type[BaseModel]]:
    from ray.serve.config import AutoscalingConfig

    return {"autoscaling_config": AutoscalingConfig}


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Paths of every key in ``data`` that ``model`` (recursively) does not define."""
    if not isinstance(data, dict):
        return []
    problems: list[str] = []
    fields = model.model_fields
    aliases = {f.alias: name for name, f in fields.items() if f.alias}
    for key, value in data.items():
        name = aliases.get(key, key)
        where = f"{path}.{key}" if path else str(key)
        if name not in fields:
            valid = ", ".join(sorted(fields))
            problems.append(f"{where}: unknown key (valid here: {valid})")
            continue
        if name in _dict_models() and isinstance(value, dict):
            problems += unknown_keys(_dict_models()[name], value, where)
            continue
        models, shape = _models_in(fields[name].annotation)
        if not models:
            continue
        sub = models[0]
        if shape == "list" and isinstance(value, list):
            for i, item in enumerate(value):
                problems += unknown_keys(sub, item, f"{where}[{i}]")
        elif shape == "dict" and isinstance(value, dict):
            for k, item in value.items():
                problems += unknown_keys(sub, item, f"{where}.{k}")
        else:
            problems += unknown_keys(sub, value, where)
    return problems


def import_builder(import_path: str) -> Any:
    """The object ``module:attr`` (or ``module.attr``) names; ImportError or
    AttributeError when there is none."""
    module_name, _, attr = import_path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def builder_args_model(import_path: str) -> type[BaseModel] | None:
    """The pydantic model a builder's single argument is annotated with, if any."""
    builder = import_builder(import_path)
    params = list(inspect.signature(builder).parameters.values())
    if len(params) != 1:
        return None
    hints = typing.get_type_hints(builder)
    ann = hints.get(params[0].name)
    return ann if inspect.isclass(ann) and issubclass(ann, BaseModel) else None


def validate_config(data: dict[str, Any]) -> Any:
    """A config dict as Serve's ``ServeDeploySchema``, after the strict checks; raises
    ConfigError listing every unknown key and every invalid builder argument."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(data, dict):
        raise ConfigError(f"a Serve config must be a mapping, got {type(data).__name__}")
    problems = unknown_keys(ServeDeploySchema, data)
    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        problems += [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        schema = None
    for i, app in enumerate(data.get("applications") or []):
        import_path = app.get("import_path") if isinstance(app, dict) else None
        if not import_path:
            continue
        try:
            model = builder_args_model(import_path)
        except (ImportError, AttributeError) as exc:
            problems.append(f"applications[{i}].import_path: cannot import {import_path!r} ({exc})")
            continue
        if model is not None:
            try:
                model.model_validate(app.get("args") or {})
            except ValidationError as exc:
                problems += [
                    f"applications[{i}].args.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                ]
    if problems:
        raise ConfigError("invalid Serve config:\n  " + "\n  ".join(problems))
    return schema


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it strictly; return the plain dict."""
    text = Path(path).read_text()
    data = yaml.safe_load(text)
    validate_config(data)
    return typing.cast(dict[str, Any], data)


def default_config(
    profile: str = "real", host: str = "127.0.0.1", port: int = 8000, cpus: int | None = None
) -> dict[str, Any]:
    """What ``divreward serve`` runs without ``--config``: the diversity app at
    /diversity and the reward app at /, with the papers' defaults.

    'real': PickScore as the quality reward and the DreamSim ensemble as the embedder.
    Given ``cpus`` (the CPUs of the local Ray instance), the two models share the cores,
    ``num_cpus: cpus // 2`` each (half of one CPU below two), so each runs its forward
    pass on that many torch threads instead of one (a replica's torch threads follow its
    ``num_cpus``); the ingresses ask for none (they decode in threads between passes).
    'tiny': PickScore (weight 1) and CLIPScore (0.5) and DreamSim's single-branch
    ``dino_vitb16`` type, the cheapest tiny twins (the tiny ensemble keeps full-width
    CLIP branches and takes ~1 s per group on a CPU).
    """
    common: dict[str, Any] = {"profile": profile}
    if profile == "tiny":
        reward_args = {
            **common,
            "scorers": {"pickscore": {"weight": 1.0}, "clipscore": {"weight": 0.5}},
        }
        diversity_args = {
            **common,
            "embedder": {"name": "dreamsim", "options": {"dreamsim_type": "dino_vitb16"}},
        }
    else:
        cores: dict[str, Any] = {}
        if cpus is not None:
            cores = {"num_cpus": cpus // 2 if cpus >= 2 else cpus / 2}
            common["ingress"] = {"num_cpus": 0}
        reward_args = {**common, "scorers": {"pickscore": {"weight": 1.0, **cores}}}
        diversity_args = {**common, "embedder": {"name": "dreamsim", **cores}}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": "diversity",
                "route_prefix": "/diversity",
                "import_path": DIVERSITY_IMPORT,
                "args": diversity_args,
            },
            {
                "name": "reward",
                "route_prefix": "/",
                "import_path": REWARD_IMPORT,
                "args": reward_args,
            },
        ],
    }
