"""gRPC against the real Serve app (tiny models): unary parity with the HTTP API, errors,
idempotent retries, reflection, the bidirectional stream (4 concurrent streams of 20
groups, out-of-order answers) and group assembly across calls and streams."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from helpers import Service, make_images, prom_samples, prom_sum

from divreward.client import (
    Group,
    RewardClient,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
)
from divreward.images import encode_image
from divreward.proto import divreward_pb2 as pb
from divreward.proto import divreward_pb2_grpc as pb_grpc
from divreward.proto.convert import from_proto, to_proto
from divreward.schema import RewardGroupResult, RewardsResponse
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

APP_MD = (("application", "reward"),)


def _png(images: np.ndarray) -> list[bytes]:
    return [encode_image(a) for a in images]


@pytest.fixture(scope="module")
def http(service: Service) -> Any:
    c = RewardClient(service.http_url, downsize=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(service: Service) -> Any:
    c = RewardClient(service.grpc_url, downsize=False)
    yield c
    c.close()


# The models run in float32 and Serve batches concurrent requests together: an image's
# score moves by up to ~1e-6 (relative) with the batch it was computed in (measured
# here: <= 3.2e-6), on either path. Equal up to that, every group, every image.
RTOL = ATOL = 1e-5


def _same_group(a: RewardGroupResult, b: RewardGroupResult) -> None:
    """Same numbers: the same models on the same pixels through the same code."""
    assert a.size == b.size and a.group_id == b.group_id
    np.testing.assert_allclose(a.rewards, b.rewards, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(a.advantages, b.advantages, rtol=RTOL, atol=1e-4)
    assert a.quality.keys() == b.quality.keys()
    for k in a.quality:
        np.testing.assert_allclose(a.quality[k], b.quality[k], rtol=RTOL, atol=ATOL)
    assert a.diversity.method == b.diversity.method
    assert a.diversity.labels == b.diversity.labels and a.diversity.k == b.diversity.k


# ------------------------------------------------------------------ unary
@pytest.mark.parametrize(
    "diversity",
    [
        {"method": "diversegrpo"},
        {"method": "drift"},
        {"method": "gardo"},
        {"method": "gardo", "variant": "paper", "std_normalize": True},
        {"method": "none"},
    ],
)
def test_grpc_rewards_equal_http_rewards(
    http: Any, grpc_client: Any, diversity: dict[str, Any]
) -> None:
    groups = [
        Group("a red bicycle", make_images(5, 1), group_id="g0"),
        Group("a blue car", make_images(3, 2), group_id="g1"),
    ]
    via_http = http.rewards(groups, diversity=diversity)
    via_grpc = grpc_client.rewards(groups, diversity=diversity)
    assert isinstance(via_grpc, RewardsResponse)
    for a, b in zip(via_http.groups, via_grpc.groups, strict=True):
        _same_group(a, b)
    if diversity["method"] == "gardo":  # its fields cross the wire, and its settings
        assert via_grpc.params.diversity.model_dump() == {
            "method": "gardo",
            "variant": diversity.get("variant", "code"),
            "std_normalize": diversity.get("std_normalize", False),
        }
        for a, b in zip(via_http.groups, via_grpc.groups, strict=True):
            assert a.diversity.nn_distance is not None and b.diversity.nn_distance is not None
            np.testing.assert_allclose(a.diversity.nn_distance, b.diversity.nn_distance, atol=1e-5)
            w, grpc_w = a.diversity.advantage_weight, b.diversity.advantage_weight
            np.testing.assert_allclose(w, grpc_w, rtol=RTOL, atol=1e-4)
            # the hand formula on the served quality and distances
            q, d = np.asarray(b.rewards), np.asarray(b.diversity.nn_distance)
            c = q - q.mean()
            if diversity.get("std_normalize"):
                c = c / (q.std() + 1e-6)
            hand = (
                np.where(c > 0, d, 1.0)
                if "variant" in diversity
                else (np.where(q < q.mean(), 1.0, d / d.mean()))
            )
            np.testing.assert_allclose(b.diversity.advantage_weight, hand, atol=1e-12)
            np.testing.assert_allclose(b.advantages, c * hand, atol=1e-9)
    assert via_grpc.params == via_http.params
    assert via_grpc.models == via_http.models
    assert via_grpc.profile == "tiny" and via_grpc.warnings == via_http.warnings


def test_grpc_score_embed_models_health(http: Any, grpc_client: Any) -> None:
    imgs = make_images(3, 3)
    prompts = ["a", "b", "c"]
    s_http, s_grpc = http.score(imgs, prompts), grpc_client.score(imgs, prompts)
    assert s_grpc.scores.keys() == s_http.scores.keys() == {"pickscore", "clipscore"}
    for k in s_http.scores:
        np.testing.assert_allclose(s_grpc.scores[k], s_http.scores[k], rtol=RTOL, atol=ATOL)
    e_http, e_grpc = http.embed(imgs), grpc_client.embed(imgs)
    np.testing.assert_allclose(e_grpc.embeddings, e_http.embeddings, rtol=RTOL, atol=ATOL)
    assert e_grpc.dim == len(e_grpc.embeddings[0])
    assert grpc_client.models() == http.models()
    assert grpc_client.health().status == "ok"


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_client_downsizes_to_the_advertised_resolution(service: Service, kind: str) -> None:
    """The server advertises the largest side its models look at; the client shrinks
    larger images to it, so 300x308 images pass a 256x256-pixel limit they exceed."""
    url = service.http_url if kind == "http" else service.grpc_url
    big = make_images(2, 7, size=300)  # (2, 300, 308, 3): 92400 pixels > 65536
    with RewardClient(url) as c:
        side = c.models().limits["max_resolution"]
        assert 1 <= side <= 256  # the tiny models look at 32 px
        res = c.score(big, ["a", "b"])
        assert len(res.scores["pickscore"]) == 2
    with (
        RewardClient(url, downsize=False) as c,
        pytest.raises(
            RewardRequestError, match=r"payload_too_large: images\[0\]: 308x300 = 92400 pixels"
        ),
    ):
        c.score(big, ["a", "b"])


def test_reflection_lists_the_service(service: Service) -> None:
    with grpc.insecure_channel(service.grpc_target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert "divreward.v1.RewardService" in set(db.get_services())
        desc = db.FindFileContainingSymbol("divreward.v1.RewardService")
        assert desc.name == "divreward/proto/divreward.proto"
        assert "RewardStream" in {m.name for m in desc.service[0].method}


def test_bad_image_is_invalid_argument_naming_group_and_image(service: Service) -> None:
    good = _png(make_images(2, 4))
    req = pb.RewardsRequest(
        groups=[
            pb.RewardGroup(prompt="p", images=good),
            pb.RewardGroup(prompt="q", images=[good[0], b"not an image at all"]),
        ]
    )
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Rewards(req, metadata=APP_MD, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("invalid_image: groups[1].images[1]: cannot be decoded")


def test_unknown_scorer_and_bad_params_are_refused_with_the_http_message(
    http: Any, grpc_client: Any
) -> None:
    g = [Group("p", make_images(2, 5))]
    with pytest.raises(RewardRequestError) as h:
        http.rewards(g, quality={"nope": 1.0})
    with pytest.raises(RewardRequestError) as r:
        grpc_client.rewards(g, quality={"nope": 1.0})
    assert h.value.status == 400 and r.value.status == "INVALID_ARGUMENT"
    assert h.value.detail == r.value.detail
    assert (
        "quality: unknown scorer 'nope'; this server runs: clipscore, pickscore" in r.value.detail
    )
    # the client checks parameters with the schema before sending...
    with pytest.raises(ValueError, match=r"diversity\.diversegrpo\.k_max"):
        grpc_client.rewards(g, diversity={"method": "diversegrpo", "k_max": 0})
    # ...and the server checks them again, naming the field
    req = pb.RewardsRequest(groups=[pb.RewardGroup(prompt="p", images=_png(make_images(2, 5)))])
    req.diversegrpo.k_max = 0
    target = grpc_client._s.url.removeprefix("grpc://")
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.RewardServiceStub(channel).Rewards(req, metadata=APP_MD, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("invalid_request: invalid request: diversity.k_max:")


def test_a_retried_request_id_is_answered_from_the_cache(service: Service) -> None:
    req = pb.RewardsRequest(
        groups=[pb.RewardGroup(prompt="p", images=_png(make_images(3, 6)))],
        request_id=f"dup-{uuid.uuid4().hex}",
    )

    def replays() -> float:
        text = httpx.get(service.http_url + "/metrics", timeout=10).text
        return prom_sum(
            prom_samples(text), "divreward_idempotent_replays_total", route="grpc:Rewards"
        )

    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        before = replays()
        first = stub.Rewards(req, metadata=APP_MD, timeout=60)
        second = stub.Rewards(req, metadata=APP_MD, timeout=60)
        assert second.SerializeToString(deterministic=True) == first.SerializeToString(
            deterministic=True
        )
        assert replays() == before + 1  # one ingress replica in the test app
        other = pb.RewardsRequest()
        other.CopyFrom(req)
        other.groups[0].prompt = "another prompt"
        with pytest.raises(grpc.RpcError) as info:
            stub.Rewards(other, metadata=APP_MD, timeout=60)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "was already used with a different request body" in info.value.details()


# ------------------------------------------------------------------ streaming
def _submission(group_id: str, images: np.ndarray, prompt: str, **kw: Any) -> pb.GroupSubmission:
    sub = GroupSubmission(
        group_id=group_id, prompt=prompt, images=_png(images), request_id=uuid.uuid4().hex, **kw
    )
    return to_proto(sub)  # type: ignore[return-value]


async def _run_stream(
    target: str, messages: list[pb.GroupSubmission], gap_s: float = 0.0
) -> list[GroupSubmissionResult]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        call = stub.RewardStream(metadata=APP_MD)

        async def write() -> None:
            for m in messages:
                await call.write(m)
                if gap_s:
                    await asyncio.sleep(gap_s)
            await call.done_writing()

        writer = asyncio.create_task(write())
        answers = [from_proto(r, GroupSubmissionResult) async for r in call]
        await writer
        return answers


def test_four_concurrent_streams_of_twenty_groups(service: Service, http: Any) -> None:
    streams: list[list[pb.GroupSubmission]] = []
    groups: dict[str, tuple[str, np.ndarray]] = {}
    for s in range(4):
        msgs = []
        for g in range(20):
            gid = f"stream{s}-group{g}"
            imgs = make_images(3 + (s + g) % 4, seed=1000 * s + g)
            prompt = f"prompt {g % 5}"
            groups[gid] = (prompt, imgs)
            msgs.append(_submission(gid, imgs, prompt))
        streams.append(msgs)

    async def all_streams() -> list[list[GroupSubmissionResult]]:
        return await asyncio.gather(*(_run_stream(service.grpc_target, m) for m in streams))

    t0 = time.perf_counter()
    answered = asyncio.run(all_streams())
    elapsed = time.perf_counter() - t0
    for msgs, answers in zip(streams, answered, strict=True):
        # every group answered exactly once, with its own ids
        assert sorted(a.group_id for a in answers) == sorted(m.group_id for m in msgs)
        by_request = {m.request_id: m.group_id for m in msgs}
        assert {a.request_id: a.group_id for a in answers} == by_request
        assert all(a.error is None for a in answers)
    # the same numbers as the HTTP API, group by group (8 groups per request)
    results = {a.group_id: a for answers in answered for a in answers}
    ids = sorted(groups)
    for i in range(0, len(ids), 8):
        batch = ids[i : i + 8]
        ref = http.rewards([Group(groups[g][0], groups[g][1], group_id=g) for g in batch])
        for gid, expected in zip(batch, ref.groups, strict=True):
            got = results[gid]
            assert len(got.groups) == 1 and got.groups[0].sequence == 0
            _same_group(got.groups[0].result, expected)
            np.testing.assert_allclose(got.rewards, expected.rewards, rtol=RTOL, atol=ATOL)
    print(f"4 streams x 20 groups answered in {elapsed:.2f} s")


def test_stream_answers_out_of_order_and_assembles_parts(service: Service, http: Any) -> None:
    """A part of an incomplete group is held while a later whole group is answered;
    the part is answered once its group completes, with the group's rewards."""
    ns = uuid.uuid4().hex
    imgs = make_images(4, 77)

    async def scenario() -> list[GroupSubmissionResult]:
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            call = pb_grpc.RewardServiceStub(channel).RewardStream(metadata=APP_MD)
            await call.write(_submission("held", imgs[:2], "p", group_size=4, namespace=ns))
            await call.write(_submission("whole", make_images(3, 78), "q"))
            first = from_proto(await call.read(), GroupSubmissionResult)
            await call.write(_submission("held", imgs[2:], "p", group_size=4, namespace=ns))
            second = from_proto(await call.read(), GroupSubmissionResult)
            third = from_proto(await call.read(), GroupSubmissionResult)
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            return [first, second, third]

    first, *rest = asyncio.run(scenario())
    assert first.group_id == "whole"  # answered before the earlier, incomplete group
    assert [r.group_id for r in rest] == ["held", "held"]
    ref = http.rewards([Group("p", imgs, group_id="held")]).groups[0]
    parts = sorted(rest, key=lambda r: r.groups[0].group_positions[0])
    for part, span in zip(parts, ([0, 1], [2, 3]), strict=True):
        (g,) = part.groups
        assert g.group_positions == span and g.positions == [0, 1]
        _same_group(g.result, ref)
        np.testing.assert_allclose(
            part.rewards, [ref.rewards[i] for i in span], rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(
            part.advantages, [ref.advantages[i] for i in span], rtol=RTOL, atol=ATOL
        )


def test_a_failed_group_is_answered_in_band_and_the_stream_goes_on(service: Service) -> None:
    bad = _submission("bad", make_images(2, 80), "p")
    bad.images[1] = b"garbage"
    good = _submission("good", make_images(2, 81), "p")
    answers = {a.group_id: a for a in asyncio.run(_run_stream(service.grpc_target, [bad, good]))}
    assert answers["bad"].error is not None
    assert answers["bad"].error.kind == "invalid_image" and answers["bad"].error.status == 400
    assert answers["bad"].request_id == bad.request_id
    assert "groups[0].images[1]: cannot be decoded" in answers["bad"].error.message
    assert answers["good"].error is None and len(answers["good"].rewards) == 2


# ------------------------------------------------------------------ assembly (unary/HTTP)
def test_parts_from_http_and_grpc_assemble_into_one_group(
    service: Service, http: Any, grpc_client: Any
) -> None:
    ns = uuid.uuid4().hex
    imgs = make_images(5, 90)
    out: dict[str, Any] = {}
    hc = RewardClient(service.http_url, downsize=False, namespace=ns)
    gc = RewardClient(service.grpc_url, downsize=False, namespace=ns)
    try:
        f1 = hc.submit(Group("a fox", imgs[:2], group_id="fox", group_size=5))
        time.sleep(0.5)  # let the first part arrive first: it fixes the group's order
        f2 = gc.submit(Group("a fox", imgs[2:], group_id="fox", group_size=5))
        out["http"], out["grpc"] = f1.result(60), f2.result(60)
    finally:
        hc.close()
        gc.close()
    ref = http.rewards([Group("a fox", imgs, group_id="fox")]).groups[0]
    assert out["http"].groups[0].group_positions == [0, 1]
    assert out["grpc"].groups[0].group_positions == [2, 3, 4]
    np.testing.assert_allclose(
        out["http"].rewards + out["grpc"].rewards, ref.rewards, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        out["http"].quality["total"] + out["grpc"].quality["total"],
        ref.quality["total"],
        rtol=RTOL,
        atol=ATOL,
    )
    _same_group(out["grpc"].groups[0].result, ref)


def test_a_part_larger_than_the_room_left_spills_into_the_next_group(service: Service) -> None:
    ns = uuid.uuid4().hex
    imgs = make_images(4, 91)
    with RewardClient(service.http_url, downsize=False, namespace=ns) as c:
        f1 = c.submit(Group("p", imgs[:3], group_id="spill", group_size=2))
        time.sleep(0.5)
        f2 = c.submit(Group("p", imgs[3:], group_id="spill", group_size=2))
        r1, r2 = f1.result(60), f2.result(60)
    assert [(g.sequence, g.positions, g.group_positions) for g in r1.groups] == [
        (0, [0, 1], [0, 1]),
        (1, [2], [0]),
    ]
    assert [(g.sequence, g.positions, g.group_positions) for g in r2.groups] == [(1, [0], [1])]
    assert r1.groups[1].result == r2.groups[0].result  # both parts see the same group #1
    assert len(r1.rewards) == 3 and r1.rewards[2] == r1.groups[1].result.rewards[0]


def test_an_incomplete_group_times_out_with_a_clear_error(service: Service) -> None:
    ns = uuid.uuid4().hex
    for url in (service.http_url, service.grpc_url):
        with RewardClient(url, downsize=False, namespace=ns) as c:
            fut = c.submit(
                Group("p", make_images(2, 92), group_id=f"lonely-{url[:4]}", group_size=5),
                assembly_timeout_s=1.0,
            )
            with pytest.raises((RewardTimeoutError, RewardServiceError)) as info:
                fut.result(60)
        assert "is incomplete: 2 of 5 images arrived from 1 part(s) within 1 s" in str(info.value)
        assert "408" in str(info.value)


def test_parts_that_disagree_are_refused(service: Service) -> None:
    ns = uuid.uuid4().hex
    with RewardClient(service.http_url, downsize=False, namespace=ns) as c:
        held = c.submit(
            Group("p", make_images(1, 93), group_id="x", group_size=3), assembly_timeout_s=3.0
        )
        time.sleep(0.5)
        with pytest.raises(RewardRequestError, match=r"being assembled for the prompt 'p'"):
            c.submit(Group("other", make_images(1, 94), group_id="x", group_size=3)).result(30)
        with pytest.raises(RewardRequestError, match=r"being assembled with group_size 3"):
            c.submit(Group("p", make_images(1, 95), group_id="x", group_size=4)).result(30)
        with pytest.raises(RewardRequestError, match=r"409.*parameters\s+differ"):
            c.submit(
                Group("p", make_images(1, 96), group_id="x", group_size=3),
                diversity={"method": "drift"},
            ).result(30)
        with pytest.raises((RewardTimeoutError, RewardServiceError), match="1 of 3 images"):
            held.result(60)


def test_concurrent_threads_share_one_client(service: Service, http: Any) -> None:
    """The sync client is used from a trainer's thread pool (Flow-GRPO: 8 workers)."""
    with RewardClient(service.grpc_url, downsize=False) as c:
        results: dict[int, Any] = {}

        def work(i: int) -> None:
            results[i] = c.submit(Group(f"p{i}", make_images(3, 200 + i), group_id=f"t{i}")).result(
                60
            )

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(results) == list(range(8))
    ref = http.rewards([Group("p3", make_images(3, 203), group_id="t3")]).groups[0]
    np.testing.assert_allclose(results[3].rewards, ref.rewards, rtol=RTOL, atol=ATOL)
