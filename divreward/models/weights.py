"""Where a model's weights come from, in one place, for every loader.

A hub id ``org/name`` resolves, in this order, to

1. ``<weights_dir>/org/name`` when ``LoadOptions.weights_dir`` or the environment
   variable ``DIVREWARD_WEIGHTS_DIR`` is set; a missing file there is an error that
   names every file looked for and how to provide it;
2. the source itself when it is an existing local directory;
3. the standard Hugging Face cache / hub (``snapshot_download`` / ``hf_hub_download``);
   with ``HF_HUB_OFFLINE=1`` and nothing cached, the hub's error is re-raised as a
   :class:`WeightsNotFoundError` naming the repository, the files and the two ways to
   provide them.

Nothing ever falls back to the tiny random models. Those are written by
``divreward make-tiny-models DIR``, which leaves the marker file
:data:`TINY_MARKER` in ``DIR``; a loader whose files lie under a directory carrying that
marker reports ``profile="tiny"`` and logs a WARNING.

Importing this module imports no torch and no hub client (they are imported lazily).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from divreward.models.base import LoadOptions, ModelInfo, ModelKind

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENV_WEIGHTS_DIR",
    "TINY_MARKER",
    "TINY_WARNING",
    "Resolved",
    "WeightsNotFoundError",
    "check_device",
    "dtype_name",
    "file_sha256_prefix",
    "find_tiny_root",
    "is_hub_id",
    "note_tiny",
    "resolve_dir",
    "resolve_dtype",
    "resolve_file",
    "resolve_first",
    "weights_root",
    "write_tiny_marker",
]

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "DIVREWARD_WEIGHTS_DIR"
TINY_MARKER = "DIVREWARD_TINY_MODELS.json"
TINY_WARNING = (
    "THESE ARE TINY RANDOM MODELS FOR TESTING THE MACHINERY ONLY. Their scores and "
    "embeddings are meaningless: never use them to train or evaluate anything."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class WeightsNotFoundError(FileNotFoundError):
    """A model's weights (or config/tokenizer files) could not be found.

    The message names the repository, every file looked for, where, and how to provide
    them: ``detail`` (what was missing where) followed by ``remedy``."""

    def __init__(self, detail: str, remedy: str = "") -> None:
        self.detail = detail
        self.remedy = remedy
        super().__init__(f"{detail}. {remedy}" if remedy else detail)


@dataclass(frozen=True)
class Resolved:
    """A resolved weights location (a directory or one file)."""

    path: Path  # the directory (resolve_dir) or the file (resolve_file)
    source: str  # what ModelInfo.source reports: the hub id or the local directory
    revision: str | None  # hub snapshot commit, when resolved through the HF cache
    tiny: bool  # True when the files lie under a make-tiny-models directory


def is_hub_id(source: str) -> bool:
    """``org/name`` (and not an absolute or explicitly relative path)."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/"))


def weights_root(opts: LoadOptions) -> Path | None:
    """``LoadOptions.weights_dir``, else ``$DIVREWARD_WEIGHTS_DIR``, else None."""
    root = opts.weights_dir or os.environ.get(ENV_WEIGHTS_DIR) or None
    return Path(root).expanduser() if root else None


def _how_to_provide(repo_id: str, root: Path | None) -> str:
    target = f"{root}/{repo_id}" if root else f"<weights_dir>/{repo_id}"
    return (
        f"Provide them either (a) in a local weights directory: "
        f"`huggingface-cli download {repo_id} --local-dir {target}` and pass "
        f"--weights-dir / LoadOptions.weights_dir / ${ENV_WEIGHTS_DIR}, or a local "
        f"directory as the model's source; or (b) through the Hugging Face cache: run once "
        f"with internet access and without HF_HUB_OFFLINE=1 so that {repo_id} is downloaded."
    )


