"""Fetching and checking weights on ``huggingface_hub``'s public API, for
``divreward weights pull|check`` (:mod:`divreward.models.weights_cli`).

What to fetch is never listed here: each model's ``hub_files(opts)`` says which files its
loader reads (:func:`divreward.models.registry.hub_files`), and the trainer's policy
pipeline says which of its components it loads
(:func:`divreward.trainer.models.hub.policy_hub_files`). This module

- :func:`pull_repo`: lists the repository (``HfApi.list_repo_files``), keeps the files
  that the patterns match (the safetensors file only, when a repository also has its
  ``.bin`` twin), and downloads them with ``snapshot_download`` into the Hugging Face
  cache or, with a weights directory, into ``<weights_dir>/<org>/<name>`` (the layout
  that :mod:`divreward.models.weights` resolves). Progress bars are the hub's;
  ``HF_TOKEN`` and ``HF_ENDPOINT`` are honoured; an interrupted transfer is resumed with
  an HTTP ``Range`` request, and files already there are not fetched again. A gated,
  missing or unreachable repository is a :class:`PullError` that says which, and what to
  do.
- :func:`check_repo`: which of the patterns' required files are present, and where,
  without the network (the same order as the loaders: the weights directory when it holds
  them, else the Hugging Face cache).

Plain names in the patterns are required files; globs are fetched when the repository
has them (:func:`divreward.models.weights.optional`).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from divreward.models.weights import WEIGHTS_ALTERNATIVES

__all__ = [
    "PullError",
    "RepoCheck",
    "check_repo",
    "is_glob",
    "merge_needs",
    "pull_repo",
    "select_files",
]


class PullError(RuntimeError):
    """A repository could not be fetched; the message says why and what to do."""


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _alternatives(name: str) -> set[str]:
    """``name`` and its other-format twin (``pytorch_model.bin`` <-> ``model.safetensors``),
    in the same folder."""
    folder, _, base = name.rpartition("/")
    prefix = f"{folder}/" if folder else ""
    twins = {base}
    for bin_name, st_name in WEIGHTS_ALTERNATIVES.items():
        if base in (bin_name, st_name):
            twins |= {bin_name, st_name}
    return {prefix + t for t in twins}


def merge_needs(pairs: Iterable[tuple[str, Sequence[str]]]) -> dict[str, list[str]]:
    """One pattern list per repository (several models may read one repository)."""
    out: dict[str, list[str]] = {}
    for repo, patterns in pairs:
        have = out.setdefault(repo, [])
        have += [p for p in patterns if p not in have]
    return out


def select_files(files: Sequence[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The files of a repository listing that ``patterns`` match, with a ``.bin`` weights
    file left out when its safetensors twin is matched too; and the required (plain)
    patterns that the repository does not have (neither they nor their twin)."""
    have = set(files)
    chosen = [f for f in files if any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    picked = set(chosen)
    for f in list(chosen):
        folder, _, base = f.rpartition("/")
        twin = WEIGHTS_ALTERNATIVES.get(base)
        if twin is not None and (f"{folder}/{twin}" if folder else twin) in picked:
            chosen.remove(f)
    absent: list[str] = []
    for p in patterns:
        if not is_glob(p) and not (_alternatives(p) & have):
            either = " or ".join(sorted(a for a in _alternatives(p) if a in patterns))
            if either not in absent:
                absent.append(either)
    return chosen, absent


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _hub_failure(repo: str, exc: BaseException) -> PullError:
    """A clear message for a hub error: gated (checked first: it subclasses
    RepositoryNotFoundError), missing or private, unreachable."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = _endpoint()
    page = f"{endpoint.rstrip('/')}/{repo}"
    token = (
        "HF_TOKEN is set, but that token has no access yet" if _token() else "HF_TOKEN is not set"
    )
    if isinstance(exc, GatedRepoError):
        return PullError(
            f"{repo} is a gated repository ({token}). To get access: log in at {page}, "
            "accept its licence/access conditions there, create a read token at "
            f"{endpoint.rstrip('/')}/settings/tokens and export HF_TOKEN=<token> (Compose: "
            "in .env; Kubernetes: the Secret divreward-hf-token), then pull again"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(
            f"{repo} was not found on {endpoint} ({token}): check the name, or, for a "
            f"private repository, export HF_TOKEN with a token that can read it"
        )
    if isinstance(exc, RevisionNotFoundError):
        return PullError(f"{repo}: revision not found on {endpoint}: {exc}")
    if isinstance(exc, HfHubHTTPError):
        return PullError(f"{repo}: the hub at {endpoint} answered an error: {exc}")
    return PullError(
        f"{repo}: cannot reach the hub at {endpoint} ({type(exc).__name__}: {exc}); "
        "check the network (or HF_ENDPOINT), and that HF_HUB_OFFLINE is not set"
    )


def pull_repo(
    repo: str,
    patterns: Sequence[str],
    *,
    weights_dir: Path | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> Path:
    """Download the files of ``repo`` that ``patterns`` match (see the module doc);
    return the directory that holds them (``<weights_dir>/<repo>`` or the cache's
    snapshot). Raises :class:`PullError`."""
    from huggingface_hub import HfApi, constants, snapshot_download

    if constants.is_offline_mode():
        raise PullError(
            f"{repo}: HF_HUB_OFFLINE is set: unset it (and TRANSFORMERS_OFFLINE) to download"
        )
    endpoint, token = _endpoint(), _token()
    try:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo, revision=revision)
    except Exception as exc:  # gated, missing, unreachable: each gets its message
        raise _hub_failure(repo, exc) from exc
    chosen, absent = select_files(files, patterns)
    if absent:
        raise PullError(
            f"{repo} has no {', '.join(absent)} (it has: {', '.join(sorted(files)[:20])}"
            f"{' ...' if len(files) > 20 else ''}): is it the right repository?"
        )
    local_dir = weights_dir / repo if weights_dir is not None else None
    try:
        path = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=chosen,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
            endpoint=endpoint,
        )
    except Exception as exc:
        raise _hub_failure(repo, exc) from exc
    return Path(str(path))


@dataclass
class RepoCheck:
    """What :func:`check_repo` found for one repository."""

    repo: str
    where: str | None  # the directory that holds the files, else None
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)  # every place looked in

    @property
    def ok(self) -> bool:
        return not self.missing and self.where is not None


def _inspect(directory: Path, patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    if not directory.is_dir():
        return select_files([], patterns)
    files = [
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(directory).parts
    ]
    chosen, absent = select_files(files, patterns)
    # A sharded checkpoint's index names its shards: each must be there too.
    for index in [f for f in chosen if f.endswith(".safetensors.index.json")]:
        folder = index.rpartition("/")[0]
        try:
            shards = set(json.loads((directory / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            absent.append(f"{index} (unreadable)")
            continue
        absent += [
            f"{folder}/{s}" if folder else s
            for s in sorted(shards)
            if not (directory / folder / s).is_file()
        ]
    return chosen, absent


def _cache_snapshot(repo: str, cache_dir: str | None) -> Path | None:
    """The Hugging Face cache's snapshot of ``repo`` at ``main`` (the cache layout:
    ``models--org--name/refs/main`` holds the commit of ``snapshots/<commit>/``)."""
    from huggingface_hub import constants

    folder = Path(cache_dir or constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    try:
        commit = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def check_repo(
    repo: str,
    patterns: Sequence[str],
    *,
    weights_dir: Path | None = None,
    cache_dir: str | None = None,
) -> RepoCheck:
    """Where ``repo``'s files are, offline: ``<weights_dir>/<repo>`` when it holds every
    required file, else the Hugging Face cache; the result lists the files present and
    the required ones missing (from the place that has most of them)."""
    from huggingface_hub import constants

    candidates: list[Path] = []
    looked = []
    if weights_dir is not None:
        candidates.append(weights_dir / repo)
        looked.append(str(weights_dir / repo))
    snap = _cache_snapshot(repo, cache_dir)
    if snap is not None:
        candidates.append(snap)
    looked.append(f"the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE}")
    best: RepoCheck | None = None
    for directory in candidates:
        present, missing = _inspect(directory, patterns)
        where = str(directory) if directory.is_dir() else None
        found = RepoCheck(repo, where, present, missing, looked)
        if found.ok:
            return found
        if best is None or len(found.present) > len(best.present):
            best = found
    return best or RepoCheck(repo, None, [], select_files([], patterns)[1], looked)
