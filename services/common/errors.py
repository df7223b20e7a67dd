"""Errors of the services, as one exception type that knows its HTTP status.

The serving layer raises :class:`ServiceError`; the HTTP routes turn it into an
:class:`~divreward.schema.ErrorResponse` body with that status, and the gRPC servicer
into a gRPC status. A message always says what was wrong and where: the field, the
group index and the image index. :func:`to_service_error` maps anything else a call can
raise (Ray's backpressure and unavailability, timeouts, validation errors) to one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from divreward.methods import METHODS
from divreward.schema import ErrorDetail, ErrorInfo, ErrorKind, ErrorResponse

__all__ = ["ServiceError", "format_loc", "from_validation_error", "to_service_error"]


class ServiceError(Exception):
    """A request failed in a way the caller should be told about (4xx/5xx)."""

    def __init__(
        self,
        status: int,
        kind: ErrorKind,
        message: str,
        *,
        group_index: int | None = None,
        image_index: int | None = None,
        valid: Sequence[str] | None = None,
        details: Sequence[ErrorDetail] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind: ErrorKind = kind
        self.message = message
        self.group_index = group_index
        self.image_index = image_index
        self.valid = list(valid) if valid is not None else None
        self.details = list(details)
        self.retry_after_s = retry_after_s

    def to_response(self, request_id: str | None = None) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(
                kind=self.kind,
                message=self.message,
                status=self.status,
                group_index=self.group_index,
                image_index=self.image_index,
                valid=self.valid,
                details=self.details,
                retry_after_s=self.retry_after_s,
            ),
            request_id=request_id,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray re-raises exceptions across processes by pickling them (between trusted
        # cluster processes, never from the network); keep every field on the way.
        return (
            _rebuild,
            (
                self.status,
                self.kind,
                self.message,
                self.group_index,
                self.image_index,
                self.valid,
                [d.model_dump() for d in self.details],
                self.retry_after_s,
            ),
        )


def _rebuild(
    status: int,
    kind: ErrorKind,
    message: str,
    group_index: int | None,
    image_index: int | None,
    valid: list[str] | None,
    details: list[dict[str, Any]],
    retry_after_s: float | None,
) -> ServiceError:
    return ServiceError(
        status,
        kind,
        message,
        group_index=group_index,
        image_index=image_index,
        valid=valid,
        details=[ErrorDetail.model_validate(d) for d in details],
        retry_after_s=retry_after_s,
    )


def format_loc(loc: Sequence[str | int]) -> str:
    """``('groups', 2, 'images', 5)`` -> ``'groups[2].images[5]'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _indices(loc: Sequence[str | int]) -> tuple[int | None, int | None]:
    """The group and image index named by a location, if any."""
    group = image = None
    for i, part in enumerate(loc[:-1]):
        nxt = loc[i + 1]
        if not isinstance(nxt, int):
            continue
        if part in ("groups", "reference"):
            group = nxt
        elif part in ("images", "embeddings", "prompts", "quality"):
            image = nxt
    return group, image


#: pydantic error types that mean "an unknown name": answered 400 with the valid names.
_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


def from_validation_error(exc: ValidationError, what: str = "request") -> ServiceError:
    """A 422 naming every offending field; an unknown ``method`` is a 400 listing the
    valid methods."""
    errors = exc.errors(include_url=False, include_input=False)
    details: list[ErrorDetail] = []
    for err in errors:
        # Pydantic puts the union member's tag in the location of errors inside a
        # discriminated union (('diversity', 'drift', 'lam')); drop it, it is not a field.
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        details.append(ErrorDetail(loc=loc, msg=err["msg"], type=err["type"]))
    first = errors[0]
    first_loc = details[0].loc
    group, image = _indices(first_loc)
    if first["type"] in _TAG_ERRORS:
        ctx = first.get("ctx") or {}
        valid = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t]
        got = ctx.get("tag")
        message = (
            f"{format_loc(first_loc)}.method: unknown method {got!r}; valid: {', '.join(valid)}"
            if got is not None
            else f"{format_loc(first_loc)}: 'method' is missing; valid: {', '.join(valid)}"
        )
        return ServiceError(
            400, "unknown_name", message, group_index=group, valid=valid, details=details
        )
    parts = [f"{format_loc(d.loc)}: {d.msg}" for d in details[:5]]
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    message = f"invalid {what}: " + "; ".join(parts) + more
    return ServiceError(
        422,
        "invalid_request",
        message,
        group_index=group,
        image_index=image,
        details=details,
    )


_UNION_TAGS = frozenset(METHODS)


def to_service_error(exc: BaseException) -> ServiceError:
    """Map anything a serving call can raise to a ServiceError with the right status."""
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    # An error raised in another deployment arrives wrapped; its cause is the original.
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, BackPressureError):
        return ServiceError(
            exc.status_code,
            "overloaded",
            f"a model deployment's queue is full ({exc.message}); retry later",
            retry_after_s=exc.retry_after_s if exc.retry_after_s is not None else 1.0,
        )
    if isinstance(exc, DeploymentUnavailableError):
        return ServiceError(503, "overloaded", f"a deployment is unavailable: {exc.message}")
    if isinstance(exc, RayActorError | NodeDiedError | ObjectLostError):
        # A replica or node died mid-call (its pixels may have gone with it): transient.
        return ServiceError(
            503,
            "overloaded",
            f"a model replica or node died while handling the call ({type(exc).__name__}); retry",
            retry_after_s=1.0,
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ServiceError(504, "timeout", "the models did not answer in time; retry later")
    return ServiceError(500, "internal", f"internal error: {type(exc).__name__}: {exc}")
