"""``divreward weights``: fetch and check the real weights, on huggingface_hub's API.

    divreward weights pull  [NAME ...] [--profile real] [--serve-config FILE]
                            [--preset TRAIN_PRESET | --train-config FILE]
                            [--weights-dir DIR] [--cache-dir DIR] [--option K=V] [--source S]
    divreward weights check (the same selection) [--weights-dir DIR] [--json]

The selection: registered model NAMEs, the models of ``divreward serve --profile real``
without a config, the models of a Serve config file (its sources and options; tiny
applications and plugins have nothing to fetch), or a training preset/config (its policy
pipeline with only the components and precision it loads, and its in-process reward
models when it computes rewards in-process). The files of each model are its loader's
own list (``hub_files`` of its module, divreward/models/registry.py).

``pull`` downloads into the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), or with
``--weights-dir DIR`` into ``DIR/<org>/<name>/`` (what ``DIVREWARD_WEIGHTS_DIR=DIR``
and ``--weights-dir DIR`` then load). It shows the hub's progress bars, resumes an
interrupted transfer, honours ``HF_TOKEN`` (gated repositories such as SD3.5 and FLUX
need one) and ``HF_ENDPOINT``. Exit 0 when everything was fetched, 1 otherwise (each
failure says which repository, and why).

``check`` looks offline in the places the loaders look (``--weights-dir``, else
``$DIVREWARD_WEIGHTS_DIR``, then the Hugging Face cache) and lists per repository what
is present and what is missing; exit 1 when something is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["Selection", "add_serve_config", "check_selection", "register", "select"]


@dataclass
class Selection:
    """What to fetch: models with their load options, and a trainer config's policy."""

    models: list[tuple[str, Any]] = field(default_factory=list)  # (name, LoadOptions)
    train: Any = None  # a TrainConfig whose policy pipeline is wanted
    notes: list[str] = field(default_factory=list)  # what is left out, and why


def _options(items: list[str]) -> dict[str, Any]:
    from divreward.models.cli import parse_options

    return parse_options(items)


def _add_model(sel: Selection, name: str, source: str | None, options: dict[str, Any]) -> None:
    from divreward.models.base import LoadOptions

    opts = LoadOptions(source=source, options=dict(options))
    if (name, opts) not in sel.models:
        sel.models.append((name, opts))


def add_serve_config(sel: Selection, config: dict[str, Any], where: str) -> None:
    from divreward.services.config import DiversityAppArgs, RewardAppArgs
    from divreward.services.deploy_config import builder_args_model

    for app in config.get("applications", []):
        model = builder_args_model(app["import_path"])
        if model not in (RewardAppArgs, DiversityAppArgs):
            sel.notes.append(f"{where}: application {app.get('name')!r} is not divreward's")
            continue
        args = model.model_validate(app.get("args") or {})
        if args.profile == "tiny":
            sel.notes.append(
                f"{where}: application {app.get('name')!r} runs the tiny profile (built "
                "locally, nothing to fetch)"
            )
            continue
        entries = (
            dict(args.scorers)
            if isinstance(args, RewardAppArgs)
            else {args.embedder.name: args.embedder}
        )
        for name, entry in entries.items():
            if entry.plugin is not None:
                sel.notes.append(
                    f"{where}: {name} is a plugin ({entry.plugin}): fetch its weights yourself"
                )
                continue
            _add_model(sel, name, entry.source, entry.options)