def _check_files(
    directory: Path, files: Sequence[str], repo_id: str, where: str, root: Path | None = None
) -> None:
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        looked = ", ".join(str(directory / f) for f in missing)
        raise WeightsNotFoundError(
            f"weights for {repo_id!r} not found in {where}: missing {looked}",
            _how_to_provide(repo_id, root),
        )


def _hub_error(repo_id: str, files: Sequence[str], exc: BaseException) -> WeightsNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    mode = "HF_HUB_OFFLINE is set and " if offline else ""
    return WeightsNotFoundError(
        f"weights for {repo_id!r} not found: {mode}the Hugging Face hub/cache could not "
        f"provide {', '.join(files)} ({type(exc).__name__}: {exc})",
        _how_to_provide(repo_id, None),
    )


def _snapshot_revision(path: Path) -> str | None:
    # HF cache layout: .../models--org--name/snapshots/<commit>/...
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i] == "snapshots" and i > 0 and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def _local_directory(repo_id: str, opts: LoadOptions, files: Sequence[str]) -> Path | None:
    """The directory that holds ``files`` of ``repo_id`` without the hub: a hub id under
    the weights directory, or ``repo_id`` itself as a local directory (an error names the
    missing files); None for a hub id to resolve through the hub or its cache."""
    root = weights_root(opts)
    if is_hub_id(repo_id) and root is not None:
        directory = root / repo_id
        _check_files(directory, files, repo_id, f"the weights directory {root}", root)
        return directory
    local = Path(repo_id).expanduser()
    if local.is_dir():
        _check_files(local, files, repo_id, f"the local directory {local}")
        return local
    if not is_hub_id(repo_id):
        raise WeightsNotFoundError(
            f"model source {repo_id!r} is neither an existing local directory nor a "
            "Hugging Face hub id of the form 'org/name'"
        )
    return None


def copy_into_hub_cache(src: Path, cache: Path, repo_id: str, revision: str) -> Path:
    """Copy the directory ``src`` into the Hugging Face hub cache ``cache`` (the ``hub``
    directory, or a ``cache_dir``) as ``repo_id`` at ``revision``, in the hub's own
    layout (``models--org--name/snapshots/<revision>/``, ``refs/main``), so that
    ``from_pretrained(repo_id)``/``hf_hub_download`` find it offline. For tests and
    benchmarks that exercise the real hub-id path with stand-in weights; returns the
    snapshot directory."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def resolve_dir(
    repo_id: str,
    opts: LoadOptions,
    required_files: Sequence[str],
    optional_patterns: Sequence[str] = (),
) -> Resolved:
    """Resolve ``repo_id`` (hub id or local directory) to a directory holding
    ``required_files`` (paths relative to the repository root).

    ``optional_patterns`` are extra glob patterns fetched from the hub when present
    (e.g. tokenizer files that only some repositories carry)."""
    directory = _local_directory(repo_id, opts, required_files)
    if directory is not None:
        return Resolved(directory, str(directory), None, _tiny(directory))
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(
            repo_id,
            allow_patterns=[*required_files, *optional_patterns],
            cache_dir=opts.cache_dir,
        )
    except Exception as exc:  # hub errors: offline, missing repo, network, gated...
        raise _hub_error(repo_id, required_files, exc) from exc
    directory = Path(str(snap))
    _check_files(directory, required_files, repo_id, f"the Hugging Face cache ({directory})")
    return Resolved(directory, repo_id, _snapshot_revision(directory), _tiny(directory))


def resolve_file(repo_id: str, filename: str, opts: LoadOptions) -> Resolved:
    """Resolve one file of ``repo_id`` (hub id or local directory)."""
    directory = _local_directory(repo_id, opts, [filename])
    if directory is not None:
        path = directory / filename
        return Resolved(path, str(directory), None, _tiny(path))
    try:
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(repo_id, filename, cache_dir=opts.cache_dir)
    except Exception as exc:
        raise _hub_error(repo_id, [filename], exc) from exc
    path = Path(str(got))
    return Resolved(path, repo_id, _snapshot_revision(path), _tiny(path))


def resolve_first(repo_id: str, candidates: Sequence[str], opts: LoadOptions) -> Resolved:
    """Resolve the first of ``candidates`` (e.g. ``model.safetensors`` then
    ``pytorch_model.bin``) that ``repo_id`` provides; the error names all of them."""
    errors: list[WeightsNotFoundError] = []
    for filename in candidates:
        try:
            return resolve_file(repo_id, filename, opts)
        except WeightsNotFoundError as exc:
            errors.append(exc)
    raise WeightsNotFoundError(
        f"none of {', '.join(candidates)} found for {repo_id!r} ("
        + "; ".join(e.detail for e in errors)
        + ")",
        errors[-1].remedy,
    )


def _tiny(path: Path) -> bool:
    return find_tiny_root(path) is not None


def find_tiny_root(path: str | Path) -> Path | None:
    """The nearest ancestor of ``path`` (or ``path`` itself) that carries the tiny
    marker, else None. Symlinks are not followed, so HF-cache snapshots whose cache root
    carries the marker are detected too."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        if (candidate / TINY_MARKER).is_file():
            return candidate
    return None


