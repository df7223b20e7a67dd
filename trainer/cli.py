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
    from divreward.trainer.config import TrainConfig, list_presets, load_config

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.help_config:
        for name, f in TrainConfig.model_fields.items():
            default = f.get_default(call_default_factory=True)
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
    from divreward.trainer.rewards import RewardsUnavailableError

    try:
        train(cfg, resume=args.resume)
    except RewardsUnavailableError as exc:
        print(f"divreward train: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


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
