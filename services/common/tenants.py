"""Tenants: who a call is, from its bearer token, for auth, fair queueing, group
assembly and metrics.

A tenant is a name, the SHA-256 of its token (a token is never kept in clear), a
``weight`` (its share of the models under contention) and ``max_queued_images`` (the
images it may have waiting in an ingress replica's fair queue; beyond it a 429). They
come from one YAML file (``divreward serve --tenants FILE`` or
``$DIVREWARD_TENANTS_FILE``)::

    tenants:
      - name: team-a
        token: "..."              # or token_sha256: "<hex>"
        weight: 2                 # share under contention (default 1)
        max_queued_images: 4096   # beyond this: 429 with Retry-After (default: no limit)

and from the older token settings (``$DIVREWARD_API_TOKENS``, ``auth.token_file``):
each such token is a tenant of weight 1 named ``token-1``, ``token-2``, ... in the order
given. With no tokens at all, loopback callers are the tenant ``local``.

The tenant of the call being handled travels in a context variable
(:func:`bind_call`, :func:`current_tenant`): the HTTP auth middleware and the gRPC
methods set it, and every task the call starts inherits it (asyncio copies the context),
so the serving layer's fair queue and the group assembler read it where they need it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

__all__ = [
    "LOCAL_TENANT",
    "CallContext",
    "Tenant",
    "TenantEntry",
    "TenantsFile",
    "bind_call",
    "bound_call",
    "current_call",
    "current_tenant",
    "find_tenant",
    "load_tenants_file",
    "token_digest",
    "token_tenants",
]

#: The tenant of callers without a token, where the loopback rule lets them in (no
#: tokens configured), and of in-process calls.
LOCAL_TENANT = "local"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def token_digest(token: str) -> bytes:
    """SHA-256 of a token (what is kept and compared)."""
    return hashlib.sha256(token.encode()).digest()


class TenantEntry(BaseModel):
    """One tenant of the tenants file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Tenant name (letters, digits, '.', '_', '-'; it labels metrics and error messages)."""
    token: SecretStr | None = None
    """The tenant's bearer token (keep the file secret: a Kubernetes Secret, mode 0600)."""
    token_sha256: str | None = None
    """Or the SHA-256 of the token in hex (`printf %s TOKEN | sha256sum`): the file then
    holds no token."""
    weight: float = Field(default=1.0, gt=0)
    """Share of the models under contention, relative to the other tenants' weights."""
    max_queued_images: int | None = Field(default=None, ge=1)
    """Images this tenant may have waiting in an ingress replica's fair queue; a request that
    would exceed it gets 429 with Retry-After. None: no limit."""

    @model_validator(mode="after")
    def _check(self) -> TenantEntry:
        if not _NAME.match(self.name):
            raise ValueError(
                f"name {self.name!r}: use 1-63 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if self.name == LOCAL_TENANT:
            raise ValueError(f"name {LOCAL_TENANT!r} is reserved for loopback callers")
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError(f"tenant {self.name!r}: give exactly one of token and token_sha256")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError(f"tenant {self.name!r}: token is empty")
        if self.token is not None and "," in self.token.get_secret_value():
            raise ValueError(f"tenant {self.name!r}: a token cannot contain ','")
        if self.token_sha256 is not None and not _HEX64.match(self.token_sha256.lower()):
            raise ValueError(
                f"tenant {self.name!r}: token_sha256 must be 64 hex digits (a SHA-256)"
            )
        return self

    def digest(self) -> bytes:
        if self.token is not None:
            return token_digest(self.token.get_secret_value().strip())
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256.lower())


class TenantsFile(BaseModel):
    """The tenants file: ``tenants:``, a list of :class:`TenantEntry`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: list[TenantEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        seen_names: dict[str, int] = {}
        seen_tokens: dict[bytes, str] = {}
        for i, t in enumerate(self.tenants):
            if t.name in seen_names:
                first = seen_names[t.name]
                raise ValueError(
                    f"tenants[{i}]: name {t.name!r} is already used by tenants[{first}]"
                )
            seen_names[t.name] = i
            d = t.digest()
            if d in seen_tokens:
                raise ValueError(
                    f"tenants[{i}] ({t.name!r}): same token as tenant {seen_tokens[d]!r}; "
                    "each tenant needs its own token"
                )
            seen_tokens[d] = t.name
        return self


@dataclass(frozen=True)
class Tenant:
    """A tenant as the ingress keeps it: the token's digest, never the token."""

    name: str
    digest: bytes
    weight: float = 1.0
    max_queued_images: int | None = None

    def __repr__(self) -> str:  # never print the digest either
        return (
            f"Tenant(name={self.name!r}, weight={self.weight:g}, "
            f"max_queued_images={self.max_queued_images})"
        )


def load_tenants_file(path: str | Path) -> list[Tenant]:
    """The tenants of a file; a ValueError naming the file and the bad entry."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ValueError(f"tenants file {p}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"tenants file {p}: not valid YAML ({exc})") from None
    try:
        parsed = TenantsFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc.lstrip('.') or 'file'}: {msg}")
        raise ValueError(f"tenants file {p}: " + "; ".join(problems)) from None
    return [Tenant(t.name, t.digest(), t.weight, t.max_queued_images) for t in parsed.tenants]


def token_tenants(tokens: Iterable[str]) -> list[Tenant]:
    """Tenants of weight 1, ``token-1``, ``token-2``, ..., one per distinct token (in
    the order given): the older token settings."""
    out: list[Tenant] = []
    seen: set[bytes] = set()
    for token in tokens:
        d = token_digest(token)
        if d not in seen:
            seen.add(d)
            out.append(Tenant(f"token-{len(out) + 1}", d))
    return out


def find_tenant(tenants: Sequence[Tenant], token: str) -> Tenant | None:
    """The tenant whose token this is: every digest is compared, in constant time each,
    so the timing reveals neither the token nor which tenant matched."""
    given = token_digest(token)
    found: Tenant | None = None
    for t in tenants:
        if hmac.compare_digest(given, t.digest) and found is None:
            found = t
    return found if token else None


# ------------------------------------------------------------- the call's context
@dataclass(frozen=True)
class CallContext:
    """Who the call being handled is for, and which route it came in on."""

    tenant: str = LOCAL_TENANT
    route: str = ""


_DEFAULT_CALL = CallContext()
_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "divreward_call", default=None
)


def bind_call(tenant: str | None = None, route: str | None = None) -> CallContext:
    """Set the current call's tenant and/or route (for this task and the tasks it
    starts); returns the new context."""
    cur = current_call()
    ctx = CallContext(tenant if tenant is not None else cur.tenant, route or cur.route)
    _CALL.set(ctx)
    return ctx


def current_call() -> CallContext:
    return _CALL.get() or _DEFAULT_CALL


def bound_call() -> CallContext | None:
    """The call bound to this task by :func:`bind_call`, or None outside any call."""
    return _CALL.get()


def current_tenant() -> str:
    """The tenant of the call being handled (``local`` outside any call)."""
    return current_call().tenant
