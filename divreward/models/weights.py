"""Where a model's weights come from, in one place, for every loader.

A model source resolves, in this order, to

1. the source itself when it is an explicit local directory (a path, not ``org/name``);
   a missing file there is an error naming it;
2. ``<weights_dir>/org/name`` when ``LoadOptions.weights_dir`` or the environment
   variable ``DIVREWARD_WEIGHTS_DIR`` is set **and that directory holds the files**
   (a hub-layout directory, as ``divreward weights pull --weights-dir`` writes it);
3. the standard Hugging Face cache / hub (``snapshot_download`` / ``hf_hub_download``).

When none has them, one :class:`WeightsNotFoundError` names the repository, every place
looked in with what it lacked, and the ``divreward weights pull`` command that fetches
them (:func:`divreward.models.registry.load_model` fills in the model's name).

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
    "optional",
    "pull_command",
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

    The message names the repository, every place looked in and what was missing there,
    and the command that fetches them: ``detail`` followed by ``remedy``. One line, so
    that Serve's deployment status (which keeps an error's first line) carries all of it.
    ``repo_id``: the repository; ``looked``: the places looked in."""

    def __init__(
        self,
        detail: str,
        remedy: str = "",
        *,
        repo_id: str | None = None,
        looked: Sequence[str] = (),
    ) -> None:
        self.detail = detail
        self.remedy = remedy
        self.repo_id = repo_id
        self.looked = list(looked)
        super().__init__(f"{detail}. {remedy}" if remedy else detail)

    def with_remedy(self, remedy: str) -> WeightsNotFoundError:
        """The same error with another remedy (the caller knows the exact command)."""
        return WeightsNotFoundError(self.detail, remedy, repo_id=self.repo_id, looked=self.looked)


@dataclass(frozen=True)
class Resolved:
    """A resolved weights location (a directory or one file)."""

    path: Path  # the directory (resolve_dir) or the file (resolve_file)
    source: str  # what ModelInfo.source reports: the hub id or the local directory
    revision: str | None  # hub snapshot commit, when resolved through the HF cache
    tiny: bool  # True when the files lie under a make-tiny-models directory


def optional(name: str) -> str:
    """An allow-pattern for a file that a loader reads only when the repository has it
    (e.g. a tiny profile's architecture file): a glob that matches exactly ``name``.
    ``divreward weights check`` reports plain names that are missing, never globs."""
    return f"{name[:-1]}[{name[-1]}]"


#: A transformers/diffusers weights file and its older pickle twin: the loaders take the
#: safetensors file when a repository has both, so the pull fetches only that one and
#: the check is satisfied by either.
WEIGHTS_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
}


