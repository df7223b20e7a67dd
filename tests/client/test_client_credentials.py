"""The client's credentials without a service: one token (never a list), where it comes
from and what wins, token files, CA files, and the scheme's transport (grpcs:// is a TLS
channel, never plaintext)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from divreward.client import RewardClient
from divreward.client._grpc import AsyncGrpcTransport
from divreward.client.client import ClientSettings
from divreward.client.retry import RetryPolicy
from divreward.client.tls import read_token_file


def test_the_token_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKEN", raising=False)
    assert ClientSettings("http://h:1").headers == {}
    monkeypatch.setenv("DIVREWARD_API_TOKEN", " env-tok \n")
    assert ClientSettings("http://h:1").headers == {"authorization": "Bearer env-tok"}
    assert ClientSettings("http://h:1", token="arg").headers == {"authorization": "Bearer arg"}
    # an explicit header wins over both
    s = ClientSettings("http://h:1", token="arg", headers={"Authorization": "Bearer hdr"})
    assert s.headers == {"Authorization": "Bearer hdr"}


@pytest.mark.parametrize("bad", ["a,b", "tok-a, tok-b", ""])
def test_a_list_or_an_empty_token_is_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIVREWARD_API_TOKEN", bad)
    with pytest.raises(ValueError, match="DIVREWARD_API_TOKEN"):
        RewardClient("http://h:1")
    with pytest.raises(ValueError, match=r"^token "):
        RewardClient("http://h:1", token=bad)


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("  one-token\n")
    assert read_token_file(f) == "one-token"
    f.write_text("a\nb\n")
    with pytest.raises(ValueError, match="without spaces"):
        read_token_file(f)
    with pytest.raises(ValueError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")


def test_ca_file_from_the_argument_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until used")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("DIVREWARD_CA_FILE", raising=False)
    assert ClientSettings("https://h:1").ca_file is None
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert ClientSettings("https://h:1").ca_file == str(ca)
    monkeypatch.setenv("DIVREWARD_CA_FILE", str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match=r"nope\.pem' does not exist"):
        ClientSettings("https://h:1")
    assert ClientSettings("https://h:1", ca_file=ca).ca_file == str(ca)


def test_grpcs_opens_a_secure_channel_and_grpc_a_plaintext_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    real_secure, real_insecure = grpc.aio.secure_channel, grpc.aio.insecure_channel

    def secure(target: str, creds: object, **kw: object) -> object:
        made.append(f"secure {target}")
        return real_secure(target, creds, **kw)

    def insecure(target: str, **kw: object) -> object:
        made.append(f"insecure {target}")
        return real_insecure(target, **kw)

    monkeypatch.setattr(grpc.aio, "secure_channel", secure)
    monkeypatch.setattr(grpc.aio, "insecure_channel", insecure)

    async def open_both() -> None:
        for url in ("grpcs://h:443", "grpc://h:9000"):
            t = AsyncGrpcTransport(url, timeout_s=1, retry=RetryPolicy())
            await t.aclose()

    asyncio.run(open_both())
    assert made == ["secure h:443", "insecure h:9000"]


class _RecordingPolicy(RetryPolicy):
    """Records the Retry-After each retry is asked to honour; waits no real time."""

    def next_wait(
        self, retry: int, waited_s: float, retry_after_s: float | None = None
    ) -> float | None:
        wait = super().next_wait(retry, waited_s, retry_after_s)
        SEEN.append((retry_after_s, wait))
        return 0.0 if wait is not None else None


SEEN: list[tuple[float | None, float | None]] = []


def test_grpc_resource_exhausted_is_retried_after_the_trailing_retry_after() -> None:
    """A local gRPC server answers RESOURCE_EXHAUSTED with ``retry-after`` trailing
    metadata (as the reward ingress does for a tenant over its quota) twice, then OK."""
    from divreward.proto import divreward_pb2 as pb
    from divreward.proto import divreward_pb2_grpc as pb_grpc
    from divreward.schema import HealthResponse

    calls: list[str] = []

    class Throttling(pb_grpc.RewardServiceServicer):
        async def Health(self, request: pb.HealthRequest, context: object) -> pb.HealthResponse:  # noqa: N802
            calls.append("Health")
            if len(calls) <= 2:
                context.set_trailing_metadata((("retry-after", "7"),))  # type: ignore[attr-defined]
                await context.abort(  # type: ignore[attr-defined]
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "overloaded: tenant 'team-a' is over its quota",
                )
            return pb.HealthResponse(status="ok")

    async def scenario() -> tuple[str, str]:
        server = grpc.aio.server()
        pb_grpc.add_RewardServiceServicer_to_server(Throttling(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            policy = _RecordingPolicy(max_attempts=5, jitter=0.0)
            t = AsyncGrpcTransport(f"grpc://127.0.0.1:{port}", timeout_s=10, retry=policy)
            ok = await t.call("Health", None, HealthResponse, "rid")
            # a server that keeps refusing: the final error says how it ended
            tight = _RecordingPolicy(max_attempts=2, jitter=0.0)
            t2 = AsyncGrpcTransport(f"grpc://127.0.0.1:{port}", timeout_s=10, retry=tight)
            calls.clear()
            try:
                await t2.call("Health", None, HealthResponse, "rid2")
            except Exception as exc:  # the 3rd call would succeed; 2 attempts fail
                final = str(exc)
            else:
                final = "no error"
            await t.aclose()
            await t2.aclose()
            return ok.status or "", final
        finally:
            await server.stop(None)

    SEEN.clear()
    status, final = asyncio.run(scenario())
    assert status == "ok"
    assert SEEN[:2] == [(7.0, 7.0), (7.0, 7.0)]  # the server's 7 s, honoured
    assert final.startswith(
        "server answered RESOURCE_EXHAUSTED after 2 attempts: overloaded: tenant 'team-a' "
        "is over its quota (gave up after 2 attempt(s)"
    )
