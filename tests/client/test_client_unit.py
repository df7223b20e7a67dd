"""Client pieces that need no server: image encoding and downsizing, the retry policy,
the HTTP/gRPC retry loops against scripted transports (httpx.MockTransport, a local
grpcio server whose answers the test dictates), and the blocking client as a wrapper of
the async one (its settings, its background loop, submit's copies, stream's bound)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import re
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from divreward.client import (
    AsyncRewardClient,
    Group,
    RetryPolicy,
    RewardClient,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
    ServiceUnavailableError,
)
from divreward.client._http import AsyncHttpTransport, HttpRoute
from divreward.client._requests import ImageOptions, rewards_request
from divreward.client.client import ClientSettings
from divreward.client.encoding import downsize, encode_images
from divreward.images import ImageError, decode_image
from divreward.proto import divreward_pb2 as pb
from divreward.proto import divreward_pb2_grpc as pb_grpc
from divreward.proto.convert import from_proto, to_proto
from divreward.schema import AdvantageConfig, ErrorInfo, HealthResponse, RewardsRequest
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

FAST = RetryPolicy(max_attempts=4, backoff_s=0.0, max_backoff_s=0.0, jitter=0.0)


# ------------------------------------------------------------------ images
def _decode_all(blobs: list[bytes]) -> list[np.ndarray]:
    return [decode_image(b, i) for i, b in enumerate(blobs)]


def test_torch_nchw_float_is_encoded_losslessly() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 30, generator=g)  # (N, C, H, W) in [0, 1]
    out = _decode_all(encode_images(x))
    expected = np.rint(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    assert [o.shape for o in out] == [(20, 30, 3)] * 3
    np.testing.assert_array_equal(np.stack(out), expected)


def test_numpy_nhwc_uint8_and_pil_are_encoded_losslessly() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(2, 17, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.stack(_decode_all(encode_images(arr))), arr)
    pils = [Image.fromarray(a) for a in arr]
    np.testing.assert_array_equal(np.stack(_decode_all(encode_images(pils))), arr)


def test_jpeg_and_webp_are_lossy_but_close() -> None:
    arr = np.full((1, 32, 32, 3), 128, np.uint8)
    for fmt in ("JPEG", "WEBP"):
        (blob,) = encode_images(arr, fmt=fmt, quality=90)
        assert Image.open(io.BytesIO(blob)).format == fmt
        assert np.abs(decode_image(blob).astype(int) - 128).max() <= 3
    with pytest.raises(ValueError, match="image_format must be one of"):
        encode_images(arr, fmt="GIF")


@pytest.mark.parametrize(
    "shape, max_side, expected",
    [
        ((512, 1024), 224, (224, 448)),  # shorter side (H) brought to max_side
        ((1024, 512), 224, (448, 224)),
        ((300, 300), 224, (224, 224)),
        ((200, 800), 224, (200, 800)),  # shorter side already small: untouched
        ((100, 100), 224, (100, 100)),  # never upsampled
    ],
)
def test_downsize_keeps_the_shorter_side_the_models_need(
    shape: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    img = np.zeros((*shape, 3), np.uint8)
    out = downsize(img, max_side)
    assert out.shape[:2] == expected and out.dtype == np.uint8
    if expected == shape:
        assert out is img


def test_downsize_preserves_content() -> None:
    # A smooth gradient resampled to half size stays within a few grey levels.
    ramp = np.linspace(0, 255, 448, dtype=np.float64)
    img = np.repeat(np.repeat(ramp[None, :, None], 448, axis=0), 3, axis=2).astype(np.uint8)
    out = downsize(img, 224)
    ref = img[::2, ::2].astype(int)
    assert out.shape == (224, 224, 3)
    assert np.abs(out.astype(int) - ref).max() <= 3
    (blob,) = encode_images(img[None], max_side=224)
    assert decode_image(blob).shape == (224, 224, 3)


def test_bad_images_are_refused_naming_the_index() -> None:
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 0, 0] = 1.5
    with pytest.raises(ImageError, match=r"image 1: float pixel values must lie in \[0, 1\]"):
        encode_images(x)
    with pytest.raises(ImageError, match=r"a batch array must be \(N, H, W, C\)"):
        encode_images(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="images is empty"):
        encode_images([])
    with pytest.raises(ValueError, match="max_side must be >= 1"):
        downsize(np.zeros((4, 4, 3), np.uint8), 0)


def test_rewards_request_sends_only_what_the_caller_set() -> None:
    req = rewards_request(
        [Group("a cat", np.zeros((2, 8, 8, 3), np.uint8), group_id="g0")],
        quality=None,
        diversity={"method": "drift", "lam": 0.25},
        advantage=None,
        return_embeddings=False,
        request_id="rid-1",
        opts=ImageOptions(),
    )
    body = req.model_dump(mode="python", exclude_unset=True)
    assert set(body) == {"groups", "diversity", "request_id"}
    assert body["diversity"] == {"method": "drift", "lam": 0.25}
    assert isinstance(body["groups"][0]["images"][0], bytes)
    with pytest.raises(ValueError, match=r"diversity\.drift\.lam"):
        rewards_request(
            [("p", np.zeros((1, 8, 8, 3), np.uint8))],
            quality=None,
            diversity={"method": "drift", "lam": -1},
            advantage=None,
            return_embeddings=False,
            request_id="r",
            opts=ImageOptions(),
        )
    with pytest.raises(TypeError, match=r"groups\[0\] must be a Group or a \(prompt, images\)"):
        rewards_request(
            [np.zeros((1, 8, 8, 3), np.uint8)],  # type: ignore[list-item]
            quality=None,
            diversity=None,
            advantage=None,
            return_embeddings=False,
            request_id="r",
            opts=ImageOptions(),
        )


# ------------------------------------------------------------------ retry policy
def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    p = RetryPolicy(max_attempts=6, backoff_s=0.5, max_backoff_s=3.0, jitter=0.0)
    assert [p.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    j = RetryPolicy(backoff_s=1.0, max_backoff_s=100.0, jitter=0.2)
    delays = [j.delay(1) for _ in range(200)]
    assert min(delays) >= 1.0 and max(delays) <= 1.2 and len(set(delays)) > 1
    # Retry-After is a floor (a server's quota says when to come back), up to its cap
    assert p.delay(1, retry_after_s=2.5) == 2.5
    assert p.delay(1, retry_after_s=30.0) == 30.0
    assert p.delay(1, retry_after_s=600.0) == 60.0  # max_retry_after_s
    # ... stretched by the jitter, never shortened by it
    after = [j.delay(1, retry_after_s=10.0) for _ in range(200)]
    assert min(after) >= 10.0 and max(after) <= 12.0 and len(set(after)) > 1


def test_retries_stop_at_the_attempts_or_the_total_wait() -> None:
    p = RetryPolicy(
        max_attempts=4, backoff_s=1.0, max_backoff_s=8.0, jitter=0.0, max_total_wait_s=10.0
    )
    assert p.next_wait(1, 0.0) == 1.0
    assert p.next_wait(3, 3.0) == 4.0
    assert p.next_wait(4, 7.0) is None  # the 4th attempt was the last
    assert p.next_wait(2, 0.0, retry_after_s=9.0) == 9.0
    assert p.next_wait(2, 2.0, retry_after_s=9.0) is None  # 2 + 9 > 10 s in all


def test_a_429_is_retried_after_retry_after_until_the_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("divreward.client._http.asyncio.sleep", sleep)
    quota = "tenant 'team-a' is over its quota: 4096 images already waiting"
    script = Script([_error(429, "overloaded", quota, **{"retry-after": "12"})])
    policy = RetryPolicy(max_attempts=10, backoff_s=0.1, jitter=0.0, max_total_wait_s=40.0)
    with pytest.raises(RewardServiceError) as info:
        _transport(script, policy).call(ROUTE, _request(), HealthResponse, "r")
    assert waits == [12.0, 12.0, 12.0]  # a 4th wait would pass 40 s
    err = info.value
    assert err.status == 429 and err.attempts == 4 and len(script.seen) == 4
    assert str(err).startswith(f"server answered 429 after 4 attempts: overloaded: {quota}")
    assert "gave up after 4 attempt(s) and 36.0 s of waiting" in str(err)
    assert "max_total_wait_s=40" in str(err)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"backoff_s": -1.0}, "backoff_s and max_backoff_s must be >= 0"),
        ({"jitter": 1.5}, r"jitter must lie in \[0, 1\]"),
    ],
)
def test_retry_policy_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


# ------------------------------------------------------------------ HTTP retries
class Script:
    """A scripted server: each request takes the next answer; records what it saw."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _ok() -> httpx.Response:
    return httpx.Response(
        200,
        content=msgpack.packb({"status": "ok"}),
        headers={"content-type": "application/msgpack"},
    )


