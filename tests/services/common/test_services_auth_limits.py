"""Bearer-token auth on and off, backpressure (429/503 with Retry-After) and call
timeouts (504), each on a small extra reward application deployed beside the session's
apps (one cheap tiny scorer each; they reuse the session's diversity app)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest
from services_helpers import b64, make_group, png

from divreward.schema import ErrorResponse, RewardsResponse, ScoreResponse

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

TOKEN = "s3cret-token-for-tests"


def _args(serve_app: Any, **overrides: Any) -> Any:
    from divreward.services.config import RewardAppArgs

    base = serve_app.reward_args.model_dump()
    base["scorers"] = {"clipscore": {"num_cpus": 0.1, "weight": 1.0}}
    for key, value in overrides.items():
        base[key] = value
    return RewardAppArgs.model_validate(base)


@pytest.fixture(scope="module")
def extra_apps(serve_app: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three extra apps: auth on (/auth), a tight ingress queue answering 429 (/bp1), a
    tight scorer queue (/bp2), and a call timeout shorter than a batch wait (/slow)."""
    from ray import serve

    from divreward.services import launch
    from divreward.services.reward_server.app import build_reward_app

    token_file = Path(tmp_path_factory.mktemp("auth")) / "tokens"
    token_file.write_text(f"# test tokens\n{TOKEN}\n")
    slow_scorer = {
        "num_cpus": 0.1,
        "weight": 1.0,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        # Each call holds its replica for the whole batch wait: requests pile up.
        "batch": {"max_batch_images": 64, "batch_wait_timeout_s": 0.6},
    }
    apps = {
        "auth": _args(serve_app, auth={"enabled": True, "token_file": str(token_file)}),
        "bp1": _args(
            serve_app,
            ingress={
                "num_cpus": 0.1,
                "max_ongoing_requests": 1,
                "max_queued_requests": 1,
                "backpressure_status": 429,
                "retry_after_s": 2.0,
            },
            scorers={
                "clipscore": {**slow_scorer, "max_ongoing_requests": 8, "max_queued_requests": 64}
            },
        ),
        "bp2": _args(serve_app, scorers={"clipscore": slow_scorer}),
        "slow": _args(
            serve_app,
            ingress={"num_cpus": 0.1, "call_timeout_s": 0.2},
            scorers={"clipscore": {**slow_scorer, "max_ongoing_requests": 8}},
        ),
    }
    launch.deploy(
        [(build_reward_app(a), f"reward-{name}", f"/{name}") for name, a in apps.items()],
        timeout_s=240,
    )
    yield {name: f"{serve_app.base_url}/{name}" for name in apps}
    for name in apps:
        serve.delete(f"reward-{name}")


def _score_body() -> dict[str, Any]:
    return {"prompts": ["a", "b"], "images": b64(png(make_group(2, seed=31)))}


