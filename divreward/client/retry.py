"""Bounded retries with exponential backoff, shared by the HTTP and gRPC transports.

What is retried (and nothing else): connection-level failures (refused, reset, broken
pipe, protocol errors before a response), HTTP 429 and every 5xx (gRPC UNAVAILABLE,
RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN), Serve's "application not deployed (yet)" answers
during a restart, and - unless ``retry_timeouts=False`` - the client's own timeouts (a
request in flight when a server stops can hang until then). Each logical request keeps
one request id across its attempts; the server uses it to answer a repeated id from its
cache (or to wait for the first attempt still running) instead of scoring the images a
second time, which is what makes retrying a timed-out request safe. A 408 sent by the
server (an assembled group that never completed) is not retried.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

# gRPC status codes treated like HTTP 429/5xx (transient, safe to retry with the same id).
RETRYABLE_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"})


def new_request_id() -> str:
    """A fresh id for one logical request; reused by every retry of that request."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how patiently, to retry a transient failure.

    The delay before retry ``n`` (1-based) is ``min(max_backoff_s, backoff_s * 2**(n-1))``
    stretched by up to ``jitter`` (a fraction) at random, so that many trainers that lost
    the same server do not come back in lock-step; a server's ``Retry-After`` raises the
    delay (never above ``max_backoff_s``).
    """

    max_attempts: int = 5  # total attempts, the first included; 1 disables retries
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    jitter: float = 0.2
    # Retry the client's own timeouts too (safe: the request id deduplicates); False
    # fails at the first timeout instead.
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {self.jitter}")

    def delay(
        self, retry: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry}")
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        r = (rng or random).random()
        base *= 1.0 + self.jitter * r
        if retry_after_s is not None and retry_after_s > base:
            base = retry_after_s
        return min(base, self.max_backoff_s)


NO_RETRY = RetryPolicy(max_attempts=1)


def retryable_http_status(status: int) -> bool:
    """429 (too many requests) and every 5xx (a server's 408 is not retried)."""
    return status == 429 or 500 <= status <= 599


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form; dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
