"""The tenants file, the older token settings as tenants, and the token -> tenant check
(HTTP header, gRPC metadata, the /t/<token>/ prefix, the loopback rule)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from services_helpers import StubServing

from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.common.auth import BearerAuth
from divreward.services.common.errors import ServiceError
from divreward.services.common.routes import ops_router
from divreward.services.common.tenants import load_tenants_file
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs
from divreward.services.reward_server.compat import compat_router

GOOD = """
tenants:
  - name: team-a
    token: "tok-a"
    weight: 2
    max_queued_images: 4096
  - name: team-b
    token_sha256: "{sha_b}"
"""


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tenants.yaml"
    p.write_text(text)
    return p


def test_a_tenants_file_parses_with_defaults(tmp_path: Path) -> None:
    a, b = load_tenants_file(_write(tmp_path, GOOD.format(sha_b=_sha("tok-b"))))
    assert (a.name, a.weight, a.max_queued_images) == ("team-a", 2.0, 4096)
    assert (b.name, b.weight, b.max_queued_images) == ("team-b", 1.0, None)
    assert a.digest == hashlib.sha256(b"tok-a").digest() and b.digest == bytes.fromhex(
        _sha("tok-b")
    )
    assert "tok-a" not in repr(a) and _sha("tok-a") not in repr(a)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "- {name: a, token: x}\n- {name: a, token: y}",
            "tenants[1]: name 'a' is already used by tenants[0]",
        ),
        (
            "- {name: a, token: x}\n- {name: b, token_sha256: " + _sha("x") + "}",
            "tenants[1] ('b'): same token as tenant 'a'",
        ),
        (
            "- {name: a, token: x, token_sha256: " + _sha("x") + "}",
            "tenants[0]: tenant 'a': give exactly one of token and token_sha256",
        ),
        ("- {name: a}", "tenants[0]: tenant 'a': give exactly one of token and token_sha256"),
        ("- {name: a, token: x, weight: 0}", "tenants[0].weight: Input should be greater than 0"),
        ("- {name: a, token: x, weight: -1}", "tenants[0].weight: Input should be greater than 0"),
        (
            "- {name: a, token: x, max_queued_images: 0}",
            "tenants[0].max_queued_images: Input should be greater than or equal to 1",
        ),
        ("- {name: a, token: x, wieght: 2}", "tenants[0].wieght: Extra inputs are not permitted"),
        ("- {name: local, token: x}", "tenants[0]: name 'local' is reserved"),
        ("- {name: a, token_sha256: abc}", "token_sha256 must be 64 hex digits"),
        ("- {name: 'a b', token: x}", "tenants[0]: name 'a b': use 1-63 letters"),
    ],
)
def test_bad_entries_are_named(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, "tenants:\n" + "\n".join("  " + ln for ln in body.splitlines()))
    with pytest.raises(ValueError) as info:
        load_tenants_file(path)
    assert str(info.value).startswith(f"tenants file {path}: ")
    assert message in str(info.value)
    assert "'x'" not in str(info.value)  # never the token


def test_an_unreadable_or_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        load_tenants_file(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="tenants: List should have at least 1 item"):
        load_tenants_file(_write(tmp_path, "tenants: []\n"))


def test_old_tokens_are_tenants_of_weight_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIVREWARD_T_TOKENS", "t1, t2,t1")
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\nt3\n")
    path = _write(tmp_path, GOOD.format(sha_b=_sha("tok-b")))
    monkeypatch.setenv("DIVREWARD_T_FILE", str(path))
    args = AuthArgs(
        enabled=True,
        tokens_env="DIVREWARD_T_TOKENS",
        token_file=str(token_file),
        tenants_file_env="DIVREWARD_T_FILE",
    )
    tenants = args.load_tenants()
    assert [(t.name, t.weight) for t in tenants] == [
        ("team-a", 2.0),
        ("team-b", 1.0),
        ("token-1", 1.0),
        ("token-2", 1.0),
        ("token-3", 1.0),
    ]
    auth = BearerAuth(args)
    assert auth.check("Bearer tok-a", "10.0.0.1") == "team-a"
    assert auth.check("Bearer tok-b", "10.0.0.1", grpc=True) == "team-b"
    assert auth.check("Bearer t2", "10.0.0.1") == "token-2"
    assert auth.check_path_token("t3", "10.0.0.1") == "token-3"
    with pytest.raises(ServiceError, match="invalid bearer token"):
        auth.check("Bearer tok-c", "127.0.0.1")  # tokens on: loopback needs one too
    # a token listed both ways is an error that names the tenant, not the token
    monkeypatch.setenv("DIVREWARD_T_TOKENS", "tok-a")
    with pytest.raises(ValueError, match="also the token of tenant 'team-a'") as info:
        args.load_tenants()
    assert "tok-a" not in str(info.value)


def test_without_tokens_loopback_callers_are_the_local_tenant() -> None:
    auth = BearerAuth(AuthArgs(enabled=False))
    assert auth.check(None, "127.0.0.1") == "local"
    assert auth.check(None, None) == "local"  # in-process
    with pytest.raises(ServiceError, match="loopback clients only"):
        auth.check(None, "10.0.0.1")


def test_http_requests_carry_their_tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The auth middleware sets request.state.tenant (and the call's context) for the
    header and for the /t/<token>/ prefix alike."""
    path = _write(tmp_path, GOOD.format(sha_b=_sha("tok-b")))
    auth = AuthArgs(enabled=True, tenants_file=str(path), tokens_env="DIVREWARD_T_NONE")
    api = Api("reward", LimitsArgs(), auth, IngressArgs())
    app = make_app("t", "d", api, [ops_router, compat_router])
    app.state.serving = StubServing()
    seen: list[tuple[str, str]] = []

    from divreward.services.common.tenants import current_tenant

    @app.middleware("http")
    async def spy(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        seen.append((getattr(request.state, "tenant", "-"), current_tenant()))
        return response

    from divreward.services.common.tenants import current_call

    routes: list[str] = []

    @app.post("/compat/probe")
    async def probe() -> dict[str, str]:  # inside the auth middleware: the call's context
        routes.append(current_call().route)
        return {"tenant": current_tenant()}

    # the spy runs outside the auth middleware (added later = outermost): it sees the
    # request's state; the context variable is set only inside, so it reads 'local'
    c = TestClient(app, client=("10.1.2.3", 40001))
    assert c.get("/v1/models", headers={"authorization": "Bearer tok-b"}).status_code == 200
    assert c.post("/t/tok-a/compat/pickle", content=b"").status_code != 401
    assert [t for t, _ in seen] == ["team-b", "team-a"]
    # inside, the call's context has the tenant and the route, never the token
    assert c.post("/t/tok-a/compat/probe").json() == {"tenant": "team-a"}
    assert routes == ["/compat/probe"]
