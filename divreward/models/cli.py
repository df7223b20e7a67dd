"""Model-zoo sub-commands of ``divreward``:

- ``divreward models [--json]``: the registry (name, kind, default source, description);
- ``divreward make-tiny-models DIR [--seed N] [--only NAME ...]``: tiny random twins of
  the registered models, for tests and demos only;
- ``divreward score --model NAME --prompt TEXT [...] IMAGES...``: score image files with
  one scorer and print a table (or JSON) of path and score (``--metadata JSON``: the
  prompt's metadata, for scorers that need one, such as geneval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from divreward.models.registry import REGISTRY

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the registered models", description="List the model registry."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "make-tiny-models",
        help="build tiny random models (for tests only)",
        description="Build tiny random twins of the registered models under DIR, in the "
        "same layout as real weights (use DIR as --weights-dir). For testing the "
        "machinery only: their scores are meaningless.",
    )
    p.add_argument("dir", type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--only", nargs="+", metavar="NAME", choices=sorted(REGISTRY), help="models to build"
    )
    p.set_defaults(func=cmd_make_tiny)

    p = subparsers.add_parser(
        "score",
        help="score image files with one scorer",
        description="Score image files with a registered scorer; prints path and score.",
    )
    p.add_argument("--model", required=True, choices=sorted(REGISTRY), help="registry name")
    p.add_argument("--prompt", required=True, help="the prompt every image is scored against")
    p.add_argument(
        "--metadata",
        help="the prompt's metadata as a JSON object, for scorers that need one (geneval: "
        "a GenEval metadata line)",
    )
    p.add_argument("--weights-dir", help="local weights root (default: $DIVREWARD_WEIGHTS_DIR)")
    p.add_argument("--source", help="hub id or local directory (default: the registry's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default: by device)")
    p.add_argument("--batch-size", type=int, default=8, help="images decoded and scored per call")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="per-model option (VALUE parsed as JSON when it can be), e.g. form=torchmetrics",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, WebP)")
    p.set_defaults(func=cmd_score)


def cmd_models(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "default_source": s.default_source,
            "description": s.description,
            "defaults": s.defaults,
        }
        for s in REGISTRY.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[str(r[k]) for k in ("name", "kind", "default_source", "description")] for r in rows]
    _print_table(["name", "kind", "default source", "description"], table)
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from divreward.models.tiny import build_all
    from divreward.models.weights import TINY_WARNING

    built = build_all(args.dir, seed=args.seed, names=args.only)
    print(f"built tiny models under {args.dir}: {', '.join(built)}")
    print(f"WARNING: {TINY_WARNING}", file=sys.stderr)
    return 0


def parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def cmd_score(args: argparse.Namespace) -> int:
    try:
        return _score(args)
    except ValueError as exc:  # bad input: a clear message, no traceback
        print(f"divreward score: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:  # missing weights (WeightsNotFoundError)
        print(f"divreward score: error: {exc}", file=sys.stderr)
        return 3


def _score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from divreward.images import ImageError, to_canonical
    from divreward.models.base import LoadOptions, Scorer
    from divreward.models.registry import get_spec, load_model

    spec = get_spec(args.model)
    if spec.kind != "scorer":
        raise ValueError(f"--model {args.model} is an {spec.kind}, not a scorer")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    # Check every path before loading a model: a typo should not cost a model load.
    for path in args.images:
        if not path.is_file():
            raise ValueError(f"image file {str(path)!r} does not exist or is not a file")
    opts = LoadOptions(
        source=args.source,
        weights_dir=args.weights_dir,
        device=args.device,
        dtype=args.dtype,
        options=parse_options(args.option),
    )
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except ValueError as exc:
            raise ValueError(f"--metadata is not JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise ValueError("--metadata must be a JSON object")
    model = load_model(args.model, opts)
    assert isinstance(model, Scorer)
    scores: list[float] = []
    paths: list[Path] = args.images
    with tqdm(
        total=len(paths), unit="img", file=sys.stderr, disable=len(paths) <= args.batch_size
    ) as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start : start + args.batch_size]
            images = []
            for path in chunk:
                try:
                    images.append(to_canonical(path))
                except ImageError as exc:
                    raise ValueError(f"cannot score {str(path)!r}: {exc}") from exc
            meta = None if metadata is None else [metadata] * len(images)
            values = model.score_with_metadata(images, [args.prompt] * len(images), meta)
            scores.extend(float(s) for s in values)
            bar.update(len(chunk))
    if args.json:
        body = {
            "model": model.info.to_dict(),
            "prompt": args.prompt,
            "scores": [{"path": str(p), "score": s} for p, s in zip(paths, scores, strict=True)],
        }
        print(json.dumps(body, indent=2))
    else:
        _print_table(
            ["path", "score"], [[str(p), f"{s:.6g}"] for p, s in zip(paths, scores, strict=True)]
        )
        if model.info.profile == "tiny":
            print("WARNING: scored with a tiny random model; scores are meaningless.")
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
