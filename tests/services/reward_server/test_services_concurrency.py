"""16 concurrent clients, each with its own groups of 8-24 images: every answer is
complete and correct for its own group (scores of its own images for its own prompt,
rewards from the core math), whichever requests shared a forward pass."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from services_helpers import b64, local_embed, local_scores, make_group, png, reference_group

from divreward.schema import RewardsResponse

pytestmark = [pytest.mark.serve, pytest.mark.timeout(400)]

N_CLIENTS = 16
REQUESTS_PER_CLIENT = 2
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _plan() -> list[dict[str, Any]]:
    """Per (client, request): a distinct prompt and a group of 8..24 images of 64 px."""
    rng = np.random.default_rng(2024)
    out = []
    for c in range(N_CLIENTS):
        for k in range(REQUESTS_PER_CLIENT):
            n = int(rng.integers(8, 25))
            out.append(
                {
                    "client": c,
                    "group_id": f"c{c}-r{k}",
                    "prompt": f"prompt of client {c}, request {k}",
                    "images": make_group(n, seed=1000 + 10 * c + k, size=64),
                    "method": ["diversegrpo", "drift"][(c + k) % 2],
                    "binary": c % 2 == 1,
                }
            )
    return out


def _send(client: httpx.Client, item: dict[str, Any]) -> RewardsResponse:
    files = png(item["images"])
    body: dict[str, Any] = {
        "groups": [{"prompt": item["prompt"], "group_id": item["group_id"]}],
        "diversity": {"method": item["method"]},
        "return_embeddings": True,
        "request_id": item["group_id"],
    }
    if item["binary"]:
        body["groups"][0]["images"] = files
        r = client.post(
            "/v1/rewards",
            content=msgpack.packb(body, use_bin_type=True),
            headers={"content-type": "application/msgpack"},
        )
        assert r.status_code == 200, r.content[:500]
        return RewardsResponse.model_validate(msgpack.unpackb(r.content))
    body["groups"][0]["images"] = b64(files)
    r = client.post("/v1/rewards", json=body)
    assert r.status_code == 200, r.text[:500]
    return RewardsResponse.model_validate_json(r.content)


def test_sixteen_concurrent_clients_get_their_own_complete_answers(serve_app: Any) -> None:
    plan = _plan()
    by_client: dict[int, list[dict[str, Any]]] = {}
    for item in plan:
        by_client.setdefault(item["client"], []).append(item)

    def run_client(items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], RewardsResponse]]:
        with httpx.Client(base_url=serve_app.base_url, timeout=180) as c:
            return [(item, _send(c, item)) for item in items]

    with concurrent.futures.ThreadPoolExecutor(N_CLIENTS) as pool:
        results = [r for rs in pool.map(run_client, by_client.values()) for r in rs]
    assert len(results) == len(plan)

    weights = serve_app.scorers
    for item, resp in results:
        assert resp.request_id == item["group_id"]
        (g,) = resp.groups
        n = len(item["images"])
        assert g.group_id == item["group_id"] and g.size == n
        assert len(g.rewards) == len(g.advantages) == n
        # Scores of this group's own images for this group's own prompt.
        local = local_scores(
            list(weights), serve_app.tiny_models_dir, item["images"], item["prompt"]
        )
        for name in weights:
            np.testing.assert_allclose(
                g.quality[name], local[name], **TOL, err_msg=item["group_id"]
            )
        emb = np.asarray(g.diversity.embeddings)
        local_emb = local_embed(
            "dreamsim", {"dreamsim_type": "dino_vitb16"}, serve_app.tiny_models_dir, item["images"]
        )
        np.testing.assert_allclose(emb, local_emb, **TOL, err_msg=item["group_id"])
        # And the core math on those outputs, exactly.
        served_q = {name: np.asarray(g.quality[name]) for name in weights}
        ref = reference_group(
            item["method"],
            served_q,
            weights,
            emb,
            resp.params.diversity.model_dump(),
            resp.params.advantage.eps,
        )
        np.testing.assert_array_equal(g.rewards, ref["rewards"])
        np.testing.assert_array_equal(g.advantages, ref["advantages"])
