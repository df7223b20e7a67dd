"""Service pieces that need no Ray: batching plans, error messages, image decoding with
limits, the request_id cache, auth, parameter resolution and the schema's image type."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from divreward.core import CoreConfig, DiverseGRPOConfig, DRIFTConfig
from divreward.images import encode_image
from divreward.models.base import BatchLimits
from divreward.schema import (
    DiverseGRPOParams,
    DiversityRequest,
    DriftParams,
    NoDiversityParams,
    RewardsRequest,
    ScoreRequest,
)
from divreward.services.common.auth import BearerAuth, grpc_peer_host, is_loopback
from divreward.services.common.decode import decode_group
from divreward.services.common.diversity import resolve_advantage, resolve_diversity
from divreward.services.common.errors import ServiceError, format_loc, from_validation_error
from divreward.services.common.idempotency import CachedReply, IdempotencyCache
from divreward.services.common.limits import check_counts
from divreward.services.config import AuthArgs, BatchArgs
from divreward.services.model_deployments import ScorerServer, plan_chunks

# ------------------------------------------------------------------ batching plans


def _imgs(shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    return [np.zeros((h, w, 3), np.uint8) for h, w in shapes]


def test_chunks_respect_image_and_pixel_budgets() -> None:
    batch = BatchArgs(max_batch_images=4, max_batch_pixels=4 * 100 * 100)
    # 10 small images: chunks of 4, 4, 2 (count-bound), in order.
    imgs = _imgs([(10, 10)] * 10)
    chunks = plan_chunks(imgs, [f"p{i}" for i in range(10)], batch)
    assert [len(c.images) for c in chunks] == [4, 4, 2]
    assert [c.cost for c in chunks] == [4, 4, 2]
    assert [p for c in chunks for p in c.prompts or []] == [f"p{i}" for i in range(10)]
    # Large images: 2 of 200x100 = the pixels of 4 slots, so 2 per chunk (pixel-bound).
    chunks = plan_chunks(_imgs([(200, 100)] * 5), None, batch)
    assert [len(c.images) for c in chunks] == [2, 2, 1]
    assert [c.cost for c in chunks] == [4, 4, 2]
    # An image larger than a whole batch runs alone, its cost capped at a full batch.
    chunks = plan_chunks(_imgs([(10, 10), (1000, 1000), (10, 10)]), None, batch)
    assert [len(c.images) for c in chunks] == [1, 1, 1]
    assert chunks[1].cost == 4
    # Every batch assembled from chunk costs <= max holds <= max images and pixels.
    for c in plan_chunks(_imgs([(64, 64), (300, 20), (100, 100), (5, 5)] * 7), None, batch):
        pixels = sum(i.shape[0] * i.shape[1] for i in c.images)
        assert len(c.images) <= c.cost <= 4
        assert (
            pixels <= c.cost * batch.max_batch_pixels / batch.max_batch_images or len(c.images) == 1
        )


def test_batch_limits_are_retuned_by_user_config() -> None:
    # What Serve calls with the deployment's user_config (no model needed for this).
    server = object.__new__(ScorerServer)
    server.batch = BatchArgs()
    server.model = BatchLimits()  # type: ignore[assignment]  # the model's batch setting
    server.reconfigure({"max_batch_images": 7, "batch_wait_timeout_s": 0.02})
    assert server.model.max_batch == 7
    assert server.batch == BatchArgs(max_batch_images=7, batch_wait_timeout_s=0.02)
    assert ScorerServer._batched._get_max_batch_size() == 7  # type: ignore[attr-defined]
    assert ScorerServer._batched._get_batch_wait_timeout_s() == 0.02  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="max_batch_image"):
        server.reconfigure({"max_batch_image": 8})
    server.reconfigure(BatchArgs().model_dump())  # back to the defaults for other tests
    assert ScorerServer._batched._get_max_batch_size() == 32  # type: ignore[attr-defined]


# ------------------------------------------------------------------ error messages


def test_validation_errors_name_field_group_and_image() -> None:
    with pytest.raises(ValidationError) as info:
        RewardsRequest.model_validate(
            {
                "groups": [
                    {"prompt": "a", "images": ["aGk="]},
                    {"prompt": "b", "images": ["aGk=", "@@"]},
                ]
            }
        )
    err = from_validation_error(info.value)
    assert err.status == 422 and err.kind == "invalid_request"
    assert err.group_index == 1 and err.image_index == 1
    assert "groups[1].images[1]: Value error, is not valid base64" in err.message
    assert format_loc(["groups", 2, "images", 5]) == "groups[2].images[5]"


def test_unknown_field_and_missing_field() -> None:
    with pytest.raises(ValidationError) as info:
        RewardsRequest.model_validate({"groups": [{"prompt": "a", "images": ["aGk="], "imgs": []}]})
    err = from_validation_error(info.value)
    assert err.status == 422 and "groups[0].imgs: Extra inputs are not permitted" in err.message
    with pytest.raises(ValidationError) as info:
        RewardsRequest.model_validate({"groups": [{"images": ["aGk="]}]})
    assert "groups[0].prompt: Field required" in from_validation_error(info.value).message


def test_unknown_method_is_a_400_listing_the_valid_ones() -> None:
    with pytest.raises(ValidationError) as info:
        RewardsRequest.model_validate(
            {"groups": [{"prompt": "a", "images": ["aGk="]}], "diversity": {"method": "dpp"}}
        )
    err = from_validation_error(info.value)
    assert err.status == 400 and err.kind == "unknown_name"
    assert err.valid == ["diversegrpo", "drift", "gardo", "none"]
    assert err.message == (
        "diversity.method: unknown method 'dpp'; valid: diversegrpo, drift, gardo, none"
    )


def test_parameter_errors_drop_the_union_tag_from_the_path() -> None:
    with pytest.raises(ValidationError) as info:
        RewardsRequest.model_validate(
            {
                "groups": [{"prompt": "a", "images": ["aGk="]}],
                "diversity": {"method": "drift", "lam": -1},
            }
        )
    err = from_validation_error(info.value)
    assert "diversity.lam: Input should be greater than or equal to 0" in err.message
    with pytest.raises(ValidationError) as info:
        DiversityRequest.model_validate(
            {"groups": [{"embeddings": [[1.0]]}], "method": "diversegrpo", "sigma_mode": "fixed"}
        )
    assert (
        "sigma: required (a positive float) when sigma_mode='fixed'"
        in from_validation_error(info.value).message
    )


def test_service_error_survives_a_copy_with_every_field() -> None:
    # Ray moves exceptions between processes through __reduce__; copy uses it too.
    err = ServiceError(400, "invalid_image", "m", group_index=2, image_index=3, retry_after_s=1.5)
    clone = copy.deepcopy(err)
    assert (clone.status, clone.kind, clone.message, clone.group_index, clone.image_index) == (
        400,
        "invalid_image",
        "m",
        2,
        3,
    )
    assert clone.retry_after_s == 1.5


# ------------------------------------------------------------------ decoding


def _png(h: int, w: int) -> bytes:
    return encode_image(np.full((h, w, 3), 7, np.uint8))


def test_decode_group_errors_name_group_and_image() -> None:
    good = _png(8, 8)
    out = decode_group([good, good], 0, max_pixels=100)
    assert [a.shape for a in out] == [(8, 8, 3), (8, 8, 3)]
    with pytest.raises(ServiceError) as info:
        decode_group([good, b"not an image"], 3, max_pixels=100)
    e = info.value
    assert (e.status, e.kind, e.group_index, e.image_index) == (400, "invalid_image", 3, 1)
    assert e.message == (
        "groups[3].images[1]: cannot be decoded as PNG, JPEG or WebP (not a recognised image file)"
    )
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(ServiceError, match=r"images\[0\]: format 'GIF' is not accepted"):
        decode_group([gif.getvalue()], None, max_pixels=100)
    with pytest.raises(ServiceError) as info:
        decode_group([good, _png(20, 10)], 1, max_pixels=100)
    e = info.value
    assert (e.status, e.kind, e.image_index) == (413, "payload_too_large", 1)
    assert "groups[1].images[1]: 10x20 = 200 pixels exceeds the limit of 100" in e.message
    with pytest.raises(ServiceError, match=r"groups\[0\]\.images\[0\]: is empty \(0 bytes\)"):
        decode_group([b""], 0, max_pixels=100)
    truncated = _png(8, 8)[:40]
    with pytest.raises(ServiceError, match=r"reference\[2\]\.images\[0\]: "):
        decode_group([truncated], 2, max_pixels=100, field="reference")


def test_count_limits_are_413s() -> None:
    from divreward.services.config import LimitsArgs

    limits = LimitsArgs(max_images_per_request=10, max_images_per_group=4, max_groups_per_request=2)
    check_counts([4, 4], limits)
    with pytest.raises(ServiceError, match=r"groups: 3 groups exceed the limit of 2"):
        check_counts([1, 1, 1], limits)
    with pytest.raises(
        ServiceError, match=r"groups\[1\]: 5 images exceed the limit of 4 per group"
    ):
        check_counts([1, 5], limits)
    with pytest.raises(ServiceError, match="11 images exceed the limit of 10 per request"):
        check_counts([11], limits, grouped=False)


# ------------------------------------------------------------------ request_id cache


def test_idempotency_cache_replays_and_refuses_other_bodies() -> None:
    async def run() -> None:
        cache = IdempotencyCache(size=2)
        calls: list[str] = []
        gate = asyncio.Event()

        async def compute(tag: str, reply: CachedReply, wait: bool = False) -> CachedReply:
            calls.append(tag)
            if wait:
                await gate.wait()
            return reply

        ok = CachedReply(200, "application/json", b"{}")
        first = asyncio.create_task(
            cache.run("/v1/rewards", "id-1", b"d1", lambda: compute("a", ok, wait=True))
        )
        await asyncio.sleep(0)
        # A concurrent duplicate waits for the first, then replays it.
        dup = asyncio.create_task(cache.run("/v1/rewards", "id-1", b"d1", lambda: compute("b", ok)))
        await asyncio.sleep(0)
        assert not dup.done()
        gate.set()
        assert await first == (ok, False)
        assert await dup == (ok, True)
        assert calls == ["a"]
        with pytest.raises(ServiceError) as info:
            await cache.run("/v1/rewards", "id-1", b"d2", lambda: compute("c", ok))
        assert info.value.status == 409 and "id-1" in info.value.message

        # A failed first attempt caches nothing: the retry computes again.
        async def boom() -> CachedReply:
            raise RuntimeError("x")

        with pytest.raises(RuntimeError):
            await cache.run("/v1/rewards", "id-2", b"x", boom)
        assert await cache.run("/v1/rewards", "id-2", b"x", lambda: compute("d", ok)) == (
            ok,
            False,
        )
        # No request_id: always computed. LRU bound.
        await cache.run("/v1/score", None, b"y", lambda: compute("e", ok))
        for i in range(3):
            await cache.run("/v1/score", f"k{i}", b"y", lambda i=i: compute(f"k{i}", ok))
        assert (await cache.run("/v1/score", "k0", b"y", lambda: compute("again", ok)))[1] is False
        assert (await cache.run("/v1/score", "k2", b"y", lambda: compute("no", ok)))[1] is True
        assert calls == ["a", "d", "e", "k0", "k1", "k2", "again"]

    asyncio.run(run())


# ------------------------------------------------------------------ auth


def test_token_auth(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIVREWARD_API_TOKENS", "tok-a, tok-b")
    auth = BearerAuth(AuthArgs(enabled=True))
    auth.check("Bearer tok-b", "10.0.0.7")
    for header, msg in [
        (None, "missing 'Authorization: Bearer <token>'"),
        ("Basic tok-a", "must be 'Bearer <token>'"),
        ("Bearer tok-c", "invalid bearer token"),
    ]:
        with pytest.raises(ServiceError) as info:
            auth.check(header, "127.0.0.1")  # a token is required from loopback too
        assert info.value.status == 401 and msg in info.value.message


def test_without_tokens_only_loopback_peers_are_served() -> None:
    off = BearerAuth(AuthArgs(enabled=False))
    for peer in ("127.0.0.1", "127.8.9.1", "::1", "localhost", None):
        off.check(None, peer)
    for peer in ("10.0.0.7", "192.168.1.20", "2001:db8::1", "0.0.0.0", "testclient"):
        with pytest.raises(ServiceError) as info:
            off.check("Bearer anything", peer)
        assert info.value.status == 401 and info.value.kind == "unauthorized"
        assert f"loopback clients only and {peer} is not one" in info.value.message


def test_grpc_peer_strings() -> None:
    assert grpc_peer_host("ipv4:127.0.0.1:50511") == "127.0.0.1"
    assert grpc_peer_host("ipv4:10.1.2.3:9000") == "10.1.2.3"
    assert grpc_peer_host("ipv6:[::1]:50511") == "::1"
    assert grpc_peer_host("ipv6:%5B::1%5D:50511") == "::1"
    assert grpc_peer_host("ipv6:[2001:db8::5]:1") == "2001:db8::5"
    assert grpc_peer_host("unix:/tmp/sock") == "localhost"
    assert is_loopback(grpc_peer_host("ipv6:[::1]:50511"))
    assert not is_loopback(grpc_peer_host("ipv4:10.1.2.3:9000"))


# ------------------------------------------------------------------ parameters


def test_unset_parameters_take_the_server_config_not_the_class_defaults() -> None:
    server = CoreConfig(
        diversegrpo=DiverseGRPOConfig(beta=0.5, k_max=5), drift=DRIFTConfig(lam=0.1)
    )
    only_method = DiverseGRPOParams.model_validate({"method": "diversegrpo"})
    p = resolve_diversity(only_method, server, "drift")
    assert isinstance(p, DiverseGRPOParams) and p.beta == 0.5 and p.k_max == 5
    p = resolve_diversity(DiverseGRPOParams.model_validate({"beta": 0.9}), server, "drift")
    assert p.beta == 0.9 and p.k_max == 5
    p = resolve_diversity(None, server, "drift")
    assert isinstance(p, DriftParams) and p.lam == 0.1 and p.gamma == 1.0
    assert isinstance(resolve_diversity(None, server, "none"), NoDiversityParams)
    assert resolve_advantage(None, server).eps == 1e-6


# ------------------------------------------------------------------ schema images


def test_image_bytes_accepts_base64_data_urls_and_raw_bytes() -> None:
    raw = b"\x89PNG\r\n"
    text = base64.b64encode(raw).decode()
    for value in (text, f"data:image/png;base64,{text}", raw, bytearray(raw)):
        req = ScoreRequest.model_validate({"prompts": ["p"], "images": [value]})
        assert req.images[0] == raw
    dumped = ScoreRequest(prompts=["p"], images=[raw]).model_dump(mode="json")
    assert dumped["images"] == [text]
    with pytest.raises(ValidationError, match="data URL image must be"):
        ScoreRequest.model_validate({"prompts": ["p"], "images": ["data:image/png,abc"]})
    with pytest.raises(ValidationError, match=r"must be a base64 string .* got int"):
        ScoreRequest.model_validate({"prompts": ["p"], "images": [3]})
    with pytest.raises(ValidationError, match="prompts has 2 entries but images has 1"):
        ScoreRequest.model_validate({"prompts": ["p", "q"], "images": [raw]})


def test_ingress_serving_caps_blas_threads() -> None:
    """Both serving layers cap BLAS threads in their (ingress) process to
    ``ingress.blas_threads``; checked in a fresh interpreter so this one is untouched."""
    import subprocess
    import sys

    code = (
        "from threadpoolctl import threadpool_info as ti\n"
        "from divreward.services.config import RewardAppArgs, DiversityAppArgs\n"
        "from divreward.services.reward_server.serving import RewardServing\n"
        "from divreward.services.diversity_server.serving import DiversityServing\n"
        "n = lambda: sorted({i['num_threads'] for i in ti() if i['user_api'] == 'blas'})\n"
        "DiversityServing(None, DiversityAppArgs(ingress={'blas_threads': 2}))\n"
        "a = n()\n"
        "RewardServing({}, None, RewardAppArgs())\n"
        "print(a, n())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["[2]", "[1]"]


def test_a_dead_replica_or_node_is_a_503_with_retry_after() -> None:
    from ray.exceptions import ActorDiedError, NodeDiedError, OwnerDiedError

    from divreward.services.common.errors import to_service_error

    for exc in (
        ActorDiedError(),
        NodeDiedError("node n1 died"),
        OwnerDiedError("ab" * 14, None, ""),
    ):
        err = to_service_error(exc)
        assert (err.status, err.kind, err.retry_after_s) == (503, "overloaded", 1.0)
        assert type(exc).__name__ in err.message


def test_serve_with_address_refuses_local_sizing_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """--address joins a cluster sized by `ray start`: --num-cpus is refused up front."""
    from divreward.cli import main

    assert main(["serve", "--address", "127.0.0.1:1", "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "with --address they belong to `ray start`" in err


def test_a_quality_only_reward_app_refuses_diversity_before_any_work() -> None:
    """Without a diversity app (allowed when the default method needs no embeddings),
    a request for a diversity term is a 400 saying so, and readiness does not wait for
    the missing app."""
    from types import SimpleNamespace

    from divreward.services.common.deployments import DiversityHandles
    from divreward.services.config import RewardAppArgs
    from divreward.services.reward_server.serving import RewardServing

    async def ok() -> None:
        return None

    scorer = SimpleNamespace(ready=SimpleNamespace(remote=ok))
    serving = RewardServing(
        {"pickscore": scorer},
        DiversityHandles("diversity", None, None),
        RewardAppArgs(default_diversity="none"),
    )
    req = RewardsRequest.model_validate(
        {"groups": [{"prompt": "p", "images": [b"not decoded"]}], "diversity": {"method": "drift"}}
    )
    with pytest.raises(ServiceError) as info:
        asyncio.run(serving.rewards(req))
    assert info.value.status == 400 and info.value.valid == ["none"]
    assert "runs no diversity application ('diversity')" in info.value.message
    assert asyncio.run(serving.ready()) == {"scorer:pickscore": "ok"}
