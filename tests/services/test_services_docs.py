"""docs/api.md stays true: every example marked ``<!-- schema: Model -->`` validates
against the schema (and the rewards example adds up), and every endpoint of its table is a
route of the apps' OpenAPI document (built here without Ray)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from divreward import schema
from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import AuthArgs, IngressArgs, LimitsArgs
from divreward.services.reward_server.compat import compat_router
from divreward.services.reward_server.router import reward_router

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXAMPLE = re.compile(r"<!-- schema: (\w+) -->\s*```json\n(.*?)```", re.S)


def _examples() -> list[tuple[str, Any]]:
    return [(name, json.loads(body)) for name, body in EXAMPLE.findall(DOC.read_text())]


def test_doc_has_an_example_of_every_body() -> None:
    names = {name for name, _ in _examples()}
    assert names >= {
        "RewardsRequest",
        "RewardsResponse",
        "ScoreRequest",
        "ScoreResponse",
        "EmbedRequest",
        "EmbedResponse",
        "DiversityRequest",
        "DiversityResponse",
        "MetricsRequest",
        "MetricsResponse",
        "ReadyResponse",
        "ErrorResponse",
    }


@pytest.mark.parametrize("name,body", _examples(), ids=[n for n, _ in _examples()])
def test_examples_validate_against_the_schema(name: str, body: Any) -> None:
    getattr(schema, name).model_validate(body)


def test_rewards_example_adds_up() -> None:
    (resp,) = [
        schema.RewardsResponse.model_validate(b) for n, b in _examples() if n == "RewardsResponse"
    ]
    g = resp.groups[0]
    w = resp.params.quality
    total = sum(w[n] * np.asarray(g.quality[n]) for n in w)
    np.testing.assert_allclose(g.quality["total"], total, atol=2e-4)
    labels = np.asarray(g.diversity.labels)
    bonus = np.sqrt(len(labels) / np.array([np.sum(labels == lab) for lab in labels]))
    np.testing.assert_allclose(g.diversity.bonus, bonus, atol=1e-4)
    np.testing.assert_allclose(g.rewards, total + 0.7 * bonus, atol=2e-4)
    r = np.asarray(g.rewards)
    np.testing.assert_allclose(g.advantages, (r - r.mean()) / (r.std() + 1e-6), atol=2e-4)


def test_every_documented_endpoint_is_in_the_openapi_document() -> None:
    api = Api("reward", LimitsArgs(), AuthArgs(), IngressArgs())
    app = make_app("t", "d", api, [reward_router, diversity_router, ops_router, compat_router])
    doc = app.openapi()
    documented = set(re.findall(r"^\| `(GET|POST) (/[^`]*)`", DOC.read_text(), re.M))
    assert documented
    for method, path in documented:
        if path in ("/docs", "/openapi.json"):
            assert path in {getattr(r, "path", None) for r in app.routes}
        else:
            assert method.lower() in doc["paths"][path], (method, path)
    for path in ("/v1/rewards", "/v1/score", "/v1/embed", "/v1/diversity", "/v1/metrics"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "application/msgpack"}
        ref = body["application/json"]["schema"]["$ref"].split("/")[-1]
        assert ref in doc["components"]["schemas"]
