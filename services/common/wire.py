"""The two HTTP wire forms of every body: JSON and msgpack.

Reading a body with the size limit, parsing it into its request model in either form,
choosing the reply's form (``Accept``, else the request's form) and encoding a model or
an error. Errors are the schema's :class:`~divreward.schema.ErrorResponse`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

import msgpack
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from divreward.schema import BINARY_MEDIA_TYPE, BINARY_MEDIA_TYPES
from divreward.services.common.errors import ServiceError, from_validation_error

__all__ = [
    "JSON_MEDIA_TYPE",
    "encode",
    "error_response",
    "media_type",
    "parse_body",
    "read_body",
    "wants_binary",
]

JSON_MEDIA_TYPE = "application/json"
M = TypeVar("M", bound=BaseModel)

#: A body above the limit is read to its end (and thrown away, chunk by chunk) before
#: the 413, so the client gets the answer instead of a reset connection; beyond this
#: many times the limit the connection is dropped instead.
DRAIN_FACTOR = 4


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def wants_binary(request: Request) -> bool:
    """msgpack replies when the Accept header asks for them, or when the request was
    msgpack and the client accepts anything."""
    accept = request.headers.get("accept", "")
    if any(t in accept for t in BINARY_MEDIA_TYPES):
        return True
    if JSON_MEDIA_TYPE in accept:
        return False
    return media_type(request.headers.get("content-type")) in BINARY_MEDIA_TYPES


def encode(
    model: BaseModel, binary: bool, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if binary:
        content = msgpack.packb(model.model_dump(mode="python"), use_bin_type=True)
        return Response(content, status_code=status, media_type=BINARY_MEDIA_TYPE, headers=headers)
    return Response(
        model.model_dump_json(), status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers
    )


def retry_after(err: ServiceError) -> str:
    """The Retry-After value of an error: its seconds rounded up to a whole number."""
    return str(max(0, math.ceil((err.retry_after_s or 0.0) - 1e-9)))


def error_response(
    err: ServiceError,
    request_id: str | None,
    binary: bool,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error as the schema's ErrorResponse, with Retry-After / WWW-Authenticate."""
    extra = dict(headers or {})
    if err.retry_after_s is not None:
        extra["Retry-After"] = retry_after(err)
    if err.status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    return encode(err.to_response(request_id), binary, status=err.status, headers=extra)


def _too_large(size: int, limit: int, exact: bool) -> ServiceError:
    has = f"has {size} bytes" if exact else f"has more than {size} bytes"
    return ServiceError(
        413,
        "payload_too_large",
        f"the request body {has}, more than the limit of {limit} bytes "
        "(limits.max_request_bytes); send fewer or smaller images per request",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 naming the limit once the body is known to exceed it.

    An oversized body is still read to its end (up to DRAIN_FACTOR times the limit),
    each chunk dropped at once, so memory stays flat and the client, which is still
    sending, reads the 413 rather than a reset connection.
    """
    declared = request.headers.get("content-length")
    declared_size = int(declared) if declared is not None and declared.isdigit() else None
    chunks: list[bytes] = []
    size = 0
    over = declared_size is not None and declared_size > limit
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            over = True
        if over:
            chunks.clear()
            if size > DRAIN_FACTOR * limit:
                break
            continue
        chunks.append(chunk)
    if over:
        exact = declared_size is not None and declared_size == size
        raise _too_large(declared_size if exact and declared_size else size, limit, exact)
    return b"".join(chunks)


def parse_body(body: bytes, content_type: str | None, model: type[M]) -> M:
    """Validate a JSON or msgpack body as ``model`` (422 naming the field, 415 for any
    other Content-Type)."""
    media = media_type(content_type)
    try:
        if media in BINARY_MEDIA_TYPES:
            try:
                data = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
                raise ServiceError(
                    422, "invalid_request", f"malformed msgpack body ({exc})"
                ) from None
            if not isinstance(data, dict):
                raise ServiceError(
                    422,
                    "invalid_request",
                    f"the msgpack body must be a map, got {type(data).__name__}",
                )
            return model.model_validate(data)
        if media in ("", JSON_MEDIA_TYPE) or media.endswith("+json"):
            return model.model_validate_json(body)
    except ValidationError as exc:
        json_errors = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if json_errors:
            raise ServiceError(
                422, "invalid_request", f"malformed JSON body ({json_errors[0]['msg']})"
            ) from None
        raise from_validation_error(exc) from None
    raise ServiceError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type!r} is not accepted; use {JSON_MEDIA_TYPE} or "
        f"{BINARY_MEDIA_TYPE}",
        valid=[JSON_MEDIA_TYPE, *BINARY_MEDIA_TYPES],
    )
