"""Tenants on a live service: a tenant over its quota gets 429 + Retry-After (gRPC:
RESOURCE_EXHAUSTED + retry-after trailing metadata), every admitted request is answered,
the client rides the 429s out, and two tenants that use the same namespace and group_id
never share a group.

The app has a tenants file, one image in flight at the models at a time
(``ingress.max_inflight_images: 2``, requests of 2 images) and a scorer that holds each
batch ~1.5 s (its batch wait), so that a burst of requests sent at once must queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from services_helpers import b64, make_group, png

from divreward.schema import ErrorResponse, ScoreRequest, ScoreResponse

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

TOKEN_A, TOKEN_B = "tok-team-a-live", "tok-team-b-live"
APP = "reward-tenants"


@pytest.fixture(scope="module")
def tenants_app(serve_app: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from ray import serve

    from divreward.services import launch
    from divreward.services.config import RewardAppArgs
    from divreward.services.reward_server.app import build_reward_app

    tenants = Path(tmp_path_factory.mktemp("tenants")) / "tenants.yaml"
    sha_b = hashlib.sha256(TOKEN_B.encode()).hexdigest()
    tenants.write_text(
        "tenants:\n"
        f"  - {{name: team-a, token: {TOKEN_A}, weight: 2, max_queued_images: 2}}\n"
        f"  - {{name: team-b, token_sha256: '{sha_b}'}}\n"
    )
    base = serve_app.reward_args.model_dump()
    base["scorers"] = {
        "clipscore": {
            "num_cpus": 0.1,
            "weight": 1.0,
            "batch": {"max_batch_images": 64, "batch_wait_timeout_s": 1.5},
        }
    }
    base["auth"] = {"enabled": True, "tenants_file": str(tenants)}
    base["ingress"] = {"num_cpus": 0.1, "max_inflight_images": 2, "retry_after_s": 1.0}
    launch.deploy([(build_reward_app(RewardAppArgs.model_validate(base)), APP, "/tenants")], 240)
    yield {"http": f"{serve_app.base_url}/tenants", "grpc": serve_app.extra["grpc_url"]}
    serve.delete(APP)


def _images(seed: int, n: int = 2) -> list[bytes]:
    return png(make_group(n, seed=seed))


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_http_over_quota_is_a_429_naming_the_tenant_and_the_rest_is_answered(
    tenants_app: dict[str, str],
) -> None:
    body = {"prompts": ["a", "b"], "images": b64(_images(1))}
    n = 6
    with (
        httpx.Client(base_url=tenants_app["http"], timeout=120) as c,
        concurrent.futures.ThreadPoolExecutor(n) as pool,
    ):
        responses = list(
            pool.map(lambda _: c.post("/v1/score", json=body, headers=_auth(TOKEN_A)), range(n))
        )
    statuses = sorted(r.status_code for r in responses)
    # one in flight and one waiting fit (quota 2 images); the others are over the quota
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 2 and 429 in statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            err = ErrorResponse.model_validate_json(r.content).error
            assert err.kind == "overloaded" and err.retry_after_s is not None
            assert "tenant 'team-a' is over its quota" in err.message
            assert "(max_queued_images 2)" in err.message
        else:  # every admitted request is answered in full
            assert len(ScoreResponse.model_validate_json(r.content).scores["clipscore"]) == 2


def test_grpc_over_quota_is_resource_exhausted_with_retry_after_metadata(
    tenants_app: dict[str, str],
) -> None:
    from divreward.proto import divreward_pb2_grpc as pb_grpc
    from divreward.proto.convert import to_proto

    request = to_proto(ScoreRequest(prompts=["a", "b"], images=_images(2)))
    metadata = (("application", APP), *_auth(TOKEN_A).items())

    async def burst() -> list[tuple[str, str | None, str]]:
        target = tenants_app["grpc"].removeprefix("grpc://")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.RewardServiceStub(channel)

            async def one() -> tuple[str, str | None, str]:
                call = stub.Score(request, metadata=metadata, timeout=120)
                with contextlib.suppress(grpc.RpcError):  # its code is read below
                    await call
                trailing = dict(await call.trailing_metadata() or ())
                return (await call.code()).name, trailing.get("retry-after"), await call.details()

            return await asyncio.gather(*(one() for _ in range(6)))

    results = asyncio.run(burst())
    codes = sorted(c for c, _, _ in results)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes.count("OK") >= 2
    assert "RESOURCE_EXHAUSTED" in codes
    for code, retry_after, details in results:
        if code == "RESOURCE_EXHAUSTED":
            assert retry_after is not None and int(retry_after) >= 1
            assert "tenant 'team-a' is over its quota" in details


def test_grpc_stream_over_quota_is_an_in_band_429_and_the_stream_goes_on(
    tenants_app: dict[str, str],
) -> None:
    from divreward.proto import divreward_pb2_grpc as pb_grpc
    from divreward.proto.convert import from_proto, to_proto
    from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

    subs = [
        to_proto(
            GroupSubmission(
                group_id=f"s{i}",
                request_id=f"stream-{i}",
                prompt="a",
                images=_images(30 + i),
                diversity={"method": "none"},
            )
        )
        for i in range(6)
    ]
    metadata = (("application", APP), *_auth(TOKEN_A).items())

    async def run() -> list[GroupSubmissionResult]:
        target = tenants_app["grpc"].removeprefix("grpc://")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.RewardServiceStub(channel)

            async def requests() -> Any:
                for sub in subs:
                    yield sub

            call = stub.RewardStream(requests(), metadata=metadata, timeout=120)
            return [from_proto(r, GroupSubmissionResult) async for r in call]

    results = asyncio.run(run())
    assert sorted(r.request_id for r in results) == [f"stream-{i}" for i in range(6)]
    refused = [r for r in results if r.error is not None]
    assert refused and len(refused) <= 4  # one in flight and one waiting fit
    for r in refused:
        assert r.error.status == 429 and r.error.retry_after_s is not None
        assert "tenant 'team-a' is over its quota" in r.error.message
    for r in results:
        if r.error is None:
            assert len(r.rewards) == 2


def test_the_client_rides_out_429s_and_every_request_is_answered(
    tenants_app: dict[str, str],
) -> None:
    from divreward.client import RetryPolicy, RewardClient

    policy = RetryPolicy(max_attempts=30, backoff_s=0.2, max_total_wait_s=200.0)
    client = RewardClient(tenants_app["http"], token=TOKEN_A, retry=policy, downsize=False)
    with client, concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda s: client.score(_images(10 + s), ["a", "b"]), range(5)))
    assert [len(r.scores["clipscore"]) for r in results] == [2] * 5


def test_two_tenants_with_the_same_group_id_never_share_a_group(
    tenants_app: dict[str, str],
) -> None:
    """Each tenant sends 2 parts of 2 images of group 'g' (namespace 'ns', group_size 4),
    interleaved: each tenant's group holds its own 4 images and nobody else's."""
    imgs = {TOKEN_A: _images(21, 4), TOKEN_B: _images(22, 4)}

    def part(token: str, k: int) -> httpx.Response:
        body = {
            "group_id": "g",
            "namespace": "ns",
            "group_size": 4,
            "prompt": "a photo",
            "images": b64(imgs[token][2 * k : 2 * k + 2]),
            "diversity": {"method": "none"},
        }
        return httpx.post(
            f"{tenants_app['http']}/v1/groups", json=body, headers=_auth(token), timeout=120
        )

    order = [(TOKEN_A, 0), (TOKEN_B, 0), (TOKEN_A, 1), (TOKEN_B, 1)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(part, t, k) for t, k in order]
        responses = [f.result() for f in futures]
    for r in responses:
        assert r.status_code == 200, r.text
    for token in (TOKEN_A, TOKEN_B):
        whole = httpx.post(
            f"{tenants_app['http']}/v1/score",
            json={"prompts": ["a photo"] * 4, "images": b64(imgs[token])},
            headers=_auth(token),
            timeout=120,
        ).json()["scores"]["clipscore"]
        got: list[float] = []
        for (t, _), r in zip(order, responses, strict=True):
            if t == token:
                body = r.json()
                (assembled,) = body["groups"]
                assert assembled["result"]["size"] == 4
                got.extend(body["quality"]["clipscore"])
        # the parts' scores are this tenant's own 4 images, in its order
        assert got == pytest.approx(whole, abs=1e-4)
