"""The one bearer-token check of both front doors (HTTP routes and gRPC methods).

With tokens configured (``AuthArgs.enabled``), every call except the liveness and
readiness probes must carry ``Authorization: Bearer <token>`` (HTTP header or gRPC
metadata). With no tokens, the service answers loopback peers only: a call from any
other address is refused with a 401 (gRPC ``UNAUTHENTICATED``). Serve's gRPC proxy
listens on every interface whatever the HTTP host is, so the peer check, not the bind
address, is what keeps an unconfigured service private to its machine.

The peer is what the front door saw: the ASGI scope's ``client`` on HTTP, the
servicer context's ``peer()`` on gRPC (Serve's proxies forward both to the replica).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import unquote

from divreward.services.common.errors import ServiceError
from divreward.services.config import AuthArgs

__all__ = ["PUBLIC_PATHS", "BearerAuth", "grpc_peer_host", "is_loopback"]

#: Routes that answer without a token, from anywhere (liveness and readiness probes:
#: a Kubernetes kubelet or a compose health check calls them; they reveal nothing).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or 'localhost') is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def grpc_peer_host(peer: str) -> str:
    """The host of a gRPC peer string: 'ipv4:10.0.0.5:4431' -> '10.0.0.5',
    'ipv6:[::1]:4431' -> '::1' (also URL-escaped), 'unix:/path' -> 'localhost'."""
    scheme, _, rest = unquote(peer).partition(":")
    if scheme == "unix" or scheme == "unix-abstract":
        return "localhost"
    if scheme == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if scheme in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer


class BearerAuth:
    """Checks one call: its ``Authorization`` value and its peer host.

    ``peer`` None means an in-process call (no network peer at all): allowed.
    """

    def __init__(self, args: AuthArgs) -> None:
        self.enabled = args.enabled
        self._tokens = [t.encode() for t in sorted(args.load_tokens())]

    def check(self, authorization: str | None, peer: str | None, grpc: bool = False) -> None:
        """Raise a 401 ServiceError unless the call may proceed (``grpc``: the token
        comes in metadata, and messages say so)."""
        if not self.enabled:
            if peer is None or is_loopback(peer):
                return
            raise ServiceError(
                401,
                "unauthorized",
                f"this server has no bearer tokens configured, so it answers loopback "
                f"clients only and {peer} is not one; configure tokens (auth.token_file or "
                "DIVREWARD_API_TOKENS) to accept other clients",
            )
        if not authorization:
            missing = (
                "missing 'authorization: Bearer <token>' metadata"
                if grpc
                else "missing 'Authorization: Bearer <token>'"
            )
            raise ServiceError(401, "unauthorized", missing)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            where = "authorization metadata" if grpc else "Authorization header"
            raise ServiceError(401, "unauthorized", f"the {where} must be 'Bearer <token>'")
        given = token.strip().encode()
        # Compare against every token, in constant time each, so timing reveals nothing.
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(given, t)
        if not ok:
            raise ServiceError(401, "unauthorized", "invalid bearer token")
