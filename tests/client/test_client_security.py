"""Remote callers authenticate, over verified TLS, with the client alone:

- a server with two tokens accepts each one from the client (``token=`` and
  ``$DIVREWARD_API_TOKEN``), and ``divreward rewards --token-file`` authenticates;
- the pickle dialect authenticates with the token in the URL path (``/t/<token>/``);
- ``https://`` and ``grpcs://`` through a TLS-terminating proxy (the "behind an
  ingress" scheme; a CA and certificate made in the test): verified with the CA, a clear
  error without it, and ``grpcs://`` never falls back to plaintext;
- a trainer process that cannot import Ray, FastAPI, torch, transformers or the model
  zoo imports the client and scores against the live service."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import Service, make_images
from PIL import Image
from tls_certs import Certs, make_certs

from divreward.client import RetryPolicy, RewardClient, RewardClientError
from divreward.client.errors import ServiceUnavailableError
from divreward.safe_pickle import safe_loads

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

TOKENS = ("team-a-0123456789", "team-b-9876543210")
ONE_TRY = RetryPolicy(max_attempts=1)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def auth_url(serve_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reward app with auth on and two tokens (one cheap tiny scorer) at /sec."""
    from ray import serve

    from divreward.services import launch
    from divreward.services.config import RewardAppArgs
    from divreward.services.reward_server.app import build_reward_app

    token_file = Path(tmp_path_factory.mktemp("auth")) / "tokens"
    token_file.write_text("\n".join(TOKENS) + "\n")
    args = serve_app.reward_args.model_dump()
    args["scorers"] = {"clipscore": {"num_cpus": 0.1, "weight": 1.0}}
    args["auth"] = {"enabled": True, "token_file": str(token_file)}
    app = build_reward_app(RewardAppArgs.model_validate(args))
    launch.deploy([(app, "reward-sec", "/sec")], timeout_s=240)
    yield f"{serve_app.base_url}/sec"
    serve.delete("reward-sec")


def _images() -> np.ndarray:
    return make_images(3, 7)


PROMPTS = ["a red bicycle", "a cat", "an owl"]


