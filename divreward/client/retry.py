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

A 429 (gRPC RESOURCE_EXHAUSTED) is the server's fair queue saying this client's tenant
has too many images waiting: the client waits at least the server's ``Retry-After``
(HTTP header, gRPC ``retry-after`` trailing metadata, or ``retry_after_s`` of a stream's
in-band error), stretched by the jitter so that a tenant's many clients do not come back
together, and gives up after ``max_attempts`` attempts or once it has waited
``max_total_wait_s`` in all, with an error that says so.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from divreward.client.errors import RewardRequestError, RewardServiceError

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
    the same server do not come back in lock-step. A server's ``Retry-After`` (capped at
    ``max_retry_after_s``) is a floor: the wait is at least that, stretched by the same
    jitter. Retries stop after ``max_attempts`` attempts, or when the next wait would take
    the waiting of this call past ``max_total_wait_s``.
    """

    max_attempts: int = 5  # total attempts, the first included; 1 disables retries
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    jitter: float = 0.2
    # Retry the client's own timeouts too (safe: the request id deduplicates); False
    # fails at the first timeout instead.
    retry_timeouts: bool = True
    # The longest Retry-After honoured (a longer one is waited this long).
    max_retry_after_s: float = 60.0
    # The most one call waits between its attempts, in all.
    max_total_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {self.jitter}")
        if self.max_retry_after_s < 0 or self.max_total_wait_s < 0:
            raise ValueError("max_retry_after_s and max_total_wait_s must be >= 0")

    def delay(
        self, retry: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry}")
        stretch = 1.0 + self.jitter * (rng or random).random()
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1) * stretch)
        if retry_after_s is not None:
            base = max(base, min(retry_after_s, self.max_retry_after_s) * stretch)
        return base

    def next_wait(
        self, retry: int, waited_s: float, retry_after_s: float | None = None
    ) -> float | None:
        """The wait before retry ``retry`` of a call that has waited ``waited_s`` so far,
        or None when the call must give up (attempts or total wait spent)."""
        if retry >= self.max_attempts:
            return None
        wait = self.delay(retry, retry_after_s)
        if waited_s + wait > self.max_total_wait_s:
            return None
        return wait


NO_RETRY = RetryPolicy(max_attempts=1)


def retryable_http_status(status: int) -> bool:
    """429 (too many requests) and every 5xx (a server's 408 is not retried)."""
    return status == 429 or 500 <= status <= 599


def final_error(err: Exception, attempts: int, waited_s: float, policy: RetryPolicy) -> Exception:
    """The error a call ends with once its retries are spent: a server's answer (a 429
    over the tenant's quota, a 503, ...) says how many attempts and how long it waited."""
    if not isinstance(err, RewardServiceError) or isinstance(err, RewardRequestError):
        return err
    return RewardServiceError(
        err.status,
        err.detail + gave_up(attempts, waited_s, policy),
        request_id=err.request_id,
        attempts=attempts,
    )


def gave_up(attempts: int, waited_s: float, policy: RetryPolicy) -> str:
    """What a final error adds: the attempts, the waiting and the policy's bounds."""
    return (
        f" (gave up after {attempts} attempt(s) and {waited_s:.1f} s of waiting; "
        f"RetryPolicy max_attempts={policy.max_attempts}, "
        f"max_total_wait_s={policy.max_total_wait_s:g})"
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form; dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
