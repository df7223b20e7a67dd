"""Compatibility endpoints against the real Serve app, driven the way the peer trainers'
own clients drive them: the pickle dialect (Flow-GRPO / ddpo-pytorch, verl-omni) with
the allow-list unpickler, and Flow-Factory's JSON dialect (pointwise and groupwise)."""

from __future__ import annotations

import base64
import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import Service, make_images
from PIL import Image

from divreward.client import Group, RewardClient
from divreward.safe_pickle import safe_loads

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

# float32 models batched with other requests: see test_services_grpc.RTOL
RTOL = ATOL = 1e-5


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def http(service: Service) -> Any:
    c = RewardClient(service.http_url, downsize=False)
    yield c
    c.close()


def _quality(http: Any, files: list[bytes], prompts: list[str]) -> np.ndarray:
    """Q = sum(weight * score) with the server's default weights, from /v1/score."""
    weights = http.models().defaults.quality
    res = http.score(files, prompts)
    total = np.zeros(len(files))
    for name, w in weights.items():
        total += w * np.asarray(res.scores[name])
    return total


# ------------------------------------------------------------------ pickle dialect
def _post_pickle(service: Service, body: bytes, path: str = "/") -> httpx.Response:
    return httpx.post(service.http_url + path, content=body, timeout=60)


def test_flow_grpo_pickle_request_gets_pickled_scores(service: Service, http: Any) -> None:
    imgs = make_images(4, 300)
    files = [_jpeg(a) for a in imgs]
    prompts = ["a cat", "a dog", "a cat", "an owl"]
    # exactly what Flow-GRPO's remote reward clients send
    body = pickle.dumps({"images": files, "prompts": prompts, "metadata": {}})
    r = _post_pickle(service, body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    reply = safe_loads(r.content)
    assert set(reply) == {"scores", "outputs"} and reply["scores"] == reply["outputs"]
    np.testing.assert_allclose(
        reply["scores"], _quality(http, files, prompts), rtol=RTOL, atol=ATOL
    )
    # the explicit path and a scorer pick answer the same way
    one = safe_loads(_post_pickle(service, body, "/compat/pickle?scorers=clipscore").content)
    clip = http.score(files, prompts, scorers=["clipscore"]).scores["clipscore"]
    np.testing.assert_allclose(one["scores"], clip, rtol=RTOL, atol=ATOL)


def test_verl_omni_one_image_per_request_many_at_once(service: Service, http: Any) -> None:
    imgs = make_images(6, 301)
    files = [_jpeg(a) for a in imgs]

    def one(i: int) -> float:
        body = pickle.dumps({"images": [files[i]], "prompts": [f"p{i}"], "metadata": {}})
        r = _post_pickle(service, body)
        assert r.status_code == 200
        (score,) = safe_loads(r.content)["scores"]
        return float(score)

    with ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(one, range(6)))
    np.testing.assert_allclose(
        scores, _quality(http, files, [f"p{i}" for i in range(6)]), rtol=RTOL, atol=ATOL
    )


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["body", "images", "metadata"])
def test_a_pickle_that_names_a_global_is_refused_and_never_runs(
    service: Service, tmp_path: Path, where: str
) -> None:
    marker = tmp_path / "pwned"  # the server runs on this machine: it would appear here
    evil = _Evil(marker)
    payload: Any = {
        "body": evil,
        "images": {"images": [b"jpeg", evil], "prompts": ["p", "p"], "metadata": {}},
        "metadata": {"images": [b"x"], "prompts": ["p"], "metadata": {"cb": evil}},
    }[where]
    r = _post_pickle(service, pickle.dumps(payload))
    assert r.status_code == 400
    err = safe_loads(r.content)["error"]
    assert err.startswith("invalid_request: refused: pickle refers to the global posix.system")
    assert not marker.exists()


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"\x80\x04not a pickle", 400, "request body: not a valid pickle"),
        (pickle.dumps(["images"]), 400, "the pickled body must be a dict"),
        (pickle.dumps({"images": [b"x"], "metadata": {}}), 400, "prompts: required"),
        (
            pickle.dumps({"images": [b"x"], "prompts": ["p"], "queries": 1}),
            400,
            "unknown keys ['queries']",
        ),
        (
            pickle.dumps({"images": ["x"], "prompts": ["p"]}),
            400,
            "images[0]: expected encoded image bytes, got str",
        ),
        (
            pickle.dumps({"images": [b"junk"], "prompts": ["p"]}),
            400,
            "images[0]: cannot be decoded",
        ),
    ],
)
def test_bad_pickle_requests_get_a_4xx_with_a_pickled_error(
    service: Service, body: bytes, status: int, message: str
) -> None:
    r = _post_pickle(service, body)
    assert r.status_code == status
    assert message in safe_loads(r.content)["error"]


