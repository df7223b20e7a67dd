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
