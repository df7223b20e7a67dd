"""The two profiles of the services.

- ``real``: models load real weights (hub cache, or ``weights_dir`` /
  ``DIVREWARD_WEIGHTS_DIR``) in their deployments; missing weights fail the deployment
  at start with the model zoo's message naming the files and how to provide them.
- ``tiny``: the tiny random twins of the model zoo (same architectures, random weights,
  built here when missing), for exercising the machinery without weights. Logged
  loudly, and every response carries ``"profile": "tiny"`` and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from divreward.models.tiny import ensure_tiny_models
from divreward.models.weights import TINY_WARNING
from divreward.services.config import ServiceArgs

__all__ = ["ensure_tiny_models", "prepare_profile", "tiny_banner"]

log = logging.getLogger("divreward.services")


def tiny_banner(where: str) -> str:
    line = "!" * 78
    return f"\n{line}\n!! {where}: PROFILE 'tiny'. {TINY_WARNING}\n{line}"


def prepare_profile(args: ServiceArgs, names: Sequence[str]) -> Path | None:
    """Run by the application builders: for 'tiny', make sure the models exist and say
    so loudly; return the tiny directory (None for 'real')."""
    if args.profile == "real":
        return None
    directory = ensure_tiny_models(args.resolved_tiny_dir(), names)
    log.warning(tiny_banner(f"models {list(names)} from {directory}"))
    return directory
