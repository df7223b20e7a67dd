"""The files of the policy pipeline that the trainer loads, for ``divreward weights
pull|check --preset`` and for the trainer's own weights resolution.

diffusers loads a pipeline from its ``model_index.json``: one folder per component. The
trainer loads every component except those its family skips for the preset's
``model_options`` (:meth:`DiffusionAdapter.skipped_components`, e.g. SD3 without T5),
and never a precision variant (no ``variant=``: the ``*.fp16.*`` files are not read), nor
the repository's single-file checkpoints at its root. So the patterns are, from
``model_index.json``: each component's config (``config.json``, the scheduler's
``scheduler_config.json``, the tokenizer's files) and the non-variant weights
(``model.safetensors``/``diffusion_pytorch_model.safetensors`` or their shards and index).

Resolution (:func:`resolve_policy`), in the order the scorers use: a local directory as
given; ``<weights_dir>/<org>/<name>`` when it holds the pipeline; else the hub id, which
diffusers resolves through the Hugging Face cache/hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from divreward.models.weights import is_hub_id, optional, pull_command, weights_root

__all__ = [
    "MODEL_INDEX",
    "PolicyWeightsError",
    "check_policy",
    "pipeline_patterns",
    "policy_hub_files",
    "resolve_policy",
]

MODEL_INDEX = "model_index.json"
# The non-variant weights files diffusers and transformers read (either format; the pull
# keeps the safetensors one when a repository has both), sharded or not.
_WEIGHTS = ("diffusion_pytorch_model", "model")


class PolicyWeightsError(FileNotFoundError):
    """The policy pipeline's weights are missing: one line naming the repository, where
    it was looked for, and the command that fetches it."""


def _weights_patterns(folder: str) -> list[str]:
    out: list[str] = []
    for stem in _WEIGHTS:
        out += [
            optional(f"{folder}/{stem}.safetensors"),
            optional(f"{folder}/{stem}.bin"),
            f"{folder}/{stem}-?????-of-?????.safetensors",
            optional(f"{folder}/{stem}.safetensors.index.json"),
        ]
    return out


def pipeline_patterns(model_index: dict[str, Any], skipped: set[str] | dict[str, Any]) -> list[str]:
    """The allow-patterns of a pipeline whose ``model_index.json`` is ``model_index``,
    without the components in ``skipped``."""
    patterns = [MODEL_INDEX]
    for name, spec in model_index.items():
        if name.startswith("_") or name in skipped or not isinstance(spec, list):
            continue
        if len(spec) != 2 or spec[1] is None:
            continue  # a component saved as null
        cls = str(spec[1])
        if "Tokenizer" in cls:
            patterns += [
                f"{name}/tokenizer_config.json",
                f"{name}/*.json",
                f"{name}/*.txt",
                f"{name}/*.model",
            ]
        elif "Scheduler" in cls:
            patterns.append(f"{name}/scheduler_config.json")
        else:
            patterns += [f"{name}/config.json", *_weights_patterns(name)]
    return patterns


def _skipped(cfg: Any) -> dict[str, None]:
    from divreward.trainer.models.registry import get_adapter

    return get_adapter(cfg.family).skipped_components(cfg.model, **cfg.model_options)


def policy_hub_files(cfg: Any, model_index: dict[str, Any] | None) -> list[tuple[str, list[str]]]:
    """``(repo, patterns)`` of the preset's policy: ``[(repo, ["model_index.json"])]``
    while its ``model_index.json`` is unknown (fetch it first), then every file the
    trainer loads. ``[]`` for a local directory or a tiny model (nothing to fetch)."""
    if not is_hub_id(cfg.model):
        return []
    if model_index is None:
        return [(cfg.model, [MODEL_INDEX])]
    return [(cfg.model, pipeline_patterns(model_index, _skipped(cfg)))]


def _component_weights_missing(directory: Path, patterns: list[str]) -> list[str]:
    """Model components (folders with a ``config.json`` pattern) that hold no weights."""
    missing = []
    for p in patterns:
        if p.endswith("/config.json"):
            folder = directory / p.rpartition("/")[0]
            if not any(
                f.name.startswith(_WEIGHTS) and f.suffix in (".safetensors", ".bin")
                for f in (folder.iterdir() if folder.is_dir() else [])
            ):
                missing.append(f"{p.rpartition('/')[0]}/<weights>")
    return missing


def check_policy(cfg: Any, weights_dir: Path | None = None, cache_dir: str | None = None) -> Any:
    """The :class:`~divreward.models.hub.RepoCheck` of the preset's policy (offline), or
    None when there is nothing to fetch (a local directory, a tiny model)."""
    from divreward.models.hub import check_repo

    first = policy_hub_files(cfg, None)
    if not first:
        return None
    repo, index_only = first[0]
    found = check_repo(repo, index_only, weights_dir=weights_dir, cache_dir=cache_dir)
    if not found.ok or found.where is None:
        return found
    index = json.loads((Path(found.where) / MODEL_INDEX).read_text())
    ((_, patterns),) = policy_hub_files(cfg, index)
    found = check_repo(repo, patterns, weights_dir=weights_dir, cache_dir=cache_dir)
    if found.where is not None:
        found.missing += _component_weights_missing(Path(found.where), patterns)
    return found


def resolve_policy(cfg: Any, command: str) -> str:
    """What ``from_pretrained`` gets for ``cfg.model``: the weights directory's copy
    when it holds the pipeline, else the model as given (a local directory, or a hub id
    for diffusers' own cache/hub resolution). With ``HF_HUB_OFFLINE`` set and the
    pipeline neither there nor in the Hugging Face cache, raise
    :class:`PolicyWeightsError` naming the places and ``command`` (what fetches it,
    e.g. ``--preset NAME``)."""
    import os

    if not is_hub_id(cfg.model):
        return str(cfg.model)
    root = weights_root_for(cfg)
    found = check_policy(cfg, root)
    if found is not None and found.ok:
        assert found.where is not None
        return found.where if root is not None and found.where.startswith(str(root)) else cfg.model
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        places = ([f"the weights directory {root}"] if root else []) + ["the Hugging Face cache"]
        missing = ", ".join((found.missing if found else [])[:6])
        raise PolicyWeightsError(
            f"the policy pipeline {cfg.model!r} is not in {' nor '.join(places)} (HF_HUB_OFFLINE=1"
            f"{'; missing ' + missing if missing else ''}). Fetch it with "
            f"`{pull_command(command, root)}`"
        )
    return str(cfg.model)


def weights_root_for(cfg: Any) -> Path | None:
    """The weights directory of the trainer (``DIVREWARD_WEIGHTS_DIR``)."""
    from divreward.models.base import LoadOptions

    return weights_root(LoadOptions())