def is_hub_id(source: str) -> bool:
    """``org/name`` (and not an absolute or explicitly relative path)."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/"))


def weights_root(opts: LoadOptions) -> Path | None:
    """``LoadOptions.weights_dir``, else ``$DIVREWARD_WEIGHTS_DIR``, else None."""
    root = opts.weights_dir or os.environ.get(ENV_WEIGHTS_DIR) or None
    return Path(root).expanduser() if root else None


def pull_command(what: str, root: Path | None = None) -> str:
    """The ``divreward weights pull`` command that fetches ``what`` (a model name, or
    ``--preset NAME``...) into the weights directory ``root`` (else the HF cache)."""
    return f"divreward weights pull {what}" + (f" --weights-dir {root}" if root else "")


def _hub_cache_dir(opts: LoadOptions) -> str:
    if opts.cache_dir:
        return str(opts.cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _missing(directory: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (directory / f).is_file()]


def _not_found(repo_id: str, looked: Sequence[str], root: Path | None) -> WeightsNotFoundError:
    """The one error for weights found nowhere: every place looked in, and the command
    that fetches them (one line: Serve's status keeps the first line of an error)."""
    return WeightsNotFoundError(
        f"weights for {repo_id!r} not found; looked in: " + "; ".join(looked),
        f"Fetch them with `{pull_command('<model>', root)}` (the model's registry name; "
        "`divreward weights check` lists what is missing)",
        repo_id=repo_id,
        looked=looked,
    )


def _local_directory(
    repo_id: str, opts: LoadOptions, files: Sequence[str], looked: list[str]
) -> Path | None:
    """The directory that holds ``files`` of ``repo_id`` without the hub, in the order
    of the resolution: ``repo_id`` itself when it is a local directory (an explicit path:
    an error names its missing files), else ``<weights_dir>/repo_id`` **when it holds
    them**; None to go on to the Hugging Face cache/hub. ``looked`` collects each place
    looked in, and what it lacked, for the error."""
    if not is_hub_id(repo_id):
        local = Path(repo_id).expanduser()
        if not local.is_dir():
            raise WeightsNotFoundError(
                f"model source {repo_id!r} is neither an existing local directory nor a "
                "Hugging Face hub id of the form 'org/name'"
            )
        missing = _missing(local, files)
        if missing:
            raise WeightsNotFoundError(
                f"weights for {repo_id!r} not found in the local directory {local}: missing "
                + ", ".join(str(local / f) for f in missing),
                repo_id=repo_id,
                looked=[str(local)],
            )
        return local
    root = weights_root(opts)
    if root is not None:
        directory = root / repo_id
        missing = _missing(directory, files)
        if not missing:
            return directory
        looked.append(
            f"the weights directory {root} ({ENV_WEIGHTS_DIR}/--weights-dir): missing "
            + ", ".join(str(directory / f) for f in missing)
        )
    return None


def _hub_looked(repo_id: str, opts: LoadOptions, files: Sequence[str], exc: BaseException) -> str:
    from huggingface_hub import constants

    where = "HF_HUB_OFFLINE=1" if _offline() else f"hub {constants.ENDPOINT}"
    return (
        f"the Hugging Face cache {_hub_cache_dir(opts)} ({where}): {' / '.join(files)} not "
        f"available ({type(exc).__name__})"
    )


def _snapshot_revision(path: Path) -> str | None:
    # HF cache layout: .../models--org--name/snapshots/<commit>/...
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i] == "snapshots" and i > 0 and parts[i - 1].startswith("models--"):
            return parts[i + 1]
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
    looked: list[str] = []
    directory = _local_directory(repo_id, opts, required_files, looked)
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
        looked.append(_hub_looked(repo_id, opts, required_files, exc))
        raise _not_found(repo_id, looked, weights_root(opts)) from exc
    directory = Path(str(snap))
    missing = _missing(directory, required_files)
    if missing:
        looked.append(f"the Hugging Face cache {directory}: missing {', '.join(missing)}")
        raise _not_found(repo_id, looked, weights_root(opts))
    return Resolved(directory, repo_id, _snapshot_revision(directory), _tiny(directory))


def resolve_file(repo_id: str, filename: str, opts: LoadOptions) -> Resolved:
    """Resolve one file of ``repo_id`` (hub id or local directory)."""
    return resolve_first(repo_id, [filename], opts)


def resolve_first(repo_id: str, candidates: Sequence[str], opts: LoadOptions) -> Resolved:
    """Resolve the first of ``candidates`` (e.g. ``model.safetensors`` then
    ``pytorch_model.bin``) that ``repo_id`` provides, each place in the resolution order
    asked for any of them before the next; the error names all of them."""
    looked: list[str] = []
    if not is_hub_id(repo_id):
        errors: list[WeightsNotFoundError] = []
        for filename in candidates:
            try:
                directory = _local_directory(repo_id, opts, [filename], looked)
            except WeightsNotFoundError as exc:
                errors.append(exc)
                continue
            assert directory is not None
            path = directory / filename
            return Resolved(path, str(directory), None, _tiny(path))
        if len(errors) == 1:
            raise errors[0]
        raise WeightsNotFoundError(
            f"none of {', '.join(candidates)} found in the local directory {repo_id}",
            repo_id=repo_id,
            looked=[repo_id],
        )
    for filename in candidates:
        directory = _local_directory(repo_id, opts, [filename], [])
        if directory is not None:
            path = directory / filename
            return Resolved(path, str(directory), None, _tiny(path))
    root = weights_root(opts)
    if root is not None:
        files = ", ".join(str(root / repo_id / f) for f in candidates)
        looked.append(
            f"the weights directory {root} ({ENV_WEIGHTS_DIR}/--weights-dir): "
            + (f"none of {files}" if len(candidates) > 1 else f"missing {files}")
        )
    from huggingface_hub import hf_hub_download

    error: BaseException | None = None
    for filename in candidates:
        try:
            got = hf_hub_download(repo_id, filename, cache_dir=opts.cache_dir)
        except Exception as exc:  # offline, missing repo or file, network, gated...
            error = exc
            continue
        path = Path(str(got))
        return Resolved(path, repo_id, _snapshot_revision(path), _tiny(path))
    assert error is not None
    looked.append(_hub_looked(repo_id, opts, candidates, error))
    raise _not_found(repo_id, looked, root) from error


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