def test_auth_on(extra_apps: dict[str, str]) -> None:
    url = extra_apps["auth"]
    body = _score_body()
    with httpx.Client(base_url=url, timeout=60) as c:
        for headers, message in [
            ({}, "missing 'Authorization: Bearer <token>'"),
            ({"authorization": "Bearer wrong"}, "invalid bearer token"),
            (
                {"authorization": f"Token {TOKEN}"},
                "the Authorization header must be 'Bearer <token>'",
            ),
        ]:
            r = c.post("/v1/score", json=body, headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
            err = ErrorResponse.model_validate_json(r.content).error
            assert err.kind == "unauthorized" and err.message == message
        for path in ("/v1/models", "/metrics", "/v1/embed"):
            assert c.get(path).status_code == 401, path
        ok = c.post("/v1/score", json=body, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert set(ScoreResponse.model_validate_json(ok.content).scores) == {"clipscore"}
        # Delegated routes are behind the same auth.
        emb = c.post(
            "/v1/embed",
            json={"images": body["images"]},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert emb.status_code == 200, emb.text
        # Probes stay open for the orchestrator.
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        doc = c.get("/openapi.json", headers={"authorization": f"Bearer {TOKEN}"}).json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_auth_off_needs_no_token(serve_app: Any) -> None:
    r = httpx.post(f"{serve_app.base_url}/v1/score", json=_score_body(), timeout=60)
    assert r.status_code == 200, r.text


def _burst(url: str, path: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    with (
        httpx.Client(base_url=url, timeout=60) as c,
        concurrent.futures.ThreadPoolExecutor(n) as pool,
    ):
        return list(pool.map(lambda _: c.post(path, json=body), range(n)))


def test_full_ingress_queue_answers_429_with_retry_after(extra_apps: dict[str, str]) -> None:
    # Ingress: 1 request at a time, 1 waiting; each request holds ~0.6 s in its scorer.
    responses = _burst(extra_apps["bp1"], "/v1/score", _score_body(), 6)
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses, statuses
    assert set(statuses) <= {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "2"
            assert "backpressure" in r.text
        else:
            assert ScoreResponse.model_validate_json(r.content).scores["clipscore"]


def test_full_model_queue_answers_503_with_retry_after(extra_apps: dict[str, str]) -> None:
    # Scorer: 1 call at a time, 1 queued; the ingress takes them all.
    body = {
        "groups": [{"prompt": "a", "images": _score_body()["images"]}],
        "diversity": {"method": "none"},
    }
    responses = _burst(extra_apps["bp2"], "/v1/rewards", body, 6)
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    for r in responses:
        if r.status_code == 503:
            err = ErrorResponse.model_validate_json(r.content).error
            assert err.kind == "overloaded" and "queue is full" in err.message
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert len(RewardsResponse.model_validate_json(r.content).groups[0].rewards) == 2


def test_model_call_timeout_is_a_504(extra_apps: dict[str, str]) -> None:
    r = httpx.post(f"{extra_apps['slow']}/v1/score", json=_score_body(), timeout=60)
    assert r.status_code == 504, r.text
    err = ErrorResponse.model_validate_json(r.content).error
    assert err.kind == "timeout" and "did not answer in time" in err.message


def _local_non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (the one its default route uses)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent for a UDP connect
            ip = str(s.getsockname()[0])
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def test_grpc_from_off_loopback_without_tokens_is_unauthenticated(serve_app: Any) -> None:
    """Serve's gRPC proxy listens on every interface. The session's apps have no tokens:
    a call that reaches it through a non-loopback address (the peer the servicer sees
    is that address) is refused, with a token or without; loopback is served."""
    import grpc

    from divreward.proto import divreward_pb2 as pb
    from divreward.proto import divreward_pb2_grpc as pb_grpc

    ip = _local_non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = serve_app.extra["grpc_port"]
    md = (("application", "reward"),)
    with grpc.insecure_channel(f"{ip}:{port}") as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        for metadata in (md, (*md, ("authorization", f"Bearer {TOKEN}"))):
            with pytest.raises(grpc.RpcError) as info:
                stub.Models(pb.ModelsRequest(), metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert f"loopback clients only and {ip} is not one" in info.value.details()
        # probes stay open
        assert isinstance(
            stub.Health(pb.HealthRequest(), metadata=md, timeout=30), pb.HealthResponse
        )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = pb_grpc.RewardServiceStub(channel).Models(
            pb.ModelsRequest(), metadata=md, timeout=30
        )
        assert set(reply.scorers) == set(serve_app.scorers)


def test_a_misnamed_diversity_app_fails_the_deploy(serve_app: Any) -> None:
    """The reward ingress resolves the diversity app's deployments when it starts, so a
    wrong ``diversity_app`` fails the deploy (not the first request)."""
    from ray import serve

    from divreward.services import launch
    from divreward.services.reward_server.app import build_reward_app

    app = build_reward_app(_args(serve_app, diversity_app="no-such-app"))
    try:
        with pytest.raises(launch.DeployError, match="no application named 'no-such-app'"):
            launch.deploy([(app, "reward-misnamed", "/misnamed")], timeout_s=120)
    finally:
        serve.delete("reward-misnamed")