def _error(status: int, kind: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"kind": kind, "message": message, "status": status}, "request_id": "x"}
    return httpx.Response(status, json=body, headers=headers)


class _Http:
    """The HTTP transport on a scripted server, one call per event loop."""

    def __init__(self, script: Script, retry: RetryPolicy = FAST, **kw: Any) -> None:
        self.script, self.retry, self.kw = script, retry, kw

    def call(
        self, route: HttpRoute, request: Any, model: type[HealthResponse], request_id: str
    ) -> HealthResponse:
        async def run() -> HealthResponse:
            t = AsyncHttpTransport(
                "http://reward.test",
                transport=httpx.MockTransport(self.script),
                timeout_s=5,
                retry=self.retry,
                **self.kw,
            )
            try:
                return await t.call(route, request, model, request_id)
            finally:
                await t.aclose()

        return asyncio.run(run())


def _transport(script: Script, retry: RetryPolicy = FAST, **kw: Any) -> _Http:
    return _Http(script, retry, **kw)


ROUTE = HttpRoute("POST", "/v1/rewards")


def _request() -> RewardsRequest:
    return RewardsRequest.model_validate(
        {"groups": [{"prompt": "p", "images": [b"\x89PNG-bytes"]}], "request_id": "rid-7"}
    )


def test_transient_errors_are_retried_with_the_same_request_id_and_body() -> None:
    script = Script(
        [
            httpx.ConnectError("connection refused"),
            _error(503, "overloaded", "queue full", **{"retry-after": "0"}),
            _error(500, "internal", "replica died"),
            _ok(),
        ]
    )
    out = _transport(script).call(ROUTE, _request(), HealthResponse, "rid-7")
    assert out == HealthResponse(status="ok")
    assert len(script.seen) == 4
    assert {r.headers["x-request-id"] for r in script.seen} == {"rid-7"}
    bodies = {r.content for r in script.seen}
    assert len(bodies) == 1  # byte-identical retries
    body = msgpack.unpackb(bodies.pop())
    assert body == {
        "groups": [{"prompt": "p", "images": [b"\x89PNG-bytes"]}],
        "request_id": "rid-7",
    }
    assert script.seen[0].headers["content-type"] == "application/msgpack"


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, "invalid_image"),
        (422, "invalid_request"),
        (413, "payload_too_large"),
        (409, "conflict"),
    ],
)
def test_client_errors_are_raised_at_once_with_the_server_message(status: int, kind: str) -> None:
    script = Script([_error(status, kind, "groups[1].images[3]: cannot be decoded")])
    with pytest.raises(RewardRequestError) as info:
        _transport(script).call(ROUTE, _request(), HealthResponse, "rid-7")
    assert len(script.seen) == 1
    err = info.value
    assert err.status == status and err.attempts == 1 and err.request_id == "rid-7"
    assert str(err) == (
        f"server answered {status}: {kind}: groups[1].images[3]: cannot be decoded "
        "[request_id=rid-7]"
    )
    assert isinstance(err, ValueError)


def test_a_serve_proxy_404_during_a_restart_is_retried_an_app_404_is_not() -> None:
    # Serve's proxy is up before the application is deployed again; it answers 404 in
    # plain text pointing to /-/routes. The application's own 404s are ErrorResponse JSON.
    proxy_404 = httpx.Response(
        404, text="Path '/v1/rewards' not found. Ping http://127.0.0.1:8000/-/routes for routes."
    )
    script = Script([proxy_404, proxy_404, _ok()])
    assert _transport(script).call(ROUTE, _request(), HealthResponse, "r").status == "ok"
    assert len(script.seen) == 3
    script = Script([_error(404, "unknown_name", "unknown Flow-Factory mode 'x'")])
    with pytest.raises(RewardRequestError, match="unknown Flow-Factory mode"):
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")
    assert len(script.seen) == 1
    script = Script([proxy_404])
    with pytest.raises(RewardServiceError, match=r"404 after 4 attempts.*not deployed yet\?"):
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")


def test_5xx_until_the_budget_runs_out_raises_the_last_server_message() -> None:
    script = Script([_error(502, "internal", "bad gateway")])
    with pytest.raises(
        RewardServiceError, match=r"server answered 502 after 4 attempts: internal: bad gateway"
    ) as info:
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")
    assert info.value.attempts == 4 and len(script.seen) == 4


def test_server_down_raises_service_unavailable_after_the_budget() -> None:
    script = Script([httpx.ConnectError("[Errno 111] Connection refused")])
    with pytest.raises(
        ServiceUnavailableError,
        match=r"cannot reach http://reward\.test after 4 attempt\(s\): ConnectError: \[Errno 111\]",
    ) as info:
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")
    assert info.value.attempts == 4 and len(script.seen) == 4


def test_retry_after_sets_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("divreward.client._http.asyncio.sleep", sleep)
    script = Script([_error(429, "overloaded", "slow down", **{"retry-after": "1.5"}), _ok()])
    policy = RetryPolicy(max_attempts=3, backoff_s=0.1, max_backoff_s=10.0, jitter=0.0)
    _transport(script, policy).call(ROUTE, _request(), HealthResponse, "r")
    assert waits == [1.5]


def test_timeouts_are_retried_with_the_same_id_unless_told_not_to() -> None:
    # A request in flight when a server stops can hang until the client's timeout; the
    # request id makes the retry safe (the server answers a repeated id from its cache).
    script = Script([httpx.ReadTimeout("read timed out"), _ok()])
    assert _transport(script).call(ROUTE, _request(), HealthResponse, "rid-t").status == "ok"
    assert [r.headers["x-request-id"] for r in script.seen] == ["rid-t", "rid-t"]
    script = Script([httpx.ReadTimeout("read timed out"), _ok()])
    no = RetryPolicy(max_attempts=4, backoff_s=0, jitter=0, retry_timeouts=False)
    with pytest.raises(RewardTimeoutError, match=r"no answer from http://reward\.test within 5 s"):
        _transport(script, no).call(ROUTE, _request(), HealthResponse, "r")
    assert len(script.seen) == 1
    script = Script([httpx.ReadTimeout("read timed out")])
    with pytest.raises(RewardTimeoutError, match="within 5 s"):  # bounded like the rest
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")
    assert len(script.seen) == 4


def test_a_server_408_is_not_retried() -> None:
    # the server's 408: an assembled group whose other parts never came
    script = Script([_error(408, "timeout", "group 'g' is incomplete: 2 of 4 images"), _ok()])
    with pytest.raises(RewardTimeoutError, match=r"\(408\): timeout: group 'g' is incomplete"):
        _transport(script).call(ROUTE, _request(), HealthResponse, "r")
    assert len(script.seen) == 1


def test_json_wire_sends_base64_images() -> None:
    script = Script([_ok()])
    _transport(script, wire="json").call(ROUTE, _request(), HealthResponse, "r")
    sent = script.seen[0]
    assert sent.headers["content-type"] == "application/json"
    assert b'"images":["iVBORy1ieXRlcw=="]' in sent.content


def test_async_transport_retries_the_same_way() -> None:
    script = Script([httpx.ConnectError("refused"), _error(503, "overloaded", "busy"), _ok()])

    async def run() -> HealthResponse:
        t = AsyncHttpTransport(
            "http://reward.test", transport=httpx.MockTransport(script), timeout_s=5, retry=FAST
        )
        try:
            return await t.call(ROUTE, _request(), HealthResponse, "rid-a")
        finally:
            await t.aclose()

    assert asyncio.run(run()).status == "ok"
    assert [r.headers["x-request-id"] for r in script.seen] == ["rid-a"] * 3


# ------------------------------------------------------------------ gRPC retries
class _ScriptedServicer(pb_grpc.RewardServiceServicer):
    """Answers Health with the scripted status codes, then OK; records the metadata."""

    def __init__(self, codes: list[grpc.StatusCode], details: str = "scripted failure") -> None:
        self.codes = codes
        self.details = details
        self.calls: list[dict[str, str]] = []

    def Health(  # noqa: N802 - the RPC's name
        self, request: pb.HealthRequest, context: grpc.ServicerContext
    ) -> pb.HealthResponse:
        self.calls.append(dict(context.invocation_metadata()))
        if len(self.calls) <= len(self.codes):
            context.abort(self.codes[len(self.calls) - 1], f"{self.details} {len(self.calls)}")
        return pb.HealthResponse(status="ok")


