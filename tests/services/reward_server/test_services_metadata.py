"""Per-prompt metadata over the wire: a reward app running the tiny geneval and vqascore
scorers (their own deployments) next to the session's apps; GenEval metadata sent with
each group over HTTP and gRPC (/v1/rewards, /v1/score, SubmitGroup) reaches the scorer,
whose served scores equal the same tiny models in this process; a group without it, or
with a malformed one, is a 400 naming the group."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fixtures_models import make_images

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

APP, ROUTE = "metadata_reward", "/metadata"
SCORERS = {"geneval": 1.0, "vqascore": 0.5}
DOG: dict[str, Any] = {"tag": "single_object", "prompt": "a photo of a dog",
       "include": [{"class": "dog", "count": 1}]}  # fmt: skip
CARS: dict[str, Any] = {"tag": "counting", "prompt": "a photo of two cars",
        "include": [{"class": "car", "count": 2}],
        "exclude": [{"class": "car", "count": 3}]}  # fmt: skip
POSITION: dict[str, Any] = {"tag": "position", "prompt": "a person above a car", "include": [
    {"class": "car", "count": 1},
    {"class": "person", "count": 1, "position": ["above", 0]}]}  # fmt: skip


@pytest.fixture(scope="module")
def metadata_app(serve_app: Any, tiny_zoo: Any) -> Iterator[dict[str, str]]:
    from ray import serve
    from services_helpers import deploy_extra_reward_app

    try:
        yield deploy_extra_reward_app(serve_app, tiny_zoo, APP, ROUTE, SCORERS, 32)
    finally:
        serve.delete(APP)


def _expected(tiny_zoo: Any, images: list[np.ndarray], prompt: str, meta: dict) -> dict:
    n = len(images)
    return {
        "geneval": tiny_zoo.load("geneval").score_with_metadata(images, [prompt] * n, [meta] * n),
        "vqascore": tiny_zoo.load("vqascore").score(images, [prompt] * n),
    }


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_group_metadata_reaches_geneval(
    metadata_app: dict[str, str], tiny_zoo: Any, transport: str
) -> None:
    from divreward.client import Group, RewardClient

    groups = [(DOG, make_images(4, seed=1)), (CARS, make_images(4, seed=2)),
              (POSITION, make_images(3, seed=3))]  # fmt: skip
    kw: dict[str, Any] = {"application": APP} if transport == "grpc" else {}
    with RewardClient(metadata_app[transport], downsize=False, **kw) as client:
        res = client.rewards(
            [Group(m["prompt"], imgs, metadata=m) for m, imgs in groups],
            diversity={"method": "none"},
        )
        sub = client.submit(
            Group(CARS["prompt"], groups[1][1], group_id="cars", metadata=CARS),
            diversity={"method": "none"},
        ).result(timeout=120)
        scored = client.score(
            [img for _, imgs in groups for img in imgs],
            [m["prompt"] for m, imgs in groups for _ in imgs],
            metadata=[m for m, imgs in groups for _ in imgs],
            scorers=["geneval"],
        )
    flat = []
    for (meta, imgs), got in zip(groups, res.groups, strict=True):
        want = _expected(tiny_zoo, imgs, meta["prompt"], meta)
        np.testing.assert_allclose(got.quality["geneval"], want["geneval"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.quality["vqascore"], want["vqascore"], rtol=1e-5)
        flat.extend(want["geneval"])
    # the metadata changes the numbers: the same images scored against another spec
    cars_as_dog = _expected(tiny_zoo, groups[1][1], "x", DOG)["geneval"]
    assert not np.allclose(cars_as_dog, res.groups[1].quality["geneval"])
    np.testing.assert_allclose(sub.quality["geneval"], res.groups[1].quality["geneval"])
    np.testing.assert_allclose(scored.scores["geneval"], flat, rtol=0, atol=1e-12)
    assert res.models["geneval"].profile == "tiny"


def _error(resp: httpx.Response) -> dict:
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


def test_missing_or_bad_metadata_is_a_400_naming_the_group(metadata_app: dict[str, str]) -> None:
    from divreward.client import Group
    from divreward.client._requests import ImageOptions, rewards_request

    def body(groups: list[Any]) -> dict:
        req = rewards_request(groups, quality={"geneval": 1.0}, diversity={"method": "none"},
                              advantage=None, return_embeddings=False, request_id="r1",
                              opts=ImageOptions())  # fmt: skip
        return req.model_dump(mode="json", exclude_unset=True)

    imgs = make_images(2)
    url = metadata_app["http"] + "/v1/rewards"
    err = _error(httpx.post(url, json=body([Group("a dog", imgs, metadata=DOG),
                                            Group("a dog", imgs)]), timeout=60))  # fmt: skip
    assert err["group_index"] == 1
    assert err["message"].startswith("groups[1].metadata: scorer 'geneval': ")
    assert "needs each image's GenEval metadata" in err["message"]
    bad = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "teal"}]}
    err = _error(httpx.post(url, json=body([Group("a dog", imgs, metadata=bad)]), timeout=60))
    assert err["group_index"] == 0
    assert "groups[0].metadata: scorer 'geneval': include[0].color must be one of" in err["message"]
    # vqascore ignores metadata: a request for it alone needs none
    plain = body([Group("a dog", imgs)]) | {"quality": {"vqascore": 1.0}}
    assert httpx.post(url, json=plain, timeout=60).status_code == 200


def test_score_names_the_image_with_bad_metadata(metadata_app: dict[str, str]) -> None:
    from divreward.client._requests import ImageOptions, score_request

    imgs = make_images(2)
    req = score_request(imgs, ["a dog", "a dog"], ["geneval"], "r2", ImageOptions(),
                        [DOG, {"tag": "nope", "include": []}])  # fmt: skip
    resp = httpx.post(
        metadata_app["http"] + "/v1/score", json=req.model_dump(mode="json"), timeout=60
    )
    err = _error(resp)
    assert err["image_index"] == 1 and err["message"].startswith("metadata[1]: scorer 'geneval'")


def test_flow_grpo_geneval_pickle_client(metadata_app: dict[str, str], tiny_zoo: Any) -> None:
    """Flow-GRPO's geneval_score body and reply (reward-server's app_geneval.py)."""
    import pickle

    from divreward.client.encoding import encode_images

    images = make_images(3, seed=5)
    metas = [DOG, CARS, POSITION]
    body = {"images": encode_images(images, fmt="PNG"), "meta_datas": metas, "only_strict": False}
    resp = httpx.post(metadata_app["http"] + "/compat/pickle", content=pickle.dumps(body),
                      timeout=60)  # fmt: skip
    assert resp.status_code == 200, resp.content
    reply = pickle.loads(resp.content)
    parts = tiny_zoo.load("geneval").score_components(images, [m["prompt"] for m in metas], metas)
    assert reply["scores"] == pytest.approx(list(parts["reward"]), abs=1e-12)
    assert reply["rewards"] == list(parts["geneval"])
    assert reply["strict_rewards"] == list(parts["strict"])
    assert reply["group_strict_rewards"]["counting"] == [-10.0, parts["strict"][1], -10.0]
    assert reply["group_rewards"]["color_attr"] == [-10.0] * 3
    body["only_strict"] = True
    reply = pickle.loads(
        httpx.post(
            metadata_app["http"] + "/compat/pickle", content=pickle.dumps(body), timeout=60
        ).content
    )
    assert reply["rewards"] == [0.0] * 3 and reply["strict_rewards"] == list(parts["strict"])
    body["meta_datas"] = metas[:2]
    resp = httpx.post(metadata_app["http"] + "/compat/pickle", content=pickle.dumps(body),
                      timeout=60)  # fmt: skip
    assert resp.status_code == 400 and b"meta_datas" in resp.content


def test_readiness_probes_geneval_with_its_probe_metadata(metadata_app: dict[str, str]) -> None:
    ready = httpx.get(metadata_app["http"] + "/readyz", timeout=60)
    assert ready.status_code == 200, ready.text
    states = ready.json()["deployments"]
    assert states["scorer:geneval"] == "ok" and states["scorer:vqascore"] == "ok"
