"""Fixtures of the service tests: the session's Serve app (tests/fixtures_serve.py)
seen through its HTTP and gRPC front doors."""

from __future__ import annotations

import pytest
from helpers import Service


@pytest.fixture(scope="session")
def service(serve_app: object) -> Service:
    http_url, grpc_url = serve_app.base_url, serve_app.extra["grpc_url"]  # type: ignore[attr-defined]
    return Service(http_url, grpc_url, grpc_url.removeprefix("grpc://"))
