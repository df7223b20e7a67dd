"""The HTTP front door without Ray: the app of services/common/app.py over a stub
serving layer, called in-process with the peer address the ASGI scope carries."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from services_helpers import StubServing

from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs
from divreward.services.reward_server.compat import compat_router
from divreward.services.reward_server.router import reward_router


def _client(peer: str, auth: AuthArgs | None = None) -> TestClient:
    api = Api("reward", LimitsArgs(), auth or AuthArgs(), IngressArgs())
    app = make_app("t", "d", api, [reward_router, diversity_router, ops_router, compat_router])
    app.state.serving = StubServing()
    return TestClient(app, client=(peer, 40001))


@pytest.mark.parametrize("peer", ["10.1.2.3", "192.168.7.9", "2001:db8::7"])
def test_without_tokens_calls_from_off_the_machine_get_401(peer: str) -> None:
    c = _client(peer)
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/score"),
        ("POST", "/"),
        ("GET", "/metrics"),
    ]:
        r = c.request(method, path, headers={"authorization": "Bearer guess"})
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        err = r.json()["error"]
        assert err["kind"] == "unauthorized"
        assert f"loopback clients only and {peer} is not one" in err["message"]
    # liveness and readiness probes answer anyone
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"status": "ready", "deployments": {"stub": "ok"}}


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1"])
def test_without_tokens_loopback_is_served(peer: str) -> None:
    r = _client(peer).get("/v1/models")
    assert r.status_code == 200 and r.json()["scorers"] == {}


def test_with_tokens_any_peer_with_a_token_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIVREWARD_TEST_HTTP_TOKENS", "tok")
    c = _client("10.1.2.3", AuthArgs(enabled=True, tokens_env="DIVREWARD_TEST_HTTP_TOKENS"))
    assert c.get("/v1/models", headers={"authorization": "Bearer tok"}).status_code == 200
    r = c.get("/v1/models")
    assert (
        r.status_code == 401
        and "missing 'Authorization: Bearer <token>'" in r.json()["error"]["message"]
    )
    doc = c.get("/openapi.json", headers={"authorization": "Bearer tok"}).json()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}


def test_wrong_method_is_a_405_with_allow() -> None:
    c = _client("127.0.0.1")
    for method, path, allowed in [
        ("GET", "/v1/rewards", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("PUT", "/", "POST"),
        ("POST", "/healthz", "GET"),
    ]:
        r = c.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (method, path)
        assert r.json()["error"]["message"] == f"{path}: Method Not Allowed"


def test_openapi_documents_both_wire_forms_from_the_models() -> None:
    doc = _client("127.0.0.1").get("/openapi.json").json()
    for path, req, reply in [
        ("/v1/rewards", "RewardsRequest", "RewardsResponse"),
        ("/v1/groups", "GroupSubmission", "GroupSubmissionResult"),
    ]:
        op = doc["paths"][path]["post"]
        for media in ("application/json", "application/msgpack"):
            assert op["requestBody"]["content"][media]["schema"]["$ref"].endswith(req)
            assert op["responses"]["200"]["content"][media]["schema"]["$ref"].endswith(reply)
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics
