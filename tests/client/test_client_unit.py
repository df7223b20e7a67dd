"""Client pieces that need no server: image encoding and downsizing, the retry policy,
and the HTTP/gRPC retry loops against scripted transports (httpx.MockTransport, a local
grpcio server whose answers the test dictates)."""

from __future__ import annotations

import asyncio
import io
from concurrent import futures
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from divreward.client import (
    Group,
    RetryPolicy,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
    ServiceUnavailableError,
)
from divreward.client._grpc import GrpcTransport
from divreward.client._http import AsyncHttpTransport, HttpRoute, HttpTransport
from divreward.client._requests import ImageOptions, rewards_request
from divreward.client.encoding import downsize, encode_images
from divreward.images import ImageError, decode_image
from divreward.proto import divreward_pb2 as pb
from divreward.proto import divreward_pb2_grpc as pb_grpc
from divreward.schema import HealthResponse, RewardsRequest

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
    # Retry-After raises the delay, never above the cap
    assert p.delay(1, retry_after_s=2.5) == 2.5
    assert p.delay(1, retry_after_s=60.0) == 3.0


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


def _transport(script: Script, retry: RetryPolicy = FAST, **kw: Any) -> HttpTransport:
    return HttpTransport(
        "http://reward.test", transport=httpx.MockTransport(script), timeout_s=5, retry=retry, **kw
    )


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
    monkeypatch.setattr("divreward.client._http.time.sleep", waits.append)
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
    t = GrpcTransport(url, timeout_s=5, retry=FAST, application="reward")
    try:
        assert t.call("Health", None, HealthResponse, "rid-g").status == "ok"
    finally:
        t.close()
    assert len(servicer.calls) == 3
    assert {c["request_id"] for c in servicer.calls} == {"rid-g"}
    assert {c["application"] for c in servicer.calls} == {"reward"}


def test_grpc_invalid_argument_is_raised_at_once_with_the_details(scripted_grpc: Any) -> None:
    url, servicer = scripted_grpc([grpc.StatusCode.INVALID_ARGUMENT])
    t = GrpcTransport(url, timeout_s=5, retry=FAST)
    try:
        with pytest.raises(
            RewardRequestError, match=r"server answered INVALID_ARGUMENT: scripted failure 1"
        ):
            t.call("Health", None, HealthResponse, "r")
    finally:
        t.close()
    assert len(servicer.calls) == 1


def test_grpc_proxy_not_found_during_a_restart_is_retried(scripted_grpc: Any) -> None:
    url, servicer = scripted_grpc(
        [grpc.StatusCode.NOT_FOUND] * 2,
        "Application 'reward' not found. Ping /ray.serve.RayServeAPIService/ListApplications",
    )
    t = GrpcTransport(url, timeout_s=5, retry=FAST)
    try:
        assert t.call("Health", None, HealthResponse, "r").status == "ok"
    finally:
        t.close()
    assert len(servicer.calls) == 3
    url, servicer = scripted_grpc([grpc.StatusCode.NOT_FOUND], "Application metadata not set.")
    t = GrpcTransport(url, timeout_s=5, retry=FAST)
    try:
        with pytest.raises(RewardRequestError, match="NOT_FOUND: Application metadata not set"):
            t.call("Health", None, HealthResponse, "r")
    finally:
        t.close()
    assert len(servicer.calls) == 1


def test_grpc_server_down_raises_service_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t = GrpcTransport(f"grpc://127.0.0.1:{port}", timeout_s=2, retry=FAST)
    try:
        with pytest.raises(ServiceUnavailableError, match=r"after 4 attempt\(s\): UNAVAILABLE"):
            t.call("Health", None, HealthResponse, "r")
    finally:
        t.close()
