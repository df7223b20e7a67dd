"""Fixtures of the client tests: the session's Serve app (tests/fixtures_serve.py) seen
through its HTTP and gRPC front doors, and small deterministic image groups."""

from __future__ import annotations

import os

import pytest
from helpers import Service


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
