"""The OCR and aesthetic scorers served as their own deployments (ocr on its real
weights from the rapidocr wheel, aesthetic on its tiny twin), and the per-request
multi-reward aggregation, live: over HTTP, gRPC and the Flow-GRPO pickle dialect, equal
to the models and the core math called in this process."""

from __future__ import annotations

import base64
import pickle
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fixtures_models import text_image
from PIL import Image

from divreward.core import aggregate_quality, group_advantages
from divreward.images import encode_image
from divreward.models import ocr
from divreward.safe_pickle import safe_loads

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

APP, ROUTE = "rewards2", "/rewards2"
SCORERS = {"ocr": 1.0, "aesthetic": 0.0, "pickscore": 0.0}
PROMPT = 'a bakery window with a sign that says "Spring Sale"'
WORDS = ["Spring Sale", "Spring Sail", "Autumn Fair", "Sprang Sale"]


@pytest.fixture(scope="module")
def app(serve_app: Any, tiny_zoo: Any) -> Iterator[dict[str, str]]:
    """A second reward app on the session's Serve instance (and its diversity app)."""
    from ray import serve
    from services_helpers import deploy_extra_reward_app

    try:
        yield deploy_extra_reward_app(serve_app, tiny_zoo, APP, ROUTE, SCORERS)
    finally:
        serve.delete(APP)


def _images() -> list[np.ndarray]:
    return [text_image(w, seed=i) for i, w in enumerate(WORDS)]


def _direct_ocr(images: list[np.ndarray], prompt: str) -> np.ndarray:
    """RapidOCR called directly (the package's own pipeline, with the scorer's settings),
    then Flow-GRPO's formula written out."""
    from rapidocr import RapidOCR

    engine = RapidOCR(
        params={"Global.log_level": "error", "Det.limit_side_len": 960, "Det.limit_type": "max"}
    )
    target = prompt.split('"')[1].replace(" ", "").lower()
    out = []
    for img in images:
        text = "".join(engine(Image.fromarray(img), use_cls=False).txts or ())
        text = text.replace(" ", "").lower()
        dist = 0 if target in text else ocr.levenshtein(text, target)
        out.append(1 - min(dist, len(target)) / len(target))
    return np.array(out)


@pytest.fixture(scope="module")
def expected(tiny_zoo: Any) -> dict[str, np.ndarray]:
    images = _images()
    return {
        "ocr": _direct_ocr(images, PROMPT),
        "aesthetic": tiny_zoo.load("aesthetic").score(images, [PROMPT] * len(images)),
        "pickscore": tiny_zoo.load("pickscore").score(images, [PROMPT] * len(images)),
    }


def test_score_over_http_equals_the_models(app: dict[str, str], expected: Any) -> None:
    from divreward.client import RewardClient

    with RewardClient(app["http"], downsize=False) as client:
        res = client.score(_images(), [PROMPT] * 4, scorers=["ocr", "aesthetic"])
        models = client.models()
    ocr_scores = np.asarray(res.scores["ocr"])
    np.testing.assert_array_equal(ocr_scores, expected["ocr"])
    # the right text reads right; "springsail" is 2 edits from "springsale" (1 - 2/10);
    # "Autumn Fair" is far
    assert ocr_scores[0] == 1.0 and ocr_scores[1] == pytest.approx(0.8)
    assert ocr_scores[2] <= 0.5
    np.testing.assert_allclose(res.scores["aesthetic"], expected["aesthetic"], rtol=1e-5, atol=1e-6)
    assert res.models["ocr"].profile == "real" and res.models["aesthetic"].profile == "tiny"
    assert set(models.scorers) == set(SCORERS)
    assert models.defaults.aggregation == "sum"


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("aggregation", ["sum", "gdpo"])
def test_rewards_aggregate_as_asked(
    app: dict[str, str], expected: Any, transport: str, aggregation: str
) -> None:
    from divreward.client import Group, RewardClient

    weights = {"ocr": 1.0, "pickscore": 0.5, "aesthetic": 0.25}
    kw = {"application": APP} if transport == "grpc" else {}
    with RewardClient(app[transport], downsize=False, **kw) as client:
        res = client.rewards(
            [Group(PROMPT, _images())],
            quality=weights,
            diversity={"method": "none"},
            aggregation=aggregation,
        )
    assert res.params.aggregation == aggregation
    g = res.groups[0]
    for name in weights:
        np.testing.assert_allclose(g.quality[name], expected[name], rtol=1e-5, atol=1e-6)
    total = aggregate_quality(weights, expected, 4, aggregation)
    if aggregation == "gdpo":  # by hand for ocr: (s - mean) / population std
        s = expected["ocr"]
        z = (s - s.mean()) / s.std()
        np.testing.assert_allclose(total, z + 0.5 * _z(expected["pickscore"]) + 0.25 * _z(
            expected["aesthetic"]), rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose(g.quality["total"], total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.advantages, group_advantages(total, 1e-6), rtol=1e-4, atol=1e-5)


def _z(s: np.ndarray) -> np.ndarray:
    return (s - s.mean()) / max(s.std(), 1e-6)


def test_gdpo_through_group_submission(app: dict[str, str], expected: Any) -> None:
    from divreward.client import Group, RewardClient

    weights = {"ocr": 1.0, "aesthetic": 0.25}
    with RewardClient(app["grpc"], downsize=False, application=APP) as client:
        res = client.submit(
            Group(PROMPT, _images(), group_id="g0"),
            quality=weights,
            diversity={"method": "none"},
            aggregation="gdpo",
        ).result()
    total = aggregate_quality(weights, expected, 4, "gdpo")
    np.testing.assert_allclose(res.quality["total"], total, rtol=1e-5, atol=1e-5)


def test_a_prompt_without_quoted_text_is_a_422_naming_it(app: dict[str, str]) -> None:
    png = [base64.b64encode(encode_image(img, "PNG")).decode() for img in _images()[:2]]
    body = {
        "groups": [
            {"prompt": PROMPT, "images": png},
            {"prompt": "a sign that says hello", "images": png},
        ],
        "quality": {"ocr": 1.0},
        "diversity": {"method": "none"},
    }
    r = httpx.post(app["http"] + "/v1/rewards", json=body, timeout=60)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["group_index"] == 1
    assert "groups[1].prompt: scorer 'ocr'" in err["message"]
    assert "double quotes" in err["message"]
    # not asked for ocr: the same prompt is fine
    body["quality"] = {"aesthetic": 1.0}
    assert httpx.post(app["http"] + "/v1/rewards", json=body, timeout=60).status_code == 200


def test_ready_probes_every_scorer(app: dict[str, str]) -> None:
    r = httpx.get(app["http"] + "/readyz", timeout=60)
    assert r.status_code == 200, r.text
    states = r.json()["deployments"]
    assert {states[f"scorer:{n}"] for n in SCORERS} == {"ok"}


def test_flow_grpo_pickle_dialect_scores_ocr(app: dict[str, str], expected: Any) -> None:
    files = [encode_image(img, "PNG") for img in _images()]
    body = pickle.dumps({"images": files, "prompts": [PROMPT] * 4, "metadata": {}})
    r = httpx.post(app["http"] + "/compat/pickle?scorers=ocr", content=body, timeout=60)
    assert r.status_code == 200, r.content
    np.testing.assert_array_equal(safe_loads(r.content)["scores"], expected["ocr"])