def test_transient_errors_become_500_which_flow_grpo_retries() -> None:
    from divreward.services.common.errors import ServiceError
    from divreward.services.reward_server.compat import _pickle_error

    for status, expected in [
        (503, 500),
        (429, 500),
        (504, 500),
        (500, 500),
        (400, 400),
        (413, 413),
    ]:
        r = _pickle_error(ServiceError(status, "overloaded", "queue full"))
        assert r.status_code == expected
        assert safe_loads(bytes(r.body)) == {"error": "overloaded: queue full"}


# ------------------------------------------------------------------ Flow-Factory
def _ff_payload(prompts: list[str], imgs: np.ndarray, **extra: Any) -> dict[str, Any]:
    # the payload of Flow-Factory's RemoteRewardClient._build_payload
    return {
        "prompt": prompts,
        "image": [_png_b64(a) for a in imgs],
        "video": None,
        "condition_images": None,
        "condition_videos": None,
        "kwargs": extra or None,
    }


def test_flow_factory_pointwise(service: Service, http: Any) -> None:
    base = service.http_url + "/compat/flow-factory/pointwise"
    assert httpx.get(base + "/health", timeout=10).json() == {"status": "ok"}
    imgs = make_images(3, 310)
    prompts = ["a", "b", "c"]
    r = httpx.post(base + "/compute", json=_ff_payload(prompts, imgs, step=3), timeout=60)
    assert r.status_code == 200
    expected = _quality(http, [base64.b64decode(_png_b64(a)) for a in imgs], prompts)
    np.testing.assert_allclose(r.json()["rewards"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode, method", [("groupwise", None), ("groupwise-drift", "drift")])
def test_flow_factory_groupwise_gets_the_group_rewards(
    service: Service, http: Any, mode: str, method: str | None
) -> None:
    base = service.http_url + f"/compat/flow-factory/{mode}"
    imgs = make_images(5, 311)
    r = httpx.post(base + "/compute", json=_ff_payload(["a fox"] * 5, imgs), timeout=60)
    assert r.status_code == 200
    ref = http.rewards(
        [Group("a fox", imgs)], diversity={"method": method} if method else None
    ).groups[0]
    np.testing.assert_allclose(r.json()["rewards"], ref.rewards, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "path, payload, status, message",
    [
        (
            "groupwise/compute",
            _ff_payload(["a", "b"], make_images(2, 312)),
            422,
            "prompt[1] differs from prompt[0]",
        ),
        (
            "pointwise/compute",
            {**_ff_payload(["a"], make_images(1, 313)), "video": [["x"]]},
            422,
            "video: not supported",
        ),
        (
            "pointwise/compute",
            {**_ff_payload(["a"], make_images(1, 313)), "image": None},
            422,
            "image: required",
        ),
        (
            "pointwise/compute",
            _ff_payload(["a", "b"], make_images(1, 313)),
            422,
            "prompt has 2 entries but image has 1",
        ),
        (
            "sideways/compute",
            _ff_payload(["a"], make_images(1, 313)),
            404,
            "unknown Flow-Factory mode 'sideways'",
        ),
        (  # GARDO shapes advantages only; Flow-Factory makes its own from the rewards
            "groupwise-gardo/compute",
            _ff_payload(["a"], make_images(1, 313)),
            404,
            "unknown Flow-Factory mode 'groupwise-gardo'",
        ),
    ],
)
def test_flow_factory_errors_name_the_field(
    service: Service, path: str, payload: dict[str, Any], status: int, message: str
) -> None:
    r = httpx.post(f"{service.http_url}/compat/flow-factory/{path}", json=payload, timeout=60)
    assert r.status_code == status
    assert message in r.json()["error"]["message"]
