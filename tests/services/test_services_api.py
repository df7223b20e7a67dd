"""The HTTP API against a real Serve application on 127.0.0.1 with the tiny models.

Every number is checked against the core math run here on the models' own outputs:
the service's scores and embeddings equal the same tiny models run in this process
(same loader, same files), and its rewards/advantages/clusters equal the core functions
applied to those scores and embeddings.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from helpers import prom_samples, prom_sum
from services_helpers import (
    b64,
    local_embed,
    local_scores,
    make_group,
    png,
    reference_group,
)

from divreward.core import CoreConfig, evaluate_groups
from divreward.schema import (
    DiversityResponse,
    EmbedResponse,
    MetricsResponse,
    ModelsResponse,
    RewardsResponse,
    ScoreResponse,
)

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

PROMPTS = ["a red bicycle leaning on a wall", "an owl in the snow"]
# Scores pass through different batch compositions in the service than here (float32
# matmuls): equal to float32 precision, not bit for bit.
MODEL_TOL = {"rtol": 1e-4, "atol": 1e-4}


def assert_same_rewards(a: RewardsResponse, b: RewardsResponse) -> None:
    """Two answers to the same request: identical but for float32 rounding, since the
    requests may share forward passes with different neighbours (batch composition
    changes the reduction order of the matmuls)."""
    assert a.params == b.params and a.models == b.models and a.profile == b.profile
    for x, y in zip(a.groups, b.groups, strict=True):
        assert (x.group_id, x.size, x.diversity.labels, x.diversity.k) == (
            y.group_id,
            y.size,
            y.diversity.labels,
            y.diversity.k,
        )
        assert set(x.quality) == set(y.quality)
        for name in x.quality:
            np.testing.assert_allclose(x.quality[name], y.quality[name], **MODEL_TOL)
        np.testing.assert_allclose(x.rewards, y.rewards, **MODEL_TOL)
        np.testing.assert_allclose(x.advantages, y.advantages, **MODEL_TOL)


@pytest.fixture(scope="module")
def client(serve_app: Any) -> httpx.Client:
    with httpx.Client(base_url=serve_app.base_url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def groups() -> list[list[np.ndarray]]:
    return [make_group(8, seed=1), make_group(12, seed=2, size=40)]


def _rewards_body(groups: list[list[np.ndarray]], **extra: Any) -> dict[str, Any]:
    return {
        "groups": [
            {"prompt": PROMPTS[i], "images": b64(png(g)), "group_id": f"g{i}"}
            for i, g in enumerate(groups)
        ],
        "return_embeddings": True,
        **extra,
    }


@pytest.mark.parametrize("method", ["diversegrpo", "drift", "gardo", "none"])
def test_rewards_equal_core_math_on_the_models_outputs(
    client: httpx.Client, serve_app: Any, groups: list[list[np.ndarray]], method: str
) -> None:
    r = client.post("/v1/rewards", json=_rewards_body(groups, diversity={"method": method}))
    assert r.status_code == 200, r.text
    resp = RewardsResponse.model_validate_json(r.content)
    weights = serve_app.scorers
    assert resp.params.quality == weights
    assert resp.params.diversity.method == method
    assert resp.profile == "tiny" and "TINY RANDOM MODELS" in resp.warnings[0]
    assert set(resp.models) == set(weights) | ({"dreamsim"} if method != "none" else set())
    for card in resp.models.values():
        assert card.profile == "tiny" and card.weights_hash

    params = resp.params.diversity.model_dump()
    for gi, (group, res) in enumerate(zip(groups, resp.groups, strict=True)):
        assert res.group_id == f"g{gi}" and res.size == len(group)
        assert set(res.quality) == {*weights, "total"}
        # 1. The service's scores and embeddings are the models' own outputs.
        local = local_scores(list(weights), serve_app.tiny_models_dir, group, PROMPTS[gi])
        for name in weights:
            np.testing.assert_allclose(res.quality[name], local[name], **MODEL_TOL)
        emb = None
        if method != "none":
            assert res.diversity.embeddings is not None
            emb = np.asarray(res.diversity.embeddings)
            local_emb = local_embed(
                "dreamsim", {"dreamsim_type": "dino_vitb16"}, serve_app.tiny_models_dir, group
            )
            np.testing.assert_allclose(emb, local_emb, **MODEL_TOL)
        # 2. Rewards, advantages and the diversity terms are exactly the core math on them.
        served_q = {n: np.asarray(res.quality[n]) for n in weights}
        ref = reference_group(method, served_q, weights, emb, params, resp.params.advantage.eps)
        np.testing.assert_array_equal(res.quality["total"], ref["total"])
        np.testing.assert_array_equal(res.rewards, ref["rewards"])
        np.testing.assert_array_equal(res.advantages, ref["advantages"])
        assert res.diversity.method == method
        if method == "diversegrpo":
            np.testing.assert_array_equal(res.diversity.bonus, ref["bonus"])
            np.testing.assert_array_equal(res.diversity.labels, ref["labels"])
            assert res.diversity.k == ref["k"] and res.diversity.sigma == ref["sigma"]
            # E_i = sqrt(N / n_k) from the returned labels (Eq. 11)
            labels = np.asarray(res.diversity.labels)
            counts = np.array([np.sum(labels == lab) for lab in labels])
            np.testing.assert_allclose(res.diversity.bonus, np.sqrt(len(group) / counts))
            np.testing.assert_allclose(
                res.rewards, ref["total"] + 0.7 * np.asarray(res.diversity.bonus)
            )
        elif method == "drift":
            np.testing.assert_array_equal(res.diversity.diversity, ref["diversity"])
            np.testing.assert_array_equal(res.diversity.intrinsic, ref["intrinsic"])
        if method == "gardo":
            np.testing.assert_array_equal(res.diversity.nn_distance, ref["nn_distance"])
            np.testing.assert_array_equal(res.diversity.advantage_weight, ref["weight"])
            # by hand on the served embeddings (the code variant, no std): rewards = Q;
            # A = (Q - mean Q) * w, w = 1 below the mean, else d / mean(d)
            assert emb is not None
            u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            dist = 1.0 - np.clip(u @ u.T, -1.0, 1.0)
            np.fill_diagonal(dist, np.inf)
            d = dist.min(axis=1)
            q = ref["total"]
            w = np.where(q < q.mean(), 1.0, d / d.mean())
            np.testing.assert_allclose(res.diversity.nn_distance, d, atol=1e-12)
            np.testing.assert_array_equal(res.rewards, q)
            np.testing.assert_allclose(res.advantages, (q - q.mean()) * w, atol=1e-12)
            assert np.all(np.sign(res.advantages) == np.sign(q - q.mean()))
        else:  # Population-std normalisation: advantages of the combined reward have mean 0.
            assert abs(float(np.mean(res.advantages))) < 1e-9


def test_binary_form_gives_the_json_answer(
    client: httpx.Client, groups: list[list[np.ndarray]]
) -> None:
    body = _rewards_body(groups, diversity={"method": "diversegrpo", "beta": 0.3})
    as_json = client.post("/v1/rewards", json=body)
    raw = {
        **body,
        "groups": [{**g, "images": png(groups[i])} for i, g in enumerate(body["groups"])],
    }
    as_binary = client.post(
        "/v1/rewards",
        content=msgpack.packb(raw, use_bin_type=True),
        headers={"content-type": "application/msgpack"},
    )
    assert as_json.status_code == as_binary.status_code == 200, as_binary.text
    assert as_binary.headers["content-type"] == "application/msgpack"
    decoded = RewardsResponse.model_validate(msgpack.unpackb(as_binary.content))
    assert_same_rewards(decoded, RewardsResponse.model_validate_json(as_json.content))
    assert decoded.params.diversity.beta == 0.3
    # JSON back for a msgpack request when the client asks for it
    asked_json = client.post(
        "/v1/rewards",
        content=msgpack.packb(raw, use_bin_type=True),
        headers={"content-type": "application/msgpack", "accept": "application/json"},
    )
    assert asked_json.headers["content-type"] == "application/json"
    assert_same_rewards(RewardsResponse.model_validate_json(asked_json.content), decoded)


def test_unset_parameters_come_from_the_server_config(
    client: httpx.Client, serve_app: Any, groups: list[list[np.ndarray]]
) -> None:
    defaults = CoreConfig()
    r = client.post("/v1/rewards", json=_rewards_body(groups[:1]))
    resp = RewardsResponse.model_validate_json(r.content)
    assert resp.params.diversity.method == "diversegrpo"
    assert resp.params.diversity.model_dump(exclude={"method"}) == defaults.diversegrpo.model_dump()
    assert resp.params.advantage == defaults.advantage
    r = client.post(
        "/v1/rewards",
        json=_rewards_body(
            groups[:1],
            diversity={"method": "drift", "lam": 0.25},
            quality={"clipscore": 2.0},
            advantage={"eps": 1e-3},
        ),
    )
    resp = RewardsResponse.model_validate_json(r.content)
    drift = resp.params.diversity.model_dump(exclude={"method"})
    assert drift == {**defaults.drift.model_dump(), "lam": 0.25}
    assert resp.params.quality == {"clipscore": 2.0}
    assert resp.params.advantage.eps == 1e-3
    g = resp.groups[0]
    assert set(g.quality) == {"clipscore", "total"}
    np.testing.assert_array_equal(g.quality["total"], 2.0 * np.asarray(g.quality["clipscore"]))


def test_score(client: httpx.Client, serve_app: Any) -> None:
    images = make_group(5, seed=7)
    prompts = [f"prompt {i}" for i in range(5)]
    r = client.post(
        "/v1/score", json={"prompts": prompts, "images": b64(png(images)), "request_id": "s1"}
    )
    assert r.status_code == 200, r.text
    resp = ScoreResponse.model_validate_json(r.content)
    assert resp.request_id == "s1" and resp.params.scorers == list(serve_app.scorers)
    for name in serve_app.scorers:
        model_scores = np.array(
            [
                local_scores([name], serve_app.tiny_models_dir, [img], p)[name][0]
                for img, p in zip(images, prompts, strict=True)
            ]
        )
        np.testing.assert_allclose(resp.scores[name], model_scores, **MODEL_TOL)
    only = client.post(
        "/v1/score",
        json={"prompts": prompts, "images": b64(png(images)), "scorers": ["clipscore"]},
    )
    assert set(ScoreResponse.model_validate_json(only.content).scores) == {"clipscore"}


def test_embed_on_the_front_door_and_on_its_own_prefix(
    client: httpx.Client, serve_app: Any
) -> None:
    images = make_group(4, seed=3)
    body = {"images": b64(png(images))}
    front = client.post("/v1/embed", json=body)
    own = client.post(f"{serve_app.diversity_url}/v1/embed", json=body)
    assert front.status_code == own.status_code == 200, front.text
    a = EmbedResponse.model_validate_json(front.content)
    b = EmbedResponse.model_validate_json(own.content)
    assert a.embeddings == b.embeddings and a.dim == len(a.embeddings[0]) == 32
    assert a.model.name == "dreamsim" and a.model.options["dreamsim_type"] == "dino_vitb16"
    emb = np.asarray(a.embeddings)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    local = local_embed(
        "dreamsim", {"dreamsim_type": "dino_vitb16"}, serve_app.tiny_models_dir, images
    )
    np.testing.assert_allclose(emb, local, **MODEL_TOL)


def test_diversity_on_given_embeddings_is_the_core_math(client: httpx.Client) -> None:
    rng = np.random.default_rng(0)
    # Two well-separated modes (5 + 3): random unit centres in 64-D plus isotropic noise
    # (within a mode 1 - cos ~ 0.05, between modes ~ 1).
    centres = rng.normal(size=(2, 64))
    emb = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), [5, 3], axis=0)
    emb += 0.3 * rng.normal(size=emb.shape) / 8.0
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    quality = rng.normal(size=8)
    body = {
        "groups": [{"embeddings": emb.tolist(), "quality": quality.tolist(), "group_id": "x"}],
        "method": "diversegrpo",
        "beta": 0.5,
    }
    r = client.post("/v1/diversity", json=body)
    assert r.status_code == 200, r.text
    resp = DiversityResponse.model_validate_json(r.content)
    g = resp.groups[0]
    assert g.k == 2 and sorted(np.bincount(g.labels)) == [3, 5]
    np.testing.assert_allclose(g.bonus, [np.sqrt(8 / 5)] * 5 + [np.sqrt(8 / 3)] * 3, rtol=1e-12)
    ref = reference_group(
        "diversegrpo", {"q": quality}, {"q": 1.0}, emb, resp.params.diversity.model_dump(), 1e-6
    )
    np.testing.assert_array_equal(g.rewards, ref["rewards"])
    np.testing.assert_array_equal(g.advantages, ref["advantages"])
    assert resp.models == {}  # no model ran
    # The nested form is the same request.
    nested = client.post(
        "/v1/diversity",
        json={"groups": body["groups"], "diversity": {"method": "diversegrpo", "beta": 0.5}},
    )
    assert DiversityResponse.model_validate_json(nested.content) == resp
    # DRIFT without quality: the diversity values only (Eq. 11, 13).
    r = client.post(
        "/v1/diversity", json={"groups": [{"embeddings": emb.tolist()}], "method": "drift"}
    )
    d = DiversityResponse.model_validate_json(r.content).groups[0]
    ref_d = reference_group("drift", {"q": np.zeros(8)}, {"q": 1.0}, emb, {}, 1e-6)
    np.testing.assert_array_equal(d.diversity, ref_d["diversity"])
    np.testing.assert_array_equal(d.intrinsic, ref_d["intrinsic"])
    assert d.rewards is None and d.advantages is None and d.bonus is None


def test_metrics(client: httpx.Client, serve_app: Any) -> None:
    rng = np.random.default_rng(5)
    groups = [rng.normal(size=(6, 8)) for _ in range(3)]
    reference = [rng.normal(size=(12, 8))]
    body = {
        "groups": [{"embeddings": g.tolist()} for g in groups],
        "reference": [{"embeddings": g.tolist()} for g in reference],
        "recall_k": 3,
    }
    r = client.post("/v1/metrics", json=body)
    assert r.status_code == 200, r.text
    resp = MetricsResponse.model_validate_json(r.content)
    expected = evaluate_groups(groups, reference, CoreConfig(recall_k=3))
    assert resp.metrics["num_groups"] == 3 and resp.params["recall_k"] == 3
    for key, value in expected.items():
        np.testing.assert_allclose(resp.metrics[key], value, rtol=1e-12, err_msg=key)
    # Images: embedded by the service's embedder first.
    imgs = [make_group(4, seed=s) for s in (11, 12)]
    r = client.post("/v1/metrics", json={"groups": [{"images": b64(png(g))} for g in imgs]})
    assert r.status_code == 200, r.text
    resp = MetricsResponse.model_validate_json(r.content)
    local = [
        local_embed("dreamsim", {"dreamsim_type": "dino_vitb16"}, serve_app.tiny_models_dir, g)
        for g in imgs
    ]
    expected = evaluate_groups(local)
    np.testing.assert_allclose(
        resp.metrics["mean_pairwise_distance"], expected["mean_pairwise_distance"], rtol=1e-4
    )
    assert set(resp.models) == {"dreamsim"}


def test_models_health_ready(client: httpx.Client, serve_app: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    states = ready.json()["deployments"]
    assert states == {
        "scorer:pickscore": "ok",
        "scorer:clipscore": "ok",
        "diversity:embedder:dreamsim": "ok",
    }
    models = ModelsResponse.model_validate_json(client.get("/v1/models").content)
    assert set(models.scorers) == set(serve_app.scorers)
    assert models.embedder is not None and models.embedder.name == "dreamsim"
    assert models.defaults.quality == serve_app.scorers
    assert models.defaults.diversity.method == "diversegrpo"
    assert models.limits["max_images_per_group"] == 32
    assert models.profile == "tiny"
    own = client.get(f"{serve_app.diversity_url}/readyz")
    assert own.status_code == 200 and own.json()["deployments"] == {"embedder:dreamsim": "ok"}


def test_prometheus_metrics(
    client: httpx.Client, serve_app: Any, groups: list[list[np.ndarray]]
) -> None:
    """The replica's own /metrics: requests, errors, images by scorer, time, by route and
    tenant (one ingress replica, so these are every request's counts)."""
    before = prom_samples(client.get("/metrics").text)
    assert client.post("/v1/rewards", json=_rewards_body(groups[:1])).status_code == 200
    bad = {"groups": [{"prompt": "x", "images": ["aGVsbG8="]}]}
    assert client.post("/v1/rewards", json=bad).status_code == 400
    after = prom_samples(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return prom_sum(after, name, **labels) - prom_sum(before, name, **labels)

    call = {"route": "/v1/rewards", "tenant": "local"}  # a token-less loopback caller
    assert delta("divreward_requests_total", **call, status_class="2xx") == 1
    assert delta("divreward_requests_total", **call, status_class="4xx") == 1
    assert delta("divreward_errors_total", **call, kind="invalid_image") == 1
    assert delta("divreward_request_seconds_count", **call) == 2
    assert delta("divreward_request_images_total", **call) == len(groups[0]) + 1
    for scorer in [*serve_app.scorers, "dreamsim"]:
        assert delta("divreward_images_total", **call, scorer=scorer) == len(groups[0]), scorer
    # the forward passes that served the call: the embedder's one batch of the group
    assert delta("divreward_batch_images_bucket", scorer="dreamsim", le="8.0") == 1
    assert prom_sum(after, "divreward_inflight_requests") == 0


def test_openapi_document(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    doc = client.get("/openapi.json").json()
    for path in ("/v1/rewards", "/v1/score", "/v1/embed", "/v1/diversity", "/v1/metrics"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/msgpack"}
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            out = [node["$ref"]] if "$ref" in node else []
            return out + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    missing = {r for r in refs(doc) if r.split("/")[-1] not in schemas}
    assert not missing
    assert "ErrorResponse" in schemas and "RewardsRequest" in schemas


def test_request_id_replays_and_conflicts(
    client: httpx.Client, groups: list[list[np.ndarray]]
) -> None:
    body = _rewards_body(groups[:1], request_id="retry-1")
    first = client.post("/v1/rewards", json=body)
    again = client.post("/v1/rewards", json=body)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert RewardsResponse.model_validate_json(first.content).request_id == "retry-1"
    replays = prom_samples(client.get("/metrics").text)
    assert prom_sum(replays, "divreward_idempotent_replays_total", route="/v1/rewards") == 1
    other = client.post("/v1/rewards", json={**body, "diversity": {"method": "drift"}})
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["kind"] == "conflict" and "retry-1" in err["message"]
