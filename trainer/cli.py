"""``divreward train``: GRPO fine-tuning from a preset, a config file and ``--set``s.

divreward train --preset diversegrpo-sd35-pickscore --set reward_url=grpc://host:9000
divreward train --preset tiny-cpu --set max_steps=3 --set reward_backend=inprocess
divreward train --config my.yaml --resume latest
divreward train --list-presets
divreward train --preset drift-sd35-pickscore --show-config
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from pydantic import BaseModel

    from divreward.trainer.config import TrainConfig, list_presets, load_config

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.help_config:
        for name, f in TrainConfig.model_fields.items():
            default = f.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):  # a block (gardo): each of its fields
                print(f"{name}:  {f.description}")
                for sub, sf in type(default).model_fields.items():
                    print(f"{name}.{sub} = {getattr(default, sub)!r}\n    {sf.description}")
                continue
            print(f"{name} = {default!r}\n    {f.description}")
        return 0
    if args.preset is None and args.config is None:
        print("divreward train: give --preset NAME or --config FILE", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ValueError as exc:
        print(f"divreward train: {exc}", file=sys.stderr)
        return 2
    if args.show_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    from divreward.trainer.loop import train
    from divreward.trainer.models.hub import PolicyWeightsError, resolve_policy
    from divreward.trainer.rewards import RewardsUnavailableError

    command = f"--preset {args.preset}" if args.preset else f"--config {args.config}"
    try:
        resolve_policy(cfg, command)  # missing weights stop here, before anything loads
        train(cfg, resume=args.resume)
    except RewardsUnavailableError as exc:
        print(f"divreward train: stopped: {exc}", file=sys.stderr)
        return 1
    except (PolicyWeightsError, OSError) as exc:
        message = weights_error(exc, cfg.model, command)
        if message is None:
            raise
        print(f"divreward train: {message}", file=sys.stderr)
        return 1
    return 0


def weights_error(exc: BaseException, model: str, command: str) -> str | None:
    """One line for an error that means missing weights (ours, or a hub error anywhere in
    diffusers' chain of exceptions), naming the repository and the command that fetches
    it; None for any other error."""
    from divreward.models.weights import WeightsNotFoundError, pull_command, weights_root
    from divreward.trainer.models.hub import PolicyWeightsError

    if isinstance(exc, PolicyWeightsError | WeightsNotFoundError):
        return str(exc)
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GatedRepoError | HfHubHTTPError | LocalEntryNotFoundError):
            break
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    from divreward.models.base import LoadOptions

    fetch = pull_command(command, weights_root(LoadOptions()))
    gated = ""
    if isinstance(seen, GatedRepoError):
        gated = " (a gated repository: accept its licence on the hub and set HF_TOKEN)"
    return (
        f"the weights of {model!r} could not be loaded{gated}"
        f": {type(seen).__name__}: {str(seen).splitlines()[0] if str(seen) else ''}. "
        f"Fetch them with `{fetch}`"
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a text-to-image model with GRPO (Flow-GRPO, DiverseGRPO, DRIFT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="a preset name (see --list-presets)")
    p.add_argument("--config", help="a YAML file of config fields (instead of a preset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field (YAML value; dotted keys reach into dicts, e.g. "
        "diversity_params.beta=1.0); repeatable",
    )
    p.add_argument(
        "--resume", help="a checkpoint directory (<output_dir>/checkpoints/step_N) or 'latest'"
    )
    p.add_argument("--list-presets", action="store_true", help="print the preset names")
    p.add_argument("--show-config", action="store_true", help="print the resolved config")
    p.add_argument("--help-config", action="store_true", help="every field and its meaning")
    p.set_defaults(func=_run)
