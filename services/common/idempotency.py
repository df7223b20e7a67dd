"""Idempotent retries by ``request_id``, for HTTP routes and gRPC methods alike.

A retried request (same route, same ``request_id``, same body digest) gets the stored
answer without being computed again; a concurrent duplicate waits for the first; the
same id with a different body is a 409. Only successes are stored: a failed call frees
its id for the retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from divreward.services.common.errors import ServiceError

__all__ = ["CachedReply", "IdempotencyCache"]

Key = tuple[str, str]  # (route, request_id)


@dataclass(frozen=True)
class CachedReply:
    """A stored answer: the status, its media type and the encoded body."""

    status: int
    media_type: str
    body: bytes


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    reply: CachedReply


class IdempotencyCache:
    """Recent successful replies by (route, request_id), at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._done: OrderedDict[Key, _Entry] = OrderedDict()
        self._running: dict[Key, tuple[bytes, asyncio.Future[None]]] = {}

    async def run(
        self,
        route: str,
        request_id: str | None,
        body: bytes,
        compute: Callable[[], Awaitable[CachedReply]],
    ) -> tuple[CachedReply, bool]:
        """``compute()``, or the stored reply of the same request: (reply, replayed)."""
        if request_id is None:
            return await compute(), False
        key = (route, request_id)
        digest = hashlib.sha256(body).digest()
        hit = await self._lookup(key, digest)
        if hit is not None:
            return hit, True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = (digest, done)
        try:
            reply = await compute()
            if self.size > 0:
                self._done[key] = _Entry(digest, reply)
                while len(self._done) > self.size:
                    self._done.popitem(last=False)
            return reply, False
        finally:
            self._running.pop(key, None)
            if not done.done():
                done.set_result(None)

    async def _lookup(self, key: Key, digest: bytes) -> CachedReply | None:
        while True:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
                if not hmac.compare_digest(hit.digest, digest):
                    raise _conflict(key[1])
                return hit.reply
            running = self._running.get(key)
            if running is None:
                return None
            if not hmac.compare_digest(running[0], digest):
                raise _conflict(key[1])
            await asyncio.shield(running[1])  # then look again: done, or failed and free


def _conflict(request_id: str) -> ServiceError:
    return ServiceError(
        409,
        "conflict",
        f"request_id {request_id!r} was already used with a different request body; "
        "use a new request_id for a new request",
    )