def test_each_of_the_servers_tokens_is_accepted(
    auth_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKEN", raising=False)
    with (
        RewardClient(auth_url, retry=ONE_TRY, downsize=False) as c,
        pytest.raises(RewardClientError, match="missing 'Authorization: Bearer"),
    ):
        c.score(_images(), PROMPTS)
    scores = []
    for token in TOKENS:
        with RewardClient(auth_url, token=token, downsize=False) as c:
            scores.append(c.score(_images(), PROMPTS).scores["clipscore"])
        monkeypatch.setenv("DIVREWARD_API_TOKEN", token)  # the trainer's variable
        with RewardClient(auth_url, downsize=False) as c:
            scores.append(c.score(_images(), PROMPTS).scores["clipscore"])
    np.testing.assert_allclose(scores[1:], [scores[0]] * 3, rtol=1e-5, atol=1e-5)
    # the server's list is not a client token: a clear error, nothing sent
    monkeypatch.setenv("DIVREWARD_API_TOKEN", ",".join(TOKENS))
    with pytest.raises(ValueError, match="DIVREWARD_API_TOKEN holds a comma-separated list"):
        RewardClient(auth_url)


def test_divreward_rewards_authenticates_with_a_token_file(
    auth_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from divreward.cli import main

    monkeypatch.delenv("DIVREWARD_API_TOKEN", raising=False)
    files = []
    for i, img in enumerate(make_images(3, 11)):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(_png(img))
    argv = ["rewards", "--url", auth_url, "--prompt", "a fox", *map(str, files)]
    assert main([*argv, "--timeout", "20"]) == 1
    assert "401" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS[1] + "\n")
    assert main([*argv, "--token-file", str(token_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["groups"][0]["rewards"]) == 3
    assert main([*argv, "--token", TOKENS[0], "--json"]) == 0
    assert (
        json.loads(capsys.readouterr().out)["groups"][0]["quality"] == out["groups"][0]["quality"]
    )


def test_the_pickle_dialect_authenticates_with_the_token_in_the_path(auth_url: str) -> None:
    files = [_png(a) for a in _images()]
    # exactly what Flow-GRPO's remote reward client sends; only its URL changes
    body = pickle.dumps({"images": files, "prompts": PROMPTS, "metadata": {}})
    assert httpx.post(auth_url + "/", content=body, timeout=60).status_code == 401
    r = httpx.post(f"{auth_url}/t/{TOKENS[0]}/", content=body, timeout=60)
    assert r.status_code == 200, r.text
    scores = safe_loads(r.content)["scores"]
    with RewardClient(auth_url, token=TOKENS[0], downsize=False) as c:
        want = c.score(files, PROMPTS).scores["clipscore"]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    r = httpx.post(f"{auth_url}/t/{TOKENS[1]}/compat/pickle", content=body, timeout=60)
    assert r.status_code == 200 and safe_loads(r.content)["scores"] == pytest.approx(scores)
    r = httpx.post(f"{auth_url}/t/wrong-{TOKENS[1]}/", content=body, timeout=60)
    assert r.status_code == 401 and TOKENS[1] not in r.text
    # Serve's access logs (proxy and replicas) record the route, never the token
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    time.sleep(1.0)  # log lines are flushed by the writers' own threads
    texts = [f.read_text(errors="replace") for f in logs.glob("*.log")]
    assert any("POST /sec" in t for t in texts)  # the access log is there
    assert not any(t in text for text in texts for t in TOKENS)


# ------------------------------------------------------------------ TLS at a proxy
class TlsProxy:
    """Terminates TLS on 127.0.0.1 and forwards the bytes to a plaintext port (what an
    ingress in front of the service does). ALPN offers h2 (gRPC) and http/1.1."""

    def __init__(self, certs: Certs, upstream_port: int) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certs.cert, certs.key)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def proxies(service: Service, certs: Certs) -> Iterator[tuple[str, str]]:
    http_port = int(service.http_url.rsplit(":", 1)[1])
    grpc_port = int(service.grpc_target.rsplit(":", 1)[1])
    https, grpcs = TlsProxy(certs, http_port), TlsProxy(certs, grpc_port)
    yield f"https://localhost:{https.port}", f"grpcs://localhost:{grpcs.port}"
    https.close()
    grpcs.close()


def test_https_and_grpcs_are_verified_tls(
    service: Service, proxies: tuple[str, str], certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIVREWARD_API_TOKEN", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with RewardClient(service.http_url, downsize=False) as plain:
        want = plain.score(_images(), PROMPTS).scores
    https, grpcs = proxies
    for url in (https, grpcs):
        with RewardClient(url, ca_file=certs.ca, downsize=False) as c:
            got = c.score(_images(), PROMPTS).scores
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("DIVREWARD_CA_FILE", str(certs.ca))  # the same, from the environment
    with RewardClient(grpcs, downsize=False) as c:
        assert c.models().scorers
    monkeypatch.delenv("DIVREWARD_CA_FILE")
    # without the CA: the system's trust store does not know it, a clear error, no retry
    with (
        RewardClient(https, downsize=False) as c,
        pytest.raises(RewardClientError, match=r"TLS verification of https://.* failed"),
    ):
        c.models()
    with (
        RewardClient(grpcs, retry=ONE_TRY) as c,
        pytest.raises(ServiceUnavailableError, match="TLS failure"),
    ):
        c.models()
    # grpcs:// at the plaintext gRPC port: a TLS handshake that fails, never plaintext
    with (
        RewardClient(f"grpcs://{service.grpc_target}", ca_file=certs.ca, retry=ONE_TRY) as c,
        pytest.raises(ServiceUnavailableError),
    ):
        c.models()
    with pytest.raises(ValueError, match=r"CA file '/nonexistent\.pem' does not exist"):
        RewardClient(https, ca_file="/nonexistent.pem")


# ------------------------------------------------------------------ client-only trainer
_CLIENT_ONLY = r"""
import importlib.abc, json, sys
BLOCKED = ("ray", "fastapi", "starlette", "uvicorn", "torch", "torchvision", "transformers",
           "diffusers", "open_clip", "peft", "timm", "dreamsim", "accelerate")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in BLOCKED or name.startswith(("divreward.models", "divreward.services",
                                              "divreward.trainer")):
            raise ImportError(f"{name} is not installed on this trainer")
sys.meta_path.insert(0, Blocker())
import numpy as np
from divreward.client import RewardClient
url, images = sys.argv[1], np.load(sys.argv[2])
with RewardClient(url, downsize=False) as c:
    scores = c.score(images, ["a red bicycle", "a cat", "an owl"]).scores
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED
               or m.startswith(("divreward.models", "divreward.services")))
print(json.dumps({"scores": scores, "heavy": heavy}))
"""


def test_a_trainer_with_only_the_client_scores(
    auth_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(tmp_path / "images.npy", _images())
    env = {**__import__("os").environ, "DIVREWARD_API_TOKEN": TOKENS[1]}
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT_ONLY, auth_url, str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["heavy"] == []
    monkeypatch.delenv("DIVREWARD_API_TOKEN", raising=False)
    with RewardClient(auth_url, token=TOKENS[1], downsize=False) as c:
        want = c.score(_images(), PROMPTS).scores["clipscore"]
    np.testing.assert_allclose(res["scores"]["clipscore"], want, rtol=1e-5, atol=1e-5)
