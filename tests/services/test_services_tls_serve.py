"""``divreward serve --tls-cert --tls-key``: the service terminates TLS itself. A
subprocess on 127.0.0.1 with a CA and certificate made in the test: the client scores
over https:// with the CA, fails verification with a clear error without it, plaintext
HTTP is not served, and Serve's gRPC proxy (which has no TLS) is not started."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures_serve import free_port, mark_built
from helpers import make_images
from test_services_cli import TINY_MODELS, _kill, _start, _tail, _tree
from tls_certs import make_certs

from divreward.client import RewardClient, RewardClientError
from divreward.client.tls import ssl_context
from divreward.services.cli import prepare_config
from divreward.services.tls import GRPC_WITHOUT_TLS

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]


def _args(**kw: Any) -> argparse.Namespace:
    base = dict(
        config=None,
        profile="tiny",
        host=None,
        port=None,
        grpc_port=None,
        token_file=None,
        tiny_dir=None,
        weights_dir=None,
        address=None,
        num_cpus=2,
        tls_cert=None,
        tls_key=None,
    )
    return argparse.Namespace(**{**base, **kw})


def test_tls_flags_set_serves_https_options_and_turn_grpc_off(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    config = prepare_config(_args(tls_cert=certs.cert, tls_key=certs.key))
    assert config["http_options"]["ssl_certfile"] == str(certs.cert.resolve())
    assert config["http_options"]["ssl_keyfile"] == str(certs.key.resolve())
    assert config["grpc_options"]["grpc_servicer_functions"] == []
    with pytest.raises(ValueError, match="go together"):
        prepare_config(_args(tls_cert=certs.cert))
    with pytest.raises(ValueError, match="--tls-key /nope: no such file"):
        prepare_config(_args(tls_cert=certs.cert, tls_key=Path("/nope")))
    with pytest.raises(ValueError, match="--grpc-port with --tls-\\*: Ray Serve's gRPC proxy"):
        prepare_config(_args(tls_cert=certs.cert, tls_key=certs.key, grpc_port=9100))
    assert "grpc_servicer_functions" not in prepare_config(_args())["http_options"]


@pytest.mark.slow
def test_serve_terminates_tls_itself(tiny_zoo: Any, tmp_path: Path) -> None:
    for name in TINY_MODELS:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, TINY_MODELS)
    certs = make_certs(tmp_path / "tls")
    port = free_port()
    log = tmp_path / "serve.log"
    tls = [f"--tls-cert={certs.cert}", f"--tls-key={certs.key}", f"--tiny-dir={tiny_zoo.root}"]
    proc = _start(["--profile=tiny", "--num-cpus=2", f"--port={port}", *tls], log)
    base = f"https://127.0.0.1:{port}"
    tree: list[Any] = []
    try:
        deadline = time.monotonic() + 300
        verify = ssl_context(str(certs.ca))
        while True:
            assert proc.poll() is None, f"divreward serve exited {proc.returncode}:\n{_tail(log)}"
            try:
                ready = httpx.get(f"{base}/readyz", timeout=10, verify=verify).status_code
                if ready == 200 and "divreward: serving" in log.read_text(errors="replace"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready in 300 s:\n{_tail(log)}"
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert f"on https://127.0.0.1:{port}" in text and GRPC_WITHOUT_TLS in text
        with RewardClient(base, ca_file=certs.ca) as c:
            res = c.rewards([("a fox", make_images(4, 5))])
            assert res.profile == "tiny" and len(res.groups[0].rewards) == 4
        with (
            RewardClient(base) as c,
            pytest.raises(RewardClientError, match="TLS verification of https://"),
        ):
            c.models()
        with pytest.raises(httpx.HTTPError):  # no plaintext HTTP on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        tree = _tree(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, _tail(log)
    finally:
        _kill(tree or _tree(proc), proc)
