"""Serve fixtures (pytest plugin loaded by tests/conftest.py).

One local Ray instance and one Serve instance per test session, on 127.0.0.1 and free
ports, running both applications on the tiny models: the diversity app at
``/diversity`` and the reward app at ``/``.

- ``serve_app``: a :class:`ServeApp` with ``base_url`` (the reward app, the front door),
  ``diversity_url`` (the diversity app on its own prefix), ``tiny_models_dir``, the app
  args, and the scorer/embedder names it runs.
- ``service``: the app's HTTP and gRPC front doors (:class:`helpers.Service`), or a server
  started by hand when ``DIVREWARD_TEST_SERVICE=http://h:p,grpc://h:p`` is set (the
  client's and the adapters' tests; tests/services/conftest.py keeps the session's app);
- ``serve_start_options(http_port, grpc_port)``: what ``serve.start`` gets (HTTP on
  loopback, and the gRPC proxy with the divreward servicer).

Tests that need it are marked ``serve``. Ray is started once, lazily, by the first test
that asks for ``serve_app``, and shut down at the end of the session.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import Service

#: What the session's apps run: cheap tiny models (a few ms per forward pass).
SERVE_SCORERS: dict[str, float] = {"pickscore": 1.0, "clipscore": 0.5}
SERVE_EMBEDDER = "dreamsim"
#: The tiny DreamSim ensemble keeps full-width CLIP branches (~1 s per 24 images on CPU);
#: its single-branch DINO type is narrow (~20-70 ms), same loader and code path.
SERVE_EMBEDDER_OPTIONS: dict[str, Any] = {"dreamsim_type": "dino_vitb16"}
#: Logical CPUs given to Ray: the deployments ask for fractions of one.
RAY_NUM_CPUS = 4
#: A custom resource the session's Ray instance advertises (and nothing else asks for),
#: so that a test can read back what its deployment's ray_actor_options asked for.
TEST_RESOURCE, TEST_RESOURCE_TOTAL = "divreward_test_slot", 100.0
DEPLOY_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_start_options(http_port: int, grpc_port: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``serve.start`` for the test session (HTTP on loopback, and
    the gRPC proxy with the divreward servicer when ``grpc_port`` is given)."""
    from divreward.services.launch import serve_start_options as options

    return options(
        host="127.0.0.1", http_port=http_port, request_timeout_s=120.0, grpc_port=grpc_port
    )


@dataclass
class ServeApp:
    base_url: str  # reward app at "/" (also serves /v1/embed, /v1/diversity, /v1/metrics)
    diversity_url: str  # the diversity app on its own route prefix
    http_port: int
    tiny_models_dir: Path
    reward_args: Any
    diversity_args: Any
    scorers: dict[str, float] = field(default_factory=dict)
    embedder: str = SERVE_EMBEDDER
    extra: dict[str, Any] = field(default_factory=dict)  # grpc_port, grpc_url


def mark_built(root: Path, names: list[str]) -> None:
    """Record the built models in the tiny marker (keeping what it already lists), so
    the service's builders find them and do not build them again."""
    from divreward.models.weights import TINY_MARKER, write_tiny_marker

    marker = root / TINY_MARKER
    try:
        body = json.loads(marker.read_text())
    except (OSError, ValueError):
        body = {}
    have = list(body.get("models", []))
    write_tiny_marker(root, int(body.get("seed", 0)), list(dict.fromkeys([*have, *names])))


def serve_app_args(tiny_dir: Path) -> tuple[Any, Any]:
    """The session's (RewardAppArgs, DiversityAppArgs): tiny profile, small CPU shares."""
    from divreward.services.config import DiversityAppArgs, RewardAppArgs

    common: dict[str, Any] = {
        "profile": "tiny",
        "tiny_models_dir": str(tiny_dir),
        "ingress": {"num_cpus": 0.1, "call_timeout_s": 60.0},
        "limits": {
            "max_images_per_request": 64,
            "max_images_per_group": 32,
            "max_groups_per_request": 8,
            "max_pixels_per_image": 256 * 256,
            "max_request_bytes": 4 * 1024 * 1024,
        },
    }
    model = {"num_cpus": 0.2, "batch": {"max_batch_images": 64, "batch_wait_timeout_s": 0.01}}
    reward = RewardAppArgs(
        scorers={name: {**model, "weight": w} for name, w in SERVE_SCORERS.items()}, **common
    )
    diversity = DiversityAppArgs(
        embedder={**model, "name": SERVE_EMBEDDER, "options": SERVE_EMBEDDER_OPTIONS}, **common
    )
    return reward, diversity


@pytest.fixture(scope="session")
def serve_app(tiny_zoo: Any) -> Iterator[ServeApp]:
    from divreward.services import launch

    names = [*SERVE_SCORERS, SERVE_EMBEDDER]
    for name in names:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, names)
    reward, diversity = serve_app_args(tiny_zoo.root)
    port = free_port()
    grpc_port = free_port()
    # replicas log every call; keep them in the Ray session logs, out of pytest output
    launch.start(
        serve_start_options(port, grpc_port),
        num_cpus=RAY_NUM_CPUS,
        ray_init_kwargs={
            "log_to_driver": False,
            "resources": {TEST_RESOURCE: TEST_RESOURCE_TOTAL},
        },
    )
    try:
        launch.deploy_services(reward, diversity, timeout_s=DEPLOY_TIMEOUT_S)
        yield ServeApp(
            base_url=f"http://127.0.0.1:{port}",
            diversity_url=f"http://127.0.0.1:{port}{launch.DIVERSITY_ROUTE}",
            http_port=port,
            tiny_models_dir=tiny_zoo.root,
            reward_args=reward,
            diversity_args=diversity,
            scorers=dict(SERVE_SCORERS),
            extra={"grpc_port": grpc_port, "grpc_url": f"grpc://127.0.0.1:{grpc_port}"},
        )
    finally:
        launch.shutdown()


@pytest.fixture(scope="session")
def serve_base_url(serve_app: ServeApp) -> str:
    return serve_app.base_url


@pytest.fixture(scope="session")
def service(request: pytest.FixtureRequest) -> Service:
    """The running reward service. ``DIVREWARD_TEST_SERVICE=http://h:p,grpc://h:p``
    points the tests at a server started by hand (to iterate without redeploying);
    otherwise the session's Serve app is used."""
    external = os.environ.get("DIVREWARD_TEST_SERVICE")
    if external:
        http_url, grpc_url = external.split(",")
    else:
        app = request.getfixturevalue("serve_app")
        http_url, grpc_url = app.base_url, app.extra["grpc_url"]
    return Service(http_url, grpc_url, grpc_url.removeprefix("grpc://"))