def select(args: argparse.Namespace) -> Selection:
    """The selection of the command line (ValueError for a bad one)."""
    from divreward.models.registry import get_spec

    sel = Selection()
    options = _options(args.option)
    for name in args.names:
        get_spec(name)  # ValueError naming the valid names
        _add_model(sel, name, args.source, options)
    if args.profile == "tiny":
        sel.notes.append("--profile tiny: the tiny models are built locally, nothing to fetch")
    elif args.profile == "real":
        from divreward.services.deploy_config import default_config

        add_serve_config(sel, default_config("real"), "divreward serve --profile real")
    if args.serve_config is not None:
        from divreward.services.deploy_config import load_config

        add_serve_config(sel, load_config(args.serve_config), str(args.serve_config))
    if args.preset is not None or args.train_config is not None:
        from divreward.trainer.config import load_config as load_train

        cfg = load_train(args.preset, [], args.train_config)
        sel.train = cfg
        if cfg.reward_backend == "inprocess" and cfg.inprocess_profile == "real":
            for name in cfg.quality:
                _add_model(sel, name, None, cfg.inprocess_options.get(name, {}))
            emb = cfg.inprocess_embedder
            _add_model(sel, emb, None, cfg.inprocess_options.get(emb, {}))
    if not sel.models and sel.train is None and not sel.notes:
        raise ValueError(
            "nothing selected: name models (see `divreward models`), or give --profile real, "
            "--serve-config FILE or --preset NAME"
        )
    return sel


def _model_needs(sel: Selection) -> list[tuple[str, list[str]]]:
    from divreward.models.registry import hub_files

    return [pair for name, opts in sel.models for pair in hub_files(name, opts)]


def _no_hub(sel: Selection) -> list[tuple[str, Any]]:
    """Models with no hub files but a ``pull(opts, weights_dir)`` and ``local_files(opts)``
    of their own (DreamSim: GitHub release files)."""
    from divreward.models.registry import _module, get_spec, hub_files, merged_options

    out = []
    for name, opts in sel.models:
        module = _module(get_spec(name))
        if not hub_files(name, opts) and hasattr(module, "pull"):
            out.append((name, merged_options(name, opts)))
    return out


# ------------------------------------------------------------------------------- pull


def _selected(args: argparse.Namespace) -> Selection | None:
    """The selection, or None after printing why it is not one."""
    try:
        return select(args)
    except ValueError as exc:
        print(f"divreward weights {args.weights_command}: {exc}", file=sys.stderr)
        return None


def cmd_pull(args: argparse.Namespace) -> int:
    from divreward.models.hub import PullError, merge_needs, pull_repo

    sel = _selected(args)
    if sel is None:
        return 2
    for note in sel.notes:
        print(f"note: {note}")
    root = args.weights_dir.expanduser().resolve() if args.weights_dir else None
    where = f"the weights directory {root}" if root else "the Hugging Face cache"
    failures: list[str] = []

    def pull(repo: str, patterns: list[str]) -> Path | None:
        print(f"pulling {repo} ({len(patterns)} patterns) into {where}", flush=True)
        try:
            path = pull_repo(repo, patterns, weights_dir=root, cache_dir=args.cache_dir)
        except PullError as exc:
            failures.append(str(exc))
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return None
        print(f"  -> {path}", flush=True)
        return path

    needs = merge_needs(_model_needs(sel))
    if sel.train is not None:
        from divreward.trainer.models.hub import policy_hub_files

        for repo, index_only in policy_hub_files(sel.train, None):
            # model_index.json first: it says which components the pipeline has.
            path = pull(repo, index_only)
            if path is not None:
                index = json.loads((path / "model_index.json").read_text())
                needs = merge_needs([*needs.items(), *policy_hub_files(sel.train, index)])
    for repo, patterns in needs.items():
        pull(repo, patterns)
    for name, opts in _no_hub(sel):
        from divreward.models.registry import _module, get_spec

        print(f"pulling {name} (not on the hub: its own loader fetches it)", flush=True)
        try:
            print(f"  -> {_module(get_spec(name)).pull(opts, root)}", flush=True)
        except (OSError, RuntimeError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
            print(f"error: {name}: {exc}", file=sys.stderr)
    if failures:
        print(f"divreward weights pull: {len(failures)} failed (see above)", file=sys.stderr)
        return 1
    print("divreward weights pull: done")
    return 0


# ------------------------------------------------------------------------------ check


def check_selection(sel: Selection, root: Path | None, cache_dir: str | None) -> list[Any]:
    """A :class:`~divreward.models.hub.RepoCheck` per repository of the selection (and
    per model that keeps its own files), offline, where the loaders look: ``root``
    (the weights directory) when it holds the files, else the Hugging Face cache."""
    from divreward.models.hub import RepoCheck, check_repo, merge_needs
    from divreward.models.registry import _module, get_spec

    results: list[RepoCheck] = [
        check_repo(repo, patterns, weights_dir=root, cache_dir=cache_dir)
        for repo, patterns in merge_needs(_model_needs(sel)).items()
    ]
    if sel.train is not None:
        from divreward.trainer.models.hub import check_policy

        found = check_policy(sel.train, root, cache_dir)
        if found is not None:
            results.append(found)
    for name, opts in _no_hub(sel):
        here = replace(opts, weights_dir=str(root) if root else None)
        cache, present, missing = _module(get_spec(name)).local_files(here)
        where = str(cache) if present else None
        looked = [str(p) for p in dict.fromkeys([*([root / name] if root else []), cache])]
        results.append(RepoCheck(name, where, present, missing, looked))
    return results


def cmd_check(args: argparse.Namespace) -> int:
    from divreward.models.base import LoadOptions
    from divreward.models.weights import weights_root

    sel = _selected(args)
    if sel is None:
        return 2
    root = weights_root(
        LoadOptions(weights_dir=str(args.weights_dir) if args.weights_dir else None)
    )
    results = check_selection(sel, root, args.cache_dir)
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([{**r.__dict__, "ok": r.ok} for r in results], indent=2))
    else:
        for note in sel.notes:
            print(f"note: {note}")
        for r in results:
            state = "ok" if r.ok else "MISSING"
            print(f"{state:8s} {r.repo}  ({r.where or 'not found'})")
            for f in r.present:
                print(f"           present  {f}")
            for f in r.missing:
                print(f"           missing  {f}")
    if bad:
        what = _selection_words(args)
        fetch = f"divreward weights pull {what}" + (f" --weights-dir {root}" if root else "")
        print(
            f"divreward weights check: {len(bad)} of {len(results)} missing; fetch with `{fetch}`",
            file=sys.stderr,
        )
        return 1
    return 0


