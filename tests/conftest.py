"""Session-wide test setup. Every hub access must fail at once: no weights are
downloadable on the build machines, so tests build tiny models locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Shared fixtures live in plugin modules beside this file, one per area, so that each
# area's fixtures have one owner: models (tiny model directory), serve (one Ray
# instance and the Serve applications per test session).
pytest_plugins = [
    p
    for p in ("fixtures_models", "fixtures_serve")
    if os.path.exists(os.path.join(os.path.dirname(__file__), p + ".py"))
]
