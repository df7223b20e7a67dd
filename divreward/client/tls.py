"""The client's credentials: its one bearer token and the CA that signed the server's
certificate (``https://`` and ``grpcs://`` are verified TLS, never plaintext)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

__all__ = ["CA_ENV", "TOKEN_ENV", "check_token", "read_token_file", "ssl_context", "tls_ca_file"]

#: The trainer's (and the client's) one bearer token. The server's list of accepted
#: tokens is another variable, ``DIVREWARD_API_TOKENS``.
TOKEN_ENV = "DIVREWARD_API_TOKEN"
#: PEM file of the CA(s) to trust for https:// and grpcs:// (else $SSL_CERT_FILE, else
#: the system's trust store).
CA_ENV = "DIVREWARD_CA_FILE"


def check_token(token: str, source: str) -> str:
    """The token, stripped; a list (a comma) or an empty token is an error naming
    ``source`` (where it came from)."""
    token = token.strip()
    if "," in token:
        raise ValueError(
            f"{source} holds a comma-separated list: a client sends ONE token (its own); "
            "the list of accepted tokens is the server's DIVREWARD_API_TOKENS"
        )
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{source} must be one token without spaces, got {len(token)} chars")
    return token


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The one token in a file (surrounding whitespace ignored)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
    return check_token(text, f"token file {path}")


def tls_ca_file(path: str | os.PathLike[str]) -> str:
    """``path`` if it is a readable file (checked now, not at the first call)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"CA file {str(path)!r} does not exist (ca_file / ${CA_ENV})")
    return str(p)


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: hostname and chain, against ``ca_file`` or the
    system's trust store."""
    return ssl.create_default_context(cafile=ca_file)
