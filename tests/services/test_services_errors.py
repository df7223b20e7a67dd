"""Every request error of the HTTP API: its status, its kind and its message (naming the
field, the group and the image), in both wire forms. Runs against the session's Serve
application, whose limits are small (tests/fixtures_serve.py)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from PIL import Image
from services_helpers import b64, make_group, png

from divreward.schema import ErrorResponse

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def client(serve_app: Any) -> httpx.Client:
    with httpx.Client(base_url=serve_app.base_url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def good() -> list[str]:
    return b64(png(make_group(3, seed=21)))


def _error(r: httpx.Response, status: int, kind: str) -> ErrorResponse:
    assert r.status_code == status, r.text
    if r.headers["content-type"] == "application/msgpack":
        err = ErrorResponse.model_validate(msgpack.unpackb(r.content))
    else:
        err = ErrorResponse.model_validate_json(r.content)
    assert err.error.status == status and err.error.kind == kind
    return err


def test_undecodable_image_is_a_400_naming_group_and_image(
    client: httpx.Client, good: list[str]
) -> None:
    bad = b64([b"\x89PNG\r\n\x1a\n garbage"])[0]
    body = {
        "groups": [
            {"prompt": "a", "images": good},
            {"prompt": "b", "images": [*good[:2], bad]},
        ],
        "request_id": "r-bad",
    }
    err = _error(client.post("/v1/rewards", json=body), 400, "invalid_image")
    assert err.error.group_index == 1 and err.error.image_index == 2
    assert err.error.message.startswith(
        "groups[1].images[2]: cannot be decoded as PNG, JPEG or WebP"
    )
    assert err.request_id == "r-bad"
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    err = _error(
        client.post("/v1/score", json={"prompts": ["p"], "images": b64([gif.getvalue()])}),
        400,
        "invalid_image",
    )
    assert err.error.message == "images[0]: format 'GIF' is not accepted (use PNG, JPEG or WebP)"


def test_invalid_base64_is_a_422_naming_the_image(client: httpx.Client, good: list[str]) -> None:
    body = {"groups": [{"prompt": "a", "images": [good[0], "not*base64"]}]}
    err = _error(client.post("/v1/rewards", json=body), 422, "invalid_request")
    assert err.error.group_index == 0 and err.error.image_index == 1
    assert "groups[0].images[1]: Value error, is not valid base64" in err.error.message
    assert err.error.details[0].loc == ["groups", 0, "images", 1]


def test_limits_are_413s(client: httpx.Client, good: list[str]) -> None:
    big = b64(png([np.zeros((300, 300, 3), np.uint8)]))[0]  # limit: 256*256 pixels
    err = _error(
        client.post("/v1/rewards", json={"groups": [{"prompt": "a", "images": [*good, big]}]}),
        413,
        "payload_too_large",
    )
    assert err.error.image_index == 3
    assert err.error.message.startswith(
        "groups[0].images[3]: 300x300 = 90000 pixels exceeds the limit of 65536 pixels per image"
    )
    many = good * 11  # 33 images; limit 32 per group
    err = _error(
        client.post("/v1/rewards", json={"groups": [{"prompt": "a", "images": many}]}),
        413,
        "payload_too_large",
    )
    assert err.error.message == "groups[0]: 33 images exceed the limit of 32 per group"
    groups = [{"prompt": "a", "images": good[:1]}] * 9  # limit 8 groups
    err = _error(client.post("/v1/rewards", json={"groups": groups}), 413, "payload_too_large")
    assert err.error.message.startswith("groups: 9 groups exceed the limit of 8 per request")
    # 4 MiB body limit, checked before parsing (Content-Length).
    huge = b"{" + b" " * (4 * 1024 * 1024 + 10) + b"}"
    err = _error(
        client.post("/v1/rewards", content=huge, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )
    assert "more than the limit of 4194304 bytes" in err.error.message


def test_malformed_bodies_are_422s(client: httpx.Client) -> None:
    err = _error(
        client.post(
            "/v1/rewards", content=b'{"groups": [', headers={"content-type": "application/json"}
        ),
        422,
        "invalid_request",
    )
    assert err.error.message.startswith("malformed JSON body (")
    mp = {"content-type": "application/msgpack"}
    err = _error(
        client.post("/v1/rewards", content=b"\xc1\xc1", headers=mp), 422, "invalid_request"
    )
    assert err.error.message.startswith("malformed msgpack body (")
    err = _error(
        client.post("/v1/rewards", content=msgpack.packb([1, 2]), headers=mp),
        422,
        "invalid_request",
    )
    assert err.error.message == "the msgpack body must be a map, got list"


def test_field_errors_are_422s_naming_the_field(client: httpx.Client, good: list[str]) -> None:
    cases = [
        ({"groups": []}, "groups: List should have at least 1 item"),
        ({"groups": [{"images": good}]}, "groups[0].prompt: Field required"),
        (
            {"groups": [{"prompt": 3, "images": good}]},
            "groups[0].prompt: Input should be a valid string",
        ),
        (
            {"groups": [{"prompt": "a", "images": good}], "qualiti": {}},
            "qualiti: Extra inputs are not permitted",
        ),
        (
            {
                "groups": [{"prompt": "a", "images": good}],
                "diversity": {"method": "drift", "lam": -1},
            },
            "diversity.lam: Input should be greater than or equal to 0",
        ),
        (
            {"groups": [{"prompt": "a", "images": good}], "quality": {}},
            "quality must name at least one scorer",
        ),
    ]
    for body, message in cases:
        err = _error(client.post("/v1/rewards", json=body), 422, "invalid_request")
        assert message in err.error.message, (body, err.error.message)
    err = _error(
        client.post(
            "/v1/diversity",
            json={"groups": [{"embeddings": [[1.0, 0.0], [0.0]]}], "method": "drift"},
        ),
        422,
        "invalid_request",
    )
    assert err.error.group_index == 0
    assert "embeddings[1] has 1 values but embeddings[0] has 2" in err.error.message
    err = _error(
        client.post(
            "/v1/diversity",
            json={"groups": [{"embeddings": [[1.0, 0.0], [0.0, 1.0]], "quality": [1.0]}]},
        ),
        422,
        "invalid_request",
    )
    assert "quality has 1 values but the group has 2 images" in err.error.message
    err = _error(
        client.post(
            "/v1/diversity",
            json={"groups": [{"embeddings": [[1.0]], "images": good}]},
        ),
        422,
        "invalid_request",
    )
    assert "give exactly one of 'images' or 'embeddings'" in err.error.message
    err = _error(
        client.post("/v1/metrics", json={"groups": [{"embeddings": [[1.0, 0.0]]}]}),
        422,
        "invalid_request",
    )
    assert err.error.message.startswith("metrics: ")


def test_unknown_names_are_400s_listing_the_valid_ones(
    client: httpx.Client, serve_app: Any, good: list[str]
) -> None:
    valid = sorted(serve_app.scorers)
    err = _error(
        client.post(
            "/v1/rewards",
            json={"groups": [{"prompt": "a", "images": good}], "quality": {"hpsv3": 1.0}},
        ),
        400,
        "unknown_name",
    )
    assert err.error.valid == valid
    assert (
        err.error.message
        == f"quality: unknown scorer 'hpsv3'; this server runs: {', '.join(valid)}"
    )
    err = _error(
        client.post("/v1/score", json={"prompts": ["a"], "images": good[:1], "scorers": ["nope"]}),
        400,
        "unknown_name",
    )
    assert err.error.valid == valid
    err = _error(
        client.post(
            "/v1/rewards",
            json={"groups": [{"prompt": "a", "images": good}], "diversity": {"method": "vendi"}},
        ),
        400,
        "unknown_name",
    )
    assert err.error.valid == ["diversegrpo", "drift", "none"]
    assert err.error.message == (
        "diversity.method: unknown method 'vendi'; valid: diversegrpo, drift, none"
    )
    err = _error(
        client.post("/v1/diversity", json={"groups": [{"images": good}], "method": "none"}),
        400,
        "unknown_name",
    )
    assert err.error.valid == ["diversegrpo", "drift"]


def test_unsupported_media_type_is_a_415(client: httpx.Client) -> None:
    err = _error(
        client.post("/v1/score", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert "Content-Type 'text/plain' is not accepted" in err.error.message
    assert err.error.valid is not None and "application/msgpack" in err.error.valid


def test_errors_come_back_in_msgpack_when_asked(client: httpx.Client) -> None:
    body = msgpack.packb({"groups": [{"prompt": "a", "images": [b"junk"]}]}, use_bin_type=True)
    r = client.post("/v1/rewards", content=body, headers={"content-type": "application/msgpack"})
    assert r.headers["content-type"] == "application/msgpack"
    err = _error(r, 400, "invalid_image")
    assert err.error.message.startswith("groups[0].images[0]: cannot be decoded")


def test_unknown_path_is_a_typed_404(client: httpx.Client) -> None:
    err = _error(client.get("/v1/nothing"), 404, "invalid_request")
    assert err.error.message == "/v1/nothing: Not Found"
