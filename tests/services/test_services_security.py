"""The front door's security without Ray: a token in the URL path of the compatibility
routes (for the pickle clients that cannot send headers), and /docs served offline
from the packaged Swagger UI (public, like /openapi.json; operations still need a token)."""

from __future__ import annotations

import logging
import pickle
import re

import pytest
from fastapi.testclient import TestClient
from services_helpers import StubServing

from divreward.safe_pickle import safe_loads
from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs
from divreward.services.reward_server.compat import compat_router
from divreward.services.reward_server.router import reward_router

TOKENS = ("tok-team-a", "tok-team-b")


def _client(monkeypatch: pytest.MonkeyPatch, peer: str = "10.1.2.3") -> TestClient:
    monkeypatch.setenv("DIVREWARD_TEST_SEC_TOKENS", ",".join(TOKENS))
    auth = AuthArgs(enabled=True, tokens_env="DIVREWARD_TEST_SEC_TOKENS")
    api = Api("reward", LimitsArgs(), auth, IngressArgs())
    app = make_app("t", "d", api, [reward_router, diversity_router, ops_router, compat_router])
    app.state.serving = StubServing()
    return TestClient(app, client=(peer, 40001))


def _bad_pickle() -> bytes:
    # valid pickle, invalid request: the compat route itself answers (a pickled 400)
    return pickle.dumps({"images": [], "prompts": [], "metadata": {}})


@pytest.mark.parametrize("path", ["/", "/compat/pickle"])
def test_a_token_in_the_url_path_reaches_the_pickle_routes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    c = _client(monkeypatch)
    caplog.set_level(logging.DEBUG)
    # without a header, the plain route is refused
    assert c.post(path, content=_bad_pickle()).status_code == 401
    for token in TOKENS:  # each of the server's tokens opens the route
        r = c.post(f"/t/{token}{path}", content=_bad_pickle())
        # the route ran: the pickle dialect's own 4xx, a pickled {'error': ...}
        assert r.status_code == 400, r.text
        assert "error" in safe_loads(r.content)
    bad = c.post(f"/t/not-a-token{path}", content=_bad_pickle())
    assert bad.status_code == 401
    assert bad.json()["error"]["message"] == "invalid token in the URL path (/t/<token>/)"
    assert "not-a-token" not in bad.text
    # nothing on the server's side logs a token (the test's own HTTP client logs URLs)
    server_logs = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert not any(t in m for m in server_logs for t in (*TOKENS, "not-a-token"))


def test_the_url_token_opens_the_compat_routes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(monkeypatch)
    ok = c.get(f"/t/{TOKENS[0]}/compat/flow-factory/pointwise/health")
    assert ok.status_code == 200 and ok.json() == {"status": "ok"}
    r = c.get(f"/t/{TOKENS[0]}/v1/models")
    assert r.status_code == 404
    assert "compatibility routes only" in r.json()["error"]["message"]
    assert TOKENS[0] not in r.text
    # an empty token is no token
    assert c.post("/t//", content=_bad_pickle()).status_code == 401


def test_without_tokens_the_url_path_does_not_bypass_the_loopback_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = Api("reward", LimitsArgs(), AuthArgs(), IngressArgs())
    app = make_app("t", "d", api, [ops_router, compat_router])
    app.state.serving = StubServing()
    off = TestClient(app, client=("10.1.2.3", 40001))
    assert off.post("/t/anything/", content=_bad_pickle()).status_code == 401
    local = TestClient(app, client=("127.0.0.1", 40001))
    assert local.post("/t/anything/", content=_bad_pickle()).status_code == 400


def test_docs_are_offline_and_public(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(monkeypatch)
    r = c.get("/docs")  # no token: the page and its assets are public
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", r.text)
    assert urls, r.text
    for url in urls:
        assert not re.match(r"^(https?:)?//", url), f"/docs loads {url} from the network"
        asset = c.get(url)
        assert asset.status_code == 200, url
    assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"} <= set(urls)
    assert "/openapi.json" in urls
    # the schema is public; the operations it describes still need a token
    doc = c.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/docs" not in doc["paths"]
    assert c.get("/v1/models").status_code == 401
    assert c.get("/docs-assets/../openapi.json").status_code in (200, 404)
