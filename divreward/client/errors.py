"""Errors raised by the divreward client. Every error carries the server's own message
and the request id, so that a trainer's log line can be matched to the server's."""

from __future__ import annotations


class RewardClientError(Exception):
    """Base class of every error the client raises."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        suffix = f" [request_id={request_id}]" if request_id else ""
        super().__init__(message + suffix)


class RewardServiceError(RewardClientError):
    """The server answered with an error that retrying will not fix (or retries ran out).

    ``status`` is the HTTP status (or the gRPC status code name for gRPC), ``detail`` the
    server's message verbatim.
    """

    def __init__(
        self,
        status: int | str,
        detail: str,
        *,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.status = status
        self.detail = detail
        self.attempts = attempts
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"server answered {status}{tried}: {detail}", request_id=request_id)


class RewardRequestError(RewardServiceError, ValueError):
    """The request was refused as invalid (HTTP 4xx other than 408/429, gRPC
    INVALID_ARGUMENT/NOT_FOUND/...): fix the input; never retried."""


class ServiceUnavailableError(RewardClientError):
    """The server could not be reached (connection refused/reset, DNS, ...) or kept
    answering "busy" until the retry budget ran out."""

    def __init__(self, message: str, *, request_id: str | None = None, attempts: int = 1) -> None:
        self.attempts = attempts
        super().__init__(message, request_id=request_id)


class RewardTimeoutError(RewardClientError, TimeoutError):
    """The request did not complete within the client's timeout."""