@pytest.fixture()
def scripted_grpc() -> Any:
    servers: list[grpc.Server] = []

    def start(codes: list[grpc.StatusCode], details: str = "scripted failure") -> Any:
        servicer = _ScriptedServicer(codes, details)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_RewardServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"grpc://127.0.0.1:{port}", servicer

    yield start
    for s in servers:
        s.stop(0)


def test_grpc_retries_unavailable_and_resource_exhausted_with_one_request_id(
    scripted_grpc: Any,
) -> None:
    url, servicer = scripted_grpc([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
    with RewardClient(url, timeout_s=5, retry=FAST) as c:
        assert c.health().status == "ok"
    assert len(servicer.calls) == 3
    assert len({c["request_id"] for c in servicer.calls}) == 1  # one id, every attempt
    assert {c["application"] for c in servicer.calls} == {"reward"}  # the default


def test_grpc_invalid_argument_is_raised_at_once_with_the_details(scripted_grpc: Any) -> None:
    url, servicer = scripted_grpc([grpc.StatusCode.INVALID_ARGUMENT])
    with (
        RewardClient(url, timeout_s=5, retry=FAST, headers={"Authorization": "Bearer t"}) as c,
        pytest.raises(
            RewardRequestError, match=r"server answered INVALID_ARGUMENT: scripted failure 1"
        ),
    ):
        c.health()
    assert len(servicer.calls) == 1
    assert servicer.calls[0]["authorization"] == "Bearer t"  # headers -> gRPC metadata


def test_grpc_proxy_not_found_during_a_restart_is_retried(scripted_grpc: Any) -> None:
    url, servicer = scripted_grpc(
        [grpc.StatusCode.NOT_FOUND] * 2,
        "Application 'reward' not found. Ping /ray.serve.RayServeAPIService/ListApplications",
    )
    with RewardClient(url, timeout_s=5, retry=FAST) as c:
        assert c.health().status == "ok"
    assert len(servicer.calls) == 3
    url, servicer = scripted_grpc([grpc.StatusCode.NOT_FOUND], "Application metadata not set.")
    with (
        RewardClient(url, timeout_s=5, retry=FAST, application=None) as c,
        pytest.raises(RewardRequestError, match="NOT_FOUND: Application metadata not set"),
    ):
        c.health()
    assert len(servicer.calls) == 1
    assert "application" not in servicer.calls[0]


def test_grpc_server_down_raises_service_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with (
        RewardClient(f"grpc://127.0.0.1:{port}", timeout_s=2, retry=FAST) as c,
        pytest.raises(ServiceUnavailableError, match=r"after 4 attempt\(s\): UNAVAILABLE"),
    ):
        c.health()


# ------------------------------------------------------------------ the blocking client
def test_both_clients_take_one_settings_object_with_the_documented_defaults() -> None:
    expected = {
        "transport": None,
        "timeout_s": 120.0,
        "retry": None,
        "downsize": True,
        "image_format": "PNG",
        "image_quality": 95,
        "namespace": None,
        "application": "reward",
        "wire": "msgpack",
        "headers": None,
        "max_in_flight": 16,
        "token": None,
        "ca_file": None,
    }
    for cls in (RewardClient, AsyncRewardClient, ClientSettings):
        params = inspect.signature(cls).parameters
        assert list(params) == ["url", *expected], cls
        assert params["url"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert {k: p.default for k, p in params.items() if k != "url"} == expected, cls
        assert all(
            p.kind is inspect.Parameter.KEYWORD_ONLY for k, p in params.items() if k != "url"
        )
    c = RewardClient("grpc://h:9000", image_format="jpeg", headers={"A": "b"})
    assert c.transport == "grpc" and c._s.image_format == "JPEG" and c._s.retry == RetryPolicy()
    assert RewardClient("h:1", transport="http").transport == "http"
    for kwargs, error, message in [
        ({"timeout_s": 0}, ValueError, "timeout_s must be > 0, got 0"),
        ({"wire": "xml"}, ValueError, "wire must be 'msgpack' or 'json', got 'xml'"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1, got 0"),
        ({"transport": "udp"}, ValueError, "transport must be 'http' or 'grpc', got 'udp'"),
        ({"timeot_s": 1}, TypeError, "unexpected keyword argument 'timeot_s'"),
    ]:
        for cls in (RewardClient, AsyncRewardClient):
            with pytest.raises(error, match=message) as info:
                cls("http://h:1", **kwargs)
            if error is TypeError:
                assert str(info.value).startswith(f"{cls.__name__}: ")
    with pytest.raises(ValueError, match="start it with http:// or grpc://"):
        RewardClient("h:1")


def _submission_result(request: httpx.Request, status: int = 200) -> httpx.Response:
    body = msgpack.unpackb(request.content)
    n = len(body["images"])
    result: dict[str, Any] = {"group_id": body["group_id"], "request_id": body["request_id"]}
    if status == 200:
        result |= {"rewards": [0.5] * n, "advantages": [0.0] * n}
    else:
        result["error"] = {"kind": "invalid_image", "message": "bad", "status": status}
    return httpx.Response(200, content=msgpack.packb(result), headers={"content-type": BINARY})


BINARY = "application/msgpack"


@pytest.fixture()
def mock_http(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Route every client's HTTP transport to ``handler`` (sync or async)."""

    def install(handler: Any) -> None:
        def open_transport(s: ClientSettings) -> AsyncHttpTransport:
            assert s.retry is not None
            return AsyncHttpTransport(
                s.url,
                timeout_s=s.timeout_s,
                retry=s.retry,
                wire=s.wire,
                transport=httpx.MockTransport(handler),
            )

        monkeypatch.setattr(ClientSettings, "open_transport", open_transport)

    return install


def test_blocking_calls_run_the_async_client_on_one_background_loop(mock_http: Any) -> None:
    threads: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        threads.add(threading.current_thread().name)
        if request.url.path == "/v1/rewards":
            return _error(422, "invalid_request", "diversity.k_max: must be >= 1")
        return _ok()

    mock_http(handler)
    c = RewardClient("http://reward.test", retry=FAST, downsize=False)
    with ThreadPoolExecutor(8) as pool:  # a thread-safe client: verl calls it concurrently
        assert [h.status for h in pool.map(lambda _: c.health(), range(16))] == ["ok"] * 16
    assert threads == {"divreward-client"}
    loop_thread = c._bg.thread if c._bg is not None else None
    assert loop_thread is not None and loop_thread.is_alive()
    with pytest.raises(RewardRequestError, match="server answered 422: invalid_request: diver"):
        c.rewards([Group("p", np.zeros((1, 8, 8, 3), np.uint8))])  # raised in this thread
    c.close()
    assert not loop_thread.is_alive()
    assert c.health().status == "ok"  # a later call starts again
    c.close()


def test_an_unclosed_client_stops_its_thread_when_collected(mock_http: Any) -> None:
    import gc

    mock_http(lambda request: _ok())
    c = RewardClient("http://reward.test", downsize=False)
    c.health()
    assert c._bg is not None
    thread = c._bg.thread
    del c
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_submit_copies_the_images_and_returns_a_future_at_once(mock_http: Any) -> None:
    release = threading.Event()
    seen: list[dict[str, Any]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.to_thread(release.wait, 10)  # answers only after the caller went on
        seen.append(msgpack.unpackb(request.content))
        return _submission_result(request)

    mock_http(handler)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    original = images.copy()
    with RewardClient("http://reward.test", downsize=False, namespace="run-1") as c:
        fut = c.submit(Group("a cat", images, group_id="g0"), quality={"pickscore": 1.0})
        assert isinstance(fut, Future) and not fut.done()
        images[:] = 0  # the trainer reuses its buffer
        release.set()
        result = fut.result(10)
        assert result.group_id == "g0" and result.rewards == [0.5, 0.5]
        (body,) = seen
        assert body["namespace"] == "run-1" and body["quality"] == {"pickscore": 1.0}
        assert body["request_id"] == result.request_id
        np.testing.assert_array_equal(np.stack(_decode_all(body["images"])), original)
        # errors of the images are raised at once, a missing group id by the future
        with pytest.raises(ImageError, match="image 0"):
            c.submit(Group("p", [np.zeros((4, 4), np.float32) + 2.0], group_id="g"))
        with pytest.raises(ValueError, match=r"group\.group_id is required"):
            c.submit(Group("p", original)).result(10)


def test_stream_bounds_what_is_in_flight_and_yields_in_completion_order(mock_http: Any) -> None:
    in_flight = 0
    most = 0
    full = asyncio.Event()  # 3 requests were in flight at once
    g1_answered = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        gid = msgpack.unpackb(request.content)["group_id"]
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 3:
            full.set()
        await asyncio.wait_for(full.wait(), 10)
        if gid == "g0":  # the first group answers after the second
            await asyncio.wait_for(g1_answered.wait(), 10)
        in_flight -= 1
        if gid == "g1":
            g1_answered.set()
        return _submission_result(request, 422 if gid == "g3" else 200)

    mock_http(handler)
    groups = [Group("p", make_group(i), group_id=f"g{i}") for i in range(6)]
    with RewardClient("http://reward.test", downsize=False, max_in_flight=3) as c:
        out = [r.group_id for r in c.stream(iter(groups), raise_errors=False)]
        assert sorted(out) == [f"g{i}" for i in range(6)]
        assert most == 3  # never more than max_in_flight unanswered
        assert out.index("g1") < out.index("g0")  # completion order, not submission order
        failed = list(c.stream(groups[3:4], raise_errors=False))
        assert [r.error.kind for r in failed if r.error is not None] == ["invalid_image"]
        with pytest.raises(RewardServiceError, match="invalid_image: bad"):
            list(c.stream(groups[3:4]))


def make_group(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)


def test_the_async_client_learns_max_side_once_and_downsizes(mock_http: Any) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/v1/models":
            defaults = {"quality": {"s": 1.0}, "diversity": {"method": "none"}, "advantage": {}}
            body = {"scorers": {}, "defaults": defaults, "limits": {"max_resolution": 16}}
            return httpx.Response(200, json=body)
        sent = msgpack.unpackb(request.content)
        assert [decode_image(b).shape for b in sent["images"]] == [(16, 32, 3)] * 2
        return httpx.Response(
            200, json={"scores": {"s": [1.0, 2.0]}, "models": {}, "params": {"scorers": ["s"]}}
        )

    mock_http(handler)

    async def run() -> None:
        async with AsyncRewardClient("http://reward.test") as c:
            for _ in range(2):
                res = await c.score(np.zeros((2, 32, 64, 3), np.uint8), ["a", "b"])
                assert res.scores == {"s": [1.0, 2.0]}

    asyncio.run(run())
    assert paths == ["/v1/models", "/v1/score", "/v1/score"]


# ------------------------------------------------------------------ the method table
def test_the_client_takes_its_diversity_methods_from_the_table() -> None:
    import argparse

    from divreward.client.cli import register
    from divreward.methods import METHODS, method_names

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    register(commands)
    args = parser.parse_args(["rewards", "--prompt", "p", "x.png", "--method", "drift"])
    assert args.method == "drift"
    (method,) = [a for a in commands.choices["rewards"]._actions if a.dest == "method"]
    assert method.choices is not None
    assert list(method.choices) == list(method_names()) == list(METHODS)

    images = np.zeros((2, 8, 8, 3), np.uint8)
    for name, m in METHODS.items():  # every method's params model is a valid argument
        req = rewards_request(
            [("p", images)],
            quality=None,
            diversity=m.params(),
            advantage=None,
            return_embeddings=False,
            request_id="r",
            opts=ImageOptions(),
        )
        assert req.diversity is not None and req.diversity.method == name
    names = " or ".join(m.params.__name__ for m in METHODS.values())
    with pytest.raises(TypeError, match=f"diversity must be a dict or a {names}, got Advant"):
        rewards_request(
            [("p", images)],
            quality=None,
            diversity=AdvantageConfig(),
            advantage=None,
            return_embeddings=False,
            request_id="r",
            opts=ImageOptions(),
        )


def test_metrics_sends_each_group_s_images(mock_http: Any) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/metrics"
        sent.append(msgpack.unpackb(request.content))
        body = {"metrics": {"num_groups": 2}, "params": {}, "request_id": "m1"}
        return httpx.Response(200, json=body)

    mock_http(handler)
    groups = [make_group(0), make_group(1)]
    with RewardClient("http://reward.test", downsize=False) as c:
        res = c.metrics(groups, reference=[make_group(2)], recall_k=3, request_id="m1")
    assert res.metrics == {"num_groups": 2} and res.request_id == "m1"
    (body,) = sent
    assert set(body) == {"groups", "reference", "recall_k", "request_id"}
    assert body["recall_k"] == 3 and body["request_id"] == "m1"
    for got, want in zip(body["groups"] + body["reference"], [*groups, make_group(2)], strict=True):
        np.testing.assert_array_equal(np.stack(_decode_all(got["images"])), want)


class _StreamServicer(pb_grpc.RewardServiceServicer):
    """RewardStream answering each submission in-band: the scripted error statuses for its
    first attempts, then the rewards; records the request ids it saw."""

    def __init__(self, statuses: list[int], swallow: int = 0) -> None:
        self.statuses = statuses
        self.swallow = swallow  # leave this many first submissions unanswered
        self.seen: list[str] = []

    def RewardStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        for message in request_iterator:
            sub = from_proto(message, GroupSubmission)
            self.seen.append(sub.request_id or "")
            if len(self.seen) <= self.swallow:
                continue
            n = len(self.seen) - self.swallow
            answer: dict[str, Any] = {"group_id": sub.group_id, "request_id": sub.request_id}
            if n <= len(self.statuses):
                status = self.statuses[n - 1]
                answer["error"] = ErrorInfo(kind="overloaded", message=f"try {n}", status=status)
            else:
                answer["rewards"] = [1.0] * len(sub.images)
            yield to_proto(GroupSubmissionResult(**answer))


@pytest.mark.parametrize(
    ("statuses", "answers", "error"),
    [
        ([503, 429], 3, None),  # a replica died with the group: retried, same id
        ([503] * 4, 4, "server answered 503: overloaded: try 4"),  # the budget runs out
        ([422], 1, "server answered 422: overloaded: try 1"),  # refused: not retried
        ([408], 1, "server answered 408"),  # an incomplete group's timeout: not retried
    ],
)
def test_a_transient_error_in_the_stream_is_retried_with_the_same_request_id(
    statuses: list[int], answers: int, error: str | None
) -> None:
    servicer = _StreamServicer(statuses)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RewardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RewardClient(f"grpc://127.0.0.1:{port}", retry=FAST, downsize=False) as c:
            fut = c.submit(Group("p", make_group(0), group_id="g"), request_id="rid-s")
            if error is None:
                assert fut.result(30).rewards == [1.0, 1.0]
            else:
                with pytest.raises(RewardServiceError, match=re.escape(error)):
                    fut.result(30)
    finally:
        server.stop(0)
    assert servicer.seen == ["rid-s"] * answers


@pytest.mark.parametrize("retry_timeouts", [True, False])
def test_a_group_the_stream_never_answers_times_out_per_attempt(retry_timeouts: bool) -> None:
    servicer = _StreamServicer([], swallow=1)  # the first submission is lost
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RewardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    retry = dataclasses.replace(FAST, retry_timeouts=retry_timeouts)
    url = f"grpc://127.0.0.1:{port}"
    try:
        with RewardClient(url, retry=retry, timeout_s=0.5, downsize=False) as c:
            fut = c.submit(Group("p", make_group(0), group_id="g"), request_id="rid-t")
            if retry_timeouts:  # sent again with its id, answered the second time
                assert fut.result(30).rewards == [1.0, 1.0]
            else:
                with pytest.raises(
                    RewardTimeoutError, match=r"no answer to group 'g' on the stream within 0\.5 s"
                ):
                    fut.result(30)
    finally:
        server.stop(0)
    assert servicer.seen == ["rid-t"] * (2 if retry_timeouts else 1)


def test_closing_never_raises_for_a_peer_that_will_not_let_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The blocking client's close (also run by the garbage collector) gives up on a hung
    close of the async client's connections after its timeout: it warns, stops the loop
    (which cancels the rest) and returns, instead of raising out of a finalizer."""
    from divreward.client.client import _Background

    bg = _Background(ClientSettings(url="http://127.0.0.1:9"))
    started = threading.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    bg.client.aclose = hangs  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="divreward.client.client"):
        bg.close(timeout_s=0.5)
    assert started.is_set()
    bg.thread.join(10)
    assert not bg.thread.is_alive() and bg.loop.is_closed()
    assert "closing its connections took over" in caplog.text
