"""Regenerate the Python code of ``divreward.proto`` from ``divreward/proto/divreward.proto``.

Run ``python -m divreward.proto.generate`` (or ``make proto``) after editing the
``.proto``; ``--check`` exits 1 if the committed files differ from what protoc makes
(a test runs that check). Uses the protoc bundled with ``grpcio-tools``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTO = PROTO_DIR / "divreward.proto"
GENERATED = ("divreward_pb2.py", "divreward_pb2.pyi", "divreward_pb2_grpc.py")


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc into ``out_root``; return the generated files' bytes by name."""
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    # The proto is compiled under its package path (divreward/proto/divreward.proto) so
    # that the generated _pb2_grpc imports "from divreward.proto import divreward_pb2".
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO.relative_to(REPO_ROOT)),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} (arguments: {args[1:]})")
    out_dir = out_root / "divreward" / "proto"
    return {name: (out_dir / name).read_bytes() for name in GENERATED}


def stale_files() -> list[str]:
    """Names of the committed generated files that differ from a fresh protoc run."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    return [
        name
        for name, data in fresh.items()
        if not (PROTO_DIR / name).exists() or (PROTO_DIR / name).read_bytes() != data
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files: {stale}; run python -m divreward.proto.generate")
            return 1
        print("generated files are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in generate(Path(tmp)).items():
            (PROTO_DIR / name).write_bytes(data)
            print(f"wrote {PROTO_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
