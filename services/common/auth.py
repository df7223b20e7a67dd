"""The one bearer-token check of both front doors (HTTP routes and gRPC methods).

With tokens configured (``AuthArgs.enabled``), every call except the liveness and
readiness probes must carry ``Authorization: Bearer <token>`` (HTTP header or gRPC
metadata). With no tokens, the service answers loopback peers only: a call from any
other address is refused with a 401 (gRPC ``UNAUTHENTICATED``). Serve's gRPC proxy
listens on every interface whatever the HTTP host is, so the peer check, not the bind
address, is what keeps an unconfigured service private to its machine.

Each token belongs to a tenant (:mod:`divreward.services.common.tenants`): the check
returns the caller's tenant name, ``local`` for the loopback callers of a service without
tokens.

The peer is what the front door saw: the ASGI scope's ``client`` on HTTP, the
servicer context's ``peer()`` on gRPC (Serve's proxies forward both to the replica).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote

from divreward.services.common.errors import ServiceError
from divreward.services.common.tenants import LOCAL_TENANT, Tenant, find_tenant
from divreward.services.config import AuthArgs

__all__ = [
    "DOCS_ASSETS",
    "PUBLIC_PATHS",
    "TOKEN_PATH_PREFIX",
    "BearerAuth",
    "grpc_peer_host",
    "is_loopback",
    "is_public",
]

#: Routes that answer without a token, from anywhere: the liveness and readiness probes
#: (a Kubernetes kubelet or a compose health check calls them; they reveal nothing),
#: and the API's description: /docs, its Swagger UI assets and /openapi.json (the
#: published schema of this open-source API; every operation they describe still needs
#: a token, which /docs's "Authorize" button sends).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json"})
#: Where the app serves the packaged Swagger UI files (public, like /docs).
DOCS_ASSETS = "/docs-assets"
#: ``/t/<token>/<compat path>``: the token in the URL path, for the pickle clients that
#: cannot send headers (only the compatibility routes: ``/`` and ``/compat/...``).
TOKEN_PATH_PREFIX = "/t/"


def is_public(path: str) -> bool:
    """Whether ``path`` (inside the application) answers without a token."""
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/")


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
    """Checks one call: its ``Authorization`` value and its peer host, and says whose
    call it is (the tenant's name).

    ``peer`` None means an in-process call (no network peer at all): allowed, as the
    ``local`` tenant.
    """

    def __init__(self, args: AuthArgs) -> None:
        self.enabled = args.enabled
        self.tenants: list[Tenant] = args.load_tenants() if args.enabled else []

    def check(self, authorization: str | None, peer: str | None, grpc: bool = False) -> str:
        """The tenant of the call; a 401 ServiceError unless the call may proceed
        (``grpc``: the token comes in metadata, and messages say so)."""
        if not self.enabled:
            if peer is None or is_loopback(peer):
                return LOCAL_TENANT
            raise ServiceError(
                401,
                "unauthorized",
                f"this server has no bearer tokens configured, so it answers loopback "
                f"clients only and {peer} is not one; configure tenants (--tenants FILE or "
                "DIVREWARD_TENANTS_FILE) or tokens (auth.token_file or DIVREWARD_API_TOKENS) "
                "to accept other clients",
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
        tenant = find_tenant(self.tenants, token.strip())
        if tenant is None:
            raise ServiceError(401, "unauthorized", "invalid bearer token")
        return tenant.name

    def check_path_token(self, token: str, peer: str | None) -> str:
        """The check of a token given in the URL path (``/t/<token>/...``), and its
        tenant; the messages never repeat the token."""
        if not self.enabled:
            return self.check(None, peer)
        tenant = find_tenant(self.tenants, unquote(token))
        if tenant is None:
            raise ServiceError(401, "unauthorized", "invalid token in the URL path (/t/<token>/)")
        return tenant.name