def note_tiny(name: str, resolved: Resolved | Sequence[Resolved]) -> str:
    """Return the profile ("tiny" or "real") for the files a loader used, logging a
    WARNING when any of them come from a tiny-model directory."""
    items = [resolved] if isinstance(resolved, Resolved) else list(resolved)
    tiny = [r for r in items if r.tiny]
    if tiny:
        log.warning("model %r loaded from %s: %s", name, tiny[0].path, TINY_WARNING)
        return "tiny"
    return "real"


def write_tiny_marker(out_dir: str | Path, seed: int, names: Sequence[str]) -> Path:
    """Write ``<out_dir>/DIVREWARD_TINY_MODELS.json`` (seed, versions, warning)."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for pkg in ("divreward", "torch", "transformers", "open_clip_torch", "dreamsim", "peft"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    path = Path(out_dir) / TINY_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "warning": TINY_WARNING,
        "seed": seed,
        "models": list(names),
        "versions": versions,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256_prefix(path: str | Path, length: int = 16) -> str:
    """First ``length`` hex digits of the file's sha256 (cached per path/size/mtime)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(real, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key][:length]


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def check_device(device: str) -> str:
    """Validate ``device`` ("cpu", "cuda", "cuda:N"); raise ValueError naming it."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(opts: LoadOptions, prefer_bf16: bool = False) -> torch.dtype:
    """The dtype policy: fp32 on CPU; on CUDA fp16 (bf16 when the model prefers it),
    unless ``opts.dtype`` names one explicitly."""
    import torch

    if opts.dtype is None:
        if opts.device.startswith("cuda"):
            return torch.bfloat16 if prefer_bf16 else torch.float16
        return torch.float32
    name = _DTYPES.get(str(opts.dtype).lower())
    if name is None:
        raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))} or None, got {opts.dtype!r}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (for ModelInfo)."""
    return str(dtype).removeprefix("torch.")


def model_info(
    name: str,
    kind: ModelKind,
    opts: LoadOptions,
    files: Sequence[Resolved],
    device: str,
    dtype: torch.dtype,
    profile: str | None = None,
) -> ModelInfo:
    """The ModelInfo of a loaded model. ``files``: what the loader used, the main weights
    file first (its source, revision and hash are reported); ``profile``: when the loader
    already asked :func:`note_tiny` (which logs), else asked here."""
    main = files[0]
    tiny = (profile or note_tiny(name, files)) == "tiny"
    return ModelInfo(
        name=name,
        kind=kind,
        source=main.source,
        revision=main.revision,
        weights_hash=file_sha256_prefix(main.path),
        profile="tiny" if tiny else "real",
        device=device,
        dtype=dtype_name(dtype),
        options=dict(opts.options),
    )
