"""Fixtures for the trainer tests: tiny diffusers pipelines built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_pipeline_dir(family)`` -> a tiny pipeline directory of that family, built on
    first use (a few seconds) and reused for the rest of the session."""
    from divreward.trainer.models.tiny import tiny_builder

    root = tmp_path_factory.mktemp("tiny-trainer-models")

    def get(family: str) -> Path:
        return tiny_builder(family)(root / family)

    return get
