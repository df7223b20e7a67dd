"""HTTP transport (httpx, asyncio), with the retry policy of :mod:`.retry`.

Requests use the API's binary form (msgpack, images as raw bytes) unless ``wire="json"``
is asked for (images in base64, ~33% larger). Only the fields a request has *set* are
sent, so every parameter the caller left out takes the server's default.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
import msgpack
from pydantic import BaseModel, ValidationError

from divreward.client.errors import (
    RewardClientError,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
    ServiceUnavailableError,
)
from divreward.client.retry import (
    RetryPolicy,
    final_error,
    parse_retry_after,
    retryable_http_status,
)
from divreward.client.tls import ssl_context
from divreward.schema import BINARY_MEDIA_TYPE

__all__ = ["WIRES", "AsyncHttpTransport", "HttpRoute", "Wire"]

R = TypeVar("R", bound=BaseModel)
Wire = Literal["msgpack", "json"]
WIRES: tuple[Wire, ...] = ("msgpack", "json")

# Errors that mean "no response came back": the request may not have reached the
# server (or the server died with it). Safe to retry because of the request id.
_CONNECTION_ERRORS = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.PoolTimeout,
)
_TIMEOUTS = (httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout)


@dataclass(frozen=True)
class HttpRoute:
    method: Literal["GET", "POST"]
    path: str


def _encode(request: BaseModel | None, wire: Wire) -> tuple[bytes | None, dict[str, str]]:
    accept = BINARY_MEDIA_TYPE if wire == "msgpack" else "application/json"
    if request is None:
        return None, {"accept": accept}
    if wire == "msgpack":
        body = msgpack.packb(request.model_dump(mode="python", exclude_unset=True))
        return body, {"content-type": BINARY_MEDIA_TYPE, "accept": accept}
    data = request.model_dump_json(exclude_unset=True).encode()
    return data, {"content-type": "application/json", "accept": accept}


def _body(response: httpx.Response) -> Any:
    ctype = response.headers.get("content-type", "")
    if "msgpack" in ctype:
        return msgpack.unpackb(response.content)
    if "json" in ctype:
        return json.loads(response.content)
    return response.text


def _decode(response: httpx.Response, model: type[R], request_id: str) -> R:
    try:
        return model.model_validate(_body(response))
    except (ValidationError, ValueError) as exc:
        raise RewardClientError(
            f"the server's {response.status_code} answer to {response.request.url.path} is not "
            f"a valid {model.__name__}: {exc}",
            request_id=request_id,
        ) from exc


def _error_detail(response: httpx.Response) -> str:
    """The server's own message: ErrorResponse.error (kind: message), or the raw body."""
    try:
        body = _body(response)
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            kind = err.get("kind")
            return f"{kind}: {err['message']}" if kind else str(err["message"])
        if "detail" in body:
            return str(body["detail"])
    text = body if isinstance(body, str) else json.dumps(body)
    return text.strip()[:2000] or response.reason_phrase


def _proxy_route_missing(response: httpx.Response) -> bool:
    """Ray Serve's proxy (not the application) answered 404: it is up but the reward
    application is not deployed (yet), as during a restart. Its plain-text body points
    to ``/-/routes``; the application's own 404s are ErrorResponse JSON."""
    return response.status_code == 404 and "/-/routes" in response.text


def _raise_for(response: httpx.Response, request_id: str, attempts: int) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = _error_detail(response)
    if status == 408:
        raise RewardTimeoutError(
            f"server timed out the request (408): {detail}", request_id=request_id
        )
    if retryable_http_status(status):
        raise RewardServiceError(status, detail, request_id=request_id, attempts=attempts)
    raise RewardRequestError(status, detail, request_id=request_id, attempts=attempts)


def _tls_failure(exc: BaseException) -> str | None:
    """The certificate error behind a connection error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


class AsyncHttpTransport:
    """asyncio transport over one ``httpx.AsyncClient``.

    ``transport`` replaces httpx's network layer (e.g. ``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        wire: Wire = "msgpack",
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | None = None,
    ) -> None:
        if wire not in WIRES:
            raise ValueError(f"wire must be 'msgpack' or 'json', got {wire!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry
        self.wire = wire
        self.headers = dict(headers or {})
        self._client = httpx.AsyncClient(
            timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=64),
            transport=transport,
            verify=ssl_context(ca_file),
        )

    def _prepare(
        self, request: BaseModel | None, request_id: str
    ) -> tuple[bytes | None, dict[str, str]]:
        body, headers = _encode(request, self.wire)
        return body, {**self.headers, **headers, "x-request-id": request_id}

    def _outcome(
        self, response: httpx.Response | None, exc: Exception | None, request_id: str, attempt: int
    ) -> tuple[bool, float | None, Exception | None]:
        """(retry?, Retry-After seconds, error to raise if not retrying)."""
        if exc is not None:
            if _tls_failure(exc):  # retrying cannot fix a certificate: say so at once
                return (
                    False,
                    None,
                    RewardClientError(
                        f"TLS verification of {self.base_url} failed: {_tls_failure(exc)}; pass "
                        "the CA that signed the server's certificate (ca_file= or "
                        "$DIVREWARD_CA_FILE)",
                        request_id=request_id,
                    ),
                )
            if isinstance(exc, _TIMEOUTS):
                err: Exception = RewardTimeoutError(
                    f"no answer from {self.base_url} within {self.timeout_s} s "
                    f"({type(exc).__name__})",
                    request_id=request_id,
                )
                return self.retry.retry_timeouts, None, err
            err = ServiceUnavailableError(
                f"cannot reach {self.base_url} after {attempt} attempt(s): "
                f"{type(exc).__name__}: {exc}",
                request_id=request_id,
                attempts=attempt,
            )
            return True, None, err
        assert response is not None
        status = response.status_code
        if retryable_http_status(status):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            err = RewardServiceError(
                status, _error_detail(response), request_id=request_id, attempts=attempt
            )
            return True, retry_after, err
        if _proxy_route_missing(response):
            err = RewardServiceError(
                status,
                f"{_error_detail(response)} (the reward application is not deployed yet?)",
                request_id=request_id,
                attempts=attempt,
            )
            return True, None, err
        return False, None, None

    async def call(
        self, route: HttpRoute, request: BaseModel | None, model: type[R], request_id: str
    ) -> R:
        body, headers = self._prepare(request, request_id)
        url = self.base_url + route.path
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            exc: Exception | None = None
            try:
                response = await self._client.request(
                    route.method, url, content=body, headers=headers
                )
            except (*_CONNECTION_ERRORS, *_TIMEOUTS) as e:
                exc = e
            retry, retry_after, err = self._outcome(response, exc, request_id, attempt)
            if not retry or err is None:
                break
            wait = self.retry.next_wait(attempt, waited, retry_after)
            if wait is None:
                raise final_error(err, attempt, waited, self.retry) from exc
            await asyncio.sleep(wait)
            waited += wait
        if err is not None and response is None:
            raise err from exc
        assert response is not None
        _raise_for(response, request_id, attempt)
        return _decode(response, model, request_id)

    async def aclose(self) -> None:
        await self._client.aclose()
