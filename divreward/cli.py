"""The ``divreward`` command line. Each area adds its own sub-commands through a
``register(subparsers)`` function in its own module, listed in ``_COMMAND_MODULES``;
modules are imported lazily so ``divreward --help`` stays fast and loads no model."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules exposing ``register(subparsers: argparse._SubParsersAction) -> None``. Each
# sub-command sets ``func`` (``args -> int``) with ``parser.set_defaults(func=...)``.
_COMMAND_MODULES: tuple[str, ...] = (
    "divreward.core.cli",
    "divreward.models.cli",
    "divreward.models.weights_cli",
    "divreward.services.cli",
    "divreward.client.cli",
    "divreward.trainer.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divreward",
        description="Group-aware rewards (DiverseGRPO, DRIFT) for RL fine-tuning of "
        "text-to-image models, served on Ray Serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area has no commands (yet)
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
