"""The group assembler's bookkeeping and the gRPC servicer's status mapping and auth,
in-process (no Serve): the Serve-level behaviour is in test_services_grpc.py."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from services_helpers import StubServing

from divreward.services.common.errors import ServiceError
from divreward.services.config import AssemblyArgs
from divreward.services.reward_server.assembler import GroupAssembler
from divreward.services.reward_server.grpc_methods import RewardGrpcMethods, grpc_code


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _add(asm: GroupAssembler, part: str, n: int, **kw: Any) -> Any:
    args = {
        "tenant": "team-a",
        "namespace": "ns",
        "group_id": "g",
        "part_id": part,
        "prompt": "p",
        "images": [f"{part}-{i}".encode() for i in range(n)],
        "group_size": 4,
        "params_key": "k",
        "timeout_s": 5.0,
    }
    args.update(kw)
    return asm.add(**args)


def test_parts_fill_a_group_and_the_completing_part_leads() -> None:
    async def scenario() -> None:
        asm = GroupAssembler()
        (s1,) = await _add(asm, "a", 1)
        (s2,) = await _add(asm, "b", 2)
        assert s1.leader_images is None and s2.leader_images is None
        assert (await asm.stats())["pending_images"] == 3
        (s3,) = await _add(asm, "c", 1)
        assert s3.leader_images == [b"a-0", b"b-0", b"b-1", b"c-0"]  # arrival order
        assert [s.group_positions for s in (s1, s2, s3)] == [[0], [1, 2], [3]]
        assert s1.token == s2.token == s3.token and s3.sequence == 0
        assert (await asm.stats())["pending_images"] == 0
        waiter = asyncio.ensure_future(asm.wait(s1.token))
        await asyncio.sleep(0)
        assert not waiter.done()
        await asm.resolve(s3.token, ("ok", "the rewards"))
        assert await waiter == ("ok", "the rewards")

    _run(scenario())


def test_tenants_never_share_a_group_even_with_the_same_namespace_and_group_id() -> None:
    async def scenario() -> None:
        asm = GroupAssembler()
        (a1,) = await _add(asm, "a1", 2, tenant="team-a")
        (b1,) = await _add(asm, "b1", 2, tenant="team-b")
        # 4 images of group "g" in namespace "ns" arrived, but two groups are open
        assert a1.token != b1.token
        assert await asm.stats() == {"open_groups": 2, "pending_images": 4, "known_groups": 2}
        # the same part id from another tenant is not a retry of the first's part
        (b2,) = await _add(asm, "a1", 2, tenant="team-b")
        assert b2.token == b1.token and b2.leader_images == [b"b1-0", b"b1-1", b"a1-0", b"a1-1"]
        (a2,) = await _add(asm, "a2", 2, tenant="team-a")
        assert a2.token == a1.token and a2.leader_images == [b"a1-0", b"a1-1", b"a2-0", b"a2-1"]
        assert (await asm.stats())["open_groups"] == 0

    _run(scenario())


def test_overflow_spills_into_the_next_group_and_retries_do_not_count_twice() -> None:
    async def scenario() -> None:
        asm = GroupAssembler()
        segs = await _add(asm, "a", 6)
        assert [(s.sequence, s.positions, s.group_positions) for s in segs] == [
            (0, [0, 1, 2, 3], [0, 1, 2, 3]),
            (1, [4, 5], [0, 1]),
        ]
        assert segs[0].leader_images is not None and segs[1].leader_images is None
        again = await _add(asm, "a", 6)  # the same part retried (same request id)
        assert [(s.token, s.leader_images) for s in again] == [(s.token, None) for s in segs]
        assert (await asm.stats())["pending_images"] == 2

    _run(scenario())


def test_an_incomplete_group_expires_for_every_waiting_part() -> None:
    async def scenario() -> tuple[Any, Any]:
        asm = GroupAssembler()
        (s1,) = await _add(asm, "a", 1, timeout_s=0.05)
        (s2,) = await _add(asm, "b", 1)
        outs = await asyncio.gather(asm.wait(s1.token), asm.wait(s2.token))
        assert (await asm.stats())["pending_images"] == 0
        return outs

    (st1, e1), (st2, e2) = _run(scenario())
    assert st1 == st2 == "error" and e1 is e2
    assert isinstance(e1, ServiceError) and e1.status == 408
    assert e1.message.startswith(
        "group 'g' (namespace 'ns', #0) is incomplete: 2 of 4 images arrived from 2 part(s) "
        "within 0.05 s"
    )


@pytest.mark.parametrize(
    "kw, status, message",
    [
        ({"prompt": "q"}, 422, "being assembled for the prompt 'p', this part has 'q'"),
        ({"group_size": 5}, 422, "being assembled with group_size 4, this part says 5"),
        ({"params_key": "other"}, 409, "parameters differ from its first part's"),
    ],
)
def test_parts_that_do_not_fit_are_refused(kw: dict[str, Any], status: int, message: str) -> None:
    async def scenario() -> None:
        asm = GroupAssembler()
        await _add(asm, "a", 1)
        with pytest.raises(ServiceError, match=message) as info:
            await _add(asm, "b", 1, **kw)
        assert info.value.status == status
        assert (await asm.stats())["pending_images"] == 1  # nothing half-added

    _run(scenario())


def test_the_pending_image_limit_is_a_503() -> None:
    async def scenario() -> None:
        asm = GroupAssembler(AssemblyArgs(max_pending_images=3))
        await _add(asm, "a", 3)
        with pytest.raises(ServiceError, match=r"holds 3 images .* \(limit 3\); retry later") as e:
            await _add(asm, "b", 1, group_id="other")
        assert e.value.status == 503 and e.value.retry_after_s == 1.0

    _run(scenario())


def test_a_leader_that_never_resolves_times_the_group_out() -> None:
    async def scenario() -> Any:
        asm = GroupAssembler(AssemblyArgs(compute_timeout_s=0.05))
        (s,) = await _add(asm, "a", 4)
        return await asm.wait(s.token)

    status, err = _run(scenario())
    assert status == "error" and err.status == 504
    assert "was complete but its rewards did not arrive within 0.05 s" in err.message


# ------------------------------------------------------------------ servicer helpers
@pytest.mark.parametrize(
    "statuses, code",
    [
        ((400, 413, 422, 418), grpc.StatusCode.INVALID_ARGUMENT),  # 418: any other 4xx
        ((401,), grpc.StatusCode.UNAUTHENTICATED),
        ((408,), grpc.StatusCode.ABORTED),
        ((409,), grpc.StatusCode.ALREADY_EXISTS),
        ((429,), grpc.StatusCode.RESOURCE_EXHAUSTED),
        ((500, 502), grpc.StatusCode.INTERNAL),
        ((503,), grpc.StatusCode.UNAVAILABLE),
        ((504,), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_http_statuses_map_to_grpc_codes(statuses: tuple[int, ...], code: grpc.StatusCode) -> None:
    assert {s: grpc_code(s) for s in statuses} == dict.fromkeys(statuses, code)


class _Ctx:
    """What Serve's gRPC proxy hands the servicer: metadata and the caller's peer."""

    def __init__(self, metadata: list[tuple[str, str]], peer: str = "ipv4:127.0.0.1:50001"):
        self.metadata = metadata
        self._peer = peer
        self.code: Any = None
        self.details: Any = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        self.trailing = list(metadata)


def _servicer(enabled: bool, monkeypatch: pytest.MonkeyPatch) -> RewardGrpcMethods:
    from divreward.services.common.api import Api
    from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs

    monkeypatch.setenv("DIVREWARD_TEST_GRPC_TOKENS", "s3cret")
    auth = AuthArgs(enabled=enabled, tokens_env="DIVREWARD_TEST_GRPC_TOKENS")

    m = RewardGrpcMethods()
    m.api = Api("reward", LimitsArgs(), auth, IngressArgs())
    m.serving = StubServing()
    return m


def test_grpc_auth_reads_the_authorization_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _servicer(False, monkeypatch)._check_auth(_Ctx([])) == "local"  # loopback
    m = _servicer(True, monkeypatch)
    assert m._check_auth(_Ctx([("authorization", "Bearer s3cret")])) == "token-1"
    with pytest.raises(ServiceError, match="missing 'authorization: Bearer <token>' metadata"):
        m._check_auth(_Ctx([]))
    with pytest.raises(ServiceError, match="invalid bearer token") as info:
        m._check_auth(_Ctx([("authorization", "Bearer nope")]))
    ctx = _Ctx([])
    m._fail(ctx, info.value)
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED
    assert ctx.details == "unauthorized: invalid bearer token"


@pytest.mark.parametrize("peer", ["ipv4:10.1.2.3:40001", "ipv6:[2001:db8::7]:40001"])
def test_grpc_without_tokens_refuses_peers_off_the_machine(
    monkeypatch: pytest.MonkeyPatch, peer: str
) -> None:
    """No tokens configured: an RPC from a non-loopback peer (as the servicer sees it)
    ends UNAUTHENTICATED, on unary and streaming RPCs alike; loopback is served."""
    from divreward.proto import divreward_pb2 as pb

    m = _servicer(False, monkeypatch)
    ctx = _Ctx([("authorization", "Bearer guess")], peer=peer)
    with pytest.raises(ServiceError, match="loopback clients only"):
        asyncio.run(m.Models(pb.ModelsRequest(), ctx))
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED

    async def one_message() -> Any:
        async def requests() -> Any:
            yield pb.GroupSubmission(group_id="g", prompt="p", images=[b"x"])

        return [r async for r in m.RewardStream(requests(), stream_ctx)]

    stream_ctx = _Ctx([], peer=peer)
    with pytest.raises(ServiceError, match="loopback clients only"):
        asyncio.run(one_message())
    assert stream_ctx.code == grpc.StatusCode.UNAUTHENTICATED

    local = _Ctx([], peer="ipv4:127.0.0.1:40001")
    reply = asyncio.run(m.Models(pb.ModelsRequest(), local))
    assert local.code is None and isinstance(reply, pb.ModelsResponse)
    # the probes stay open to anyone (a kubelet or a health check calls them)
    probe = _Ctx([], peer=peer)
    health = asyncio.run(m.Health(pb.HealthRequest(), probe))
    assert probe.code is None and isinstance(health, pb.HealthResponse)


def test_assembly_settings_come_from_the_reward_app_config() -> None:
    """RewardAppArgs.assembly reaches the GroupService of the HTTP route and the gRPC
    methods (both build it over the serving layer), and a misspelt key is refused."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from divreward.services.config import RewardAppArgs
    from divreward.services.reward_server.groups import GroupService

    args = RewardAppArgs(assembly={"default_timeout_s": 7.5, "max_pending_images": 64})
    service = GroupService(SimpleNamespace(args=args))
    assert service.args.default_timeout_s == 7.5 and service.args.max_pending_images == 64
    assert GroupService(SimpleNamespace(args=args), args=AssemblyArgs()).args == AssemblyArgs()
    with pytest.raises(ValidationError, match="default_timeout"):
        RewardAppArgs(assembly={"default_timeout": 7.5})


def test_a_429_ends_a_grpc_call_with_retry_after_trailing_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serve's proxy forwards trailing metadata only from a call that returns: a 429
    (with its retry-after) is returned with its code set; other errors are raised."""
    from divreward.proto import divreward_pb2 as pb

    m = _servicer(True, monkeypatch)
    ctx = _Ctx([])
    quota = ServiceError(429, "overloaded", "tenant 'a' is over its quota", retry_after_s=2.2)
    assert m._end(ctx, quota, "Score") == pb.ScoreResponse()
    assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ctx.details == "overloaded: tenant 'a' is over its quota"
    assert ctx.trailing == [("retry-after", "3")]  # whole seconds, rounded up
    bad = ServiceError(422, "invalid_request", "prompts[0]: too long")
    with pytest.raises(ServiceError, match="too long"):
        m._end(_Ctx([]), bad, "Score")