def _selection_words(args: argparse.Namespace) -> str:
    words = list(args.names)
    if args.profile:
        words += ["--profile", args.profile]
    if args.serve_config:
        words += ["--serve-config", str(args.serve_config)]
    if args.preset:
        words += ["--preset", args.preset]
    if args.train_config:
        words += ["--train-config", str(args.train_config)]
    return " ".join(words)


# ---------------------------------------------------------------------------- parser


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="registered models (divreward models)")
    p.add_argument(
        "--profile", choices=["real", "tiny"], help="the models of `divreward serve --profile`"
    )
    p.add_argument("--serve-config", type=Path, help="the models of a Serve config file")
    p.add_argument(
        "--preset", help="a training preset: its policy pipeline (and in-process rewards)"
    )
    p.add_argument("--train-config", type=Path, help="a training config file, like --preset")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option for the NAMEs (e.g. version=v2.1, dreamsim_type=dino_vitb16)",
    )
    p.add_argument("--source", help="hub id overriding the NAMEs' registry default")
    p.add_argument(
        "--cache-dir", help="Hugging Face hub cache (default: $HF_HUB_CACHE / $HF_HOME/hub)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "weights",
        help="fetch (pull) and check the real weights of models and training presets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="weights_command", metavar="pull|check", required=True)
    commands = {
        "pull": (
            "download the weights the selection loads",
            "download into DIR/<org>/<name> (use as DIVREWARD_WEIGHTS_DIR); default: the HF cache",
            cmd_pull,
        ),
        "check": (
            "list present and missing weights (exit 1 if any missing)",
            "weights directory to look in (default: $DIVREWARD_WEIGHTS_DIR)",
            cmd_check,
        ),
    }
    for name, (what, weights_dir, func) in commands.items():
        cmd = sub.add_parser(name, help=what, description=what)
        _selection_args(cmd)
        cmd.add_argument("--weights-dir", type=Path, help=weights_dir)
        cmd.set_defaults(func=func)
        if name == "check":
            cmd.add_argument("--json", action="store_true", help="print JSON")
