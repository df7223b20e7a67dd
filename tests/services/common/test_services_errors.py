"""Every request error of the HTTP API: its status, its kind and its message (naming the
field, the group and the image), in both wire forms. Runs against the session's Serve
application, whose limits are small (tests/fixtures_serve.py)."""

from __future__ import annotations

import io
import struct
import time
import zlib
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
    assert err.error.valid == ["diversegrpo", "drift", "gardo", "none"]
    assert err.error.message == (
        "diversity.method: unknown method 'vendi'; valid: diversegrpo, drift, gardo, none"
    )
    err = _error(
        client.post("/v1/diversity", json={"groups": [{"images": good}], "method": "none"}),
        400,
        "unknown_name",
    )
    assert err.error.valid == ["diversegrpo", "drift", "gardo"]


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


def _png_header(width: int, height: int) -> bytes:
    """A ~60-byte PNG that declares width x height pixels (a decompression bomb's header:
    no pixel data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_a_413_naming_the_image_and_the_limit(
    client: httpx.Client, good: list[str]
) -> None:
    bomb = b64([_png_header(60000, 60000)])[0]
    body = {"prompts": ["a", "b"], "images": [good[0], bomb]}
    err = _error(client.post("/v1/score", json=body), 413, "payload_too_large")
    assert err.error.image_index == 1
    assert err.error.message.startswith(
        "images[1]: 3600000000 pixels exceeds the limit of 65536 pixels per image"
    )
    # Just above Pillow's own warning threshold: the service's limit answers the same way.
    big = b64([_png_header(10000, 10000)])[0]
    body = {"groups": [{"prompt": "a", "images": [good[0], big]}]}
    err = _error(client.post("/v1/rewards", json=body), 413, "payload_too_large")
    assert err.error.message.startswith(
        "groups[0].images[1]: 10000x10000 = 100000000 pixels exceeds the limit of 65536"
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_a_413_stating_the_limit_not_a_reset(
    client: httpx.Client, chunked: bool
) -> None:
    """A body 3x the 4 MiB limit: the client, still sending, reads the 413 (the server
    reads the rest and drops it) instead of a reset connection."""
    size = 12 * 1024 * 1024
    blob = b"{" + b" " * (size - 2) + b"}"

    def parts() -> Any:
        for i in range(0, size, 1 << 20):
            yield blob[i : i + (1 << 20)]

    r = client.post(
        "/v1/rewards",
        content=parts() if chunked else blob,
        headers={"content-type": "application/json"},
    )
    err = _error(r, 413, "payload_too_large")
    assert "more than the limit of 4194304 bytes (limits.max_request_bytes)" in err.error.message


def test_group_parts_that_cannot_complete_are_refused_at_once(
    client: httpx.Client, good: list[str]
) -> None:
    """/v1/groups with group_size set holds parts until the group is whole; a part with
    an undecodable image, or a group_size above the per-group limit, is refused at once
    (not after the assembly timeout)."""
    t0 = time.monotonic()
    body = {"group_id": "bad-1", "prompt": "p", "images": [""], "group_size": 1156}
    err = _error(client.post("/v1/groups", json=body), 413, "payload_too_large")
    assert err.error.message == "group_size: 1156 images exceed the limit of 32 per group"
    body = {"group_id": "bad-2", "prompt": "p", "images": [good[0], ""], "group_size": 4}
    err = _error(client.post("/v1/groups", json=body), 400, "invalid_image")
    assert err.error.message == "images[1]: is empty (0 bytes)" and err.error.image_index == 1
    garbage = b64([b"\x89PNG\r\n\x1a\n garbage"])[0]
    body = {"group_id": "bad-3", "prompt": "p", "images": [garbage], "group_size": 4}
    err = _error(client.post("/v1/groups", json=body), 400, "invalid_image")
    assert err.error.message.startswith("images[0]: cannot be decoded as PNG, JPEG or WebP")
    assert time.monotonic() - t0 < 20.0  # the assembly timeout is 60 s
