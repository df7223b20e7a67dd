"""``divreward rewards``: ask a running service for one group's rewards.

    divreward rewards --url http://127.0.0.1:8000 --prompt "a red bicycle" img1.png img2.png ...

The image files form one group (one prompt); the service scores them, computes the
group's diversity (``--method``, default the server's) and the rewards and advantages.
Prints one line per image (or the whole response with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from divreward.methods import method_names

    p = subparsers.add_parser(
        "rewards",
        help="rewards of one group of image files from a running service (HTTP or gRPC)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, help="PNG/JPEG/WebP files of one group")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="http://... or grpc://...")
    p.add_argument("--prompt", required=True, help="the prompt the images were made from")
    p.add_argument("--method", choices=method_names(), help="diversity method")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per attempt")
    p.add_argument("--no-downsize", action="store_true", help="send full-resolution images")
    p.add_argument("--json", action="store_true", help="print the whole response as JSON")
    add_credential_args(p)
    p.set_defaults(func=run_rewards)


def add_credential_args(p: argparse.ArgumentParser) -> None:
    """--token/--token-file/--ca-file of every command that calls the service."""
    who = p.add_mutually_exclusive_group()
    who.add_argument("--token", help="bearer token (default: $DIVREWARD_API_TOKEN)")
    who.add_argument("--token-file", type=Path, help="file holding the one bearer token")
    p.add_argument(
        "--ca-file",
        type=Path,
        help="CA certificate (PEM) for https:// and grpcs:// (default: $DIVREWARD_CA_FILE)",
    )


def credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(token, ca_file) of those flags (None: the client's own defaults)."""
    from divreward.client.tls import read_token_file

    token = read_token_file(args.token_file) if args.token_file else args.token
    return token, str(args.ca_file) if args.ca_file else None


def run_rewards(args: argparse.Namespace) -> int:
    from divreward.client import Group, RewardClient, RewardClientError
    from divreward.images import ImageError

    try:
        token, ca_file = credentials(args)
        with RewardClient(
            args.url,
            timeout_s=args.timeout,
            downsize=not args.no_downsize,
            token=token,
            ca_file=ca_file,
        ) as client:
            res = client.rewards(
                [Group(args.prompt, [str(p) for p in args.images])],
                diversity={"method": args.method} if args.method else None,
            )
    except (RewardClientError, ImageError, ValueError) as exc:
        print(f"divreward rewards: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    group = res.groups[0]
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    # sorted: over gRPC the quality map arrives in no particular order (protobuf maps)
    names = sorted(n for n in group.quality if n != "total")
    print("\t".join(["image", *names, "quality", "reward", "advantage", "cluster"]))
    labels = getattr(group.diversity, "labels", None)  # a clustering method's clusters
    for i, path in enumerate(args.images):
        row = [str(path)]
        row += [f"{group.quality[n][i]:.4f}" for n in names]
        row += [
            f"{group.quality['total'][i]:.4f}",
            f"{group.rewards[i]:.4f}",
            f"{group.advantages[i]:+.4f}",
            str(labels[i]) if labels is not None else "-",
        ]
        print("\t".join(row))
    params = res.params.model_dump(mode="json", exclude_none=True)
    print(json.dumps({"params": params}), file=sys.stderr)
    return 0
