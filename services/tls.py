"""``divreward serve --tls-cert FILE --tls-key FILE``: the HTTP front door terminates TLS
itself (Serve's ``HTTPOptions(ssl_certfile, ssl_keyfile)``).

Ray Serve's gRPC proxy has no TLS and listens on every interface, so with TLS on
``divreward serve`` does not start it: plaintext gRPC is never exposed beside an HTTPS
front door. ``grpcs://`` goes through a TLS-terminating ingress or proxy in front of a
gRPC port that only it can reach (docs/serving.md); asking for ``--grpc-port`` together
with ``--tls-*`` is an error that says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_tls_args", "apply_tls"]

GRPC_WITHOUT_TLS = (
    "Ray Serve's gRPC proxy cannot terminate TLS and listens on every interface, so "
    "`divreward serve --tls-*` does not start it; terminate grpcs:// at an ingress or "
    "proxy in front of a serve without --tls-* (docs/serving.md, 'TLS')"
)


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")


def apply_tls(args: argparse.Namespace, config: dict[str, Any]) -> bool:
    """Put the certificate in the HTTP options and turn the gRPC proxy off; raises
    ValueError for a half or unreadable pair, or with --grpc-port. True when TLS is on."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return False
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).expanduser().is_file():
            raise ValueError(f"{flag} {path}: no such file")
    if getattr(args, "grpc_port", None):
        raise ValueError(f"--grpc-port with --tls-*: {GRPC_WITHOUT_TLS}")
    http = config.setdefault("http_options", {})
    http["ssl_certfile"] = str(Path(cert).expanduser().resolve())
    http["ssl_keyfile"] = str(Path(key).expanduser().resolve())
    config.setdefault("grpc_options", {})["grpc_servicer_functions"] = []
    return True
