"""The drop-in adapters against the real Serve app: Flow-GRPO / ddpo-pytorch
``fn(images, prompts, metadata)``, TRL ``f(prompts, completions)`` and verl
``compute_score``, in quality-only mode and with the service assembling groups that the
trainer scatters over calls."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from helpers import Service, make_images
from PIL import Image

from divreward.adapters import flow_grpo, trl, verl
from divreward.adapters._common import FLOW_GRPO_SCALES, scaled_weights
from divreward.client import Group, RewardClient, RewardServiceError, RewardTimeoutError

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

RTOL = ATOL = 1e-5  # float32 models batched with other requests (test_services_grpc.RTOL)


@pytest.fixture(scope="module")
def http(service: Service) -> Any:
    c = RewardClient(service.http_url, downsize=False)
    yield c
    c.close()


def _q(http: Any, images: Any, prompts: list[str], weights: dict[str, float]) -> np.ndarray:
    res = http.score(images, prompts, scorers=list(weights))
    total = np.zeros(len(prompts))
    for name, w in weights.items():
        total += w * np.asarray(res.scores[name])
    return total


def test_scales_are_flow_grpos() -> None:
    # PickScore / 26; CLIP logits / 30 = 100 cos / 30 = (4/3) * Hessel's 2.5 cos
    assert FLOW_GRPO_SCALES["pickscore"] == pytest.approx(1 / 26)
    assert FLOW_GRPO_SCALES["clipscore"] * 2.5 == pytest.approx(100 / 30)
    assert scaled_weights({"pickscore": 2.0}, FLOW_GRPO_SCALES) == {"pickscore": 2.0 / 26}
    assert scaled_weights(["clipscore"], None) == {"clipscore": 1.0}
    with pytest.raises(ValueError, match="scales need explicit scorers"):
        scaled_weights(None, FLOW_GRPO_SCALES)
    with pytest.raises(ValueError, match=r"scales has no entry for \['mystery'\]"):
        scaled_weights({"mystery": 1.0}, FLOW_GRPO_SCALES)


@pytest.mark.parametrize("url_kind", ["http", "grpc"])
def test_flow_grpo_quality_only_with_flow_grpo_scales(
    service: Service, http: Any, url_kind: str
) -> None:
    url = service.http_url if url_kind == "http" else service.grpc_url
    fn = flow_grpo.reward_fn(
        url, scorers={"pickscore": 1.0, "clipscore": 1.0}, flow_grpo_scales=True, downsize=False
    )
    try:
        g = torch.Generator().manual_seed(5)
        images = torch.rand(4, 3, 40, 48, generator=g)  # diffusers' (N, C, H, W) in [0, 1]
        prompts = ["a cat", "a dog", "a cat", "an owl"]
        scores, info = fn(images, prompts, [{} for _ in prompts])
    finally:
        fn.close()  # type: ignore[attr-defined]
    assert scores.dtype == np.float32 and scores.shape == (4,)
    pixels = np.rint(images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    raw = http.score(pixels, prompts).scores
    expected = np.asarray(raw["pickscore"]) / 26 + np.asarray(raw["clipscore"]) * (100 / 30) / 2.5
    np.testing.assert_allclose(scores, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(info["quality/pickscore"], raw["pickscore"], rtol=RTOL)


def test_flow_grpo_server_default_weights_and_numpy_input(service: Service, http: Any) -> None:
    fn = flow_grpo.reward_fn(service.http_url, downsize=False)
    imgs = make_images(3, 400)  # ddpo's (N, H, W, 3) uint8
    scores, _ = fn(imgs, ["x", "y", "z"], None)
    fn.close()  # type: ignore[attr-defined]
    weights = http.models().defaults.quality
    np.testing.assert_allclose(
        scores, _q(http, imgs, ["x", "y", "z"], weights), rtol=RTOL, atol=ATOL
    )


def test_flow_grpo_group_assembly_over_scattered_calls(service: Service, http: Any) -> None:
    """Two 'ranks' each score half of every prompt's group of 4, concurrently; the
    service assembles the groups and both get the diversity-aware group rewards."""
    ns = uuid.uuid4().hex
    a, b = make_images(4, 410), make_images(4, 411)  # prompt "a" and prompt "b" groups
    rank0 = (np.concatenate([a[:2], b[:2]]), ["a", "a", "b", "b"])
    rank1 = (np.concatenate([b[2:], a[2:]]), ["b", "b", "a", "a"])
    fns = [
        flow_grpo.reward_fn(
            service.grpc_url if r == 0 else service.http_url,
            group_size=4,
            diversity={"method": "drift"},
            namespace=ns,
            downsize=False,
        )
        for r in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda r: fns[r](*(rank0 if r == 0 else rank1), None), range(2)))
    for f in fns:
        f.close()  # type: ignore[attr-defined]
    (s0, info0), (s1, _) = out
    # DRIFT is permutation-equivariant: compare per image whatever order the parts came in
    ref = http.rewards(
        [Group("a", a, group_id="a"), Group("b", b, group_id="b")], diversity={"method": "drift"}
    )
    ra, rb = (np.asarray(g.rewards) for g in ref.groups)
    np.testing.assert_allclose(s0, np.concatenate([ra[:2], rb[:2]]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(s1, np.concatenate([rb[2:], ra[2:]]), rtol=RTOL, atol=ATOL)
    adv_a = np.asarray(ref.groups[0].advantages)
    np.testing.assert_allclose(info0["advantages"][:2], adv_a[:2], rtol=RTOL, atol=1e-4)


def test_flow_grpo_group_that_never_completes_fails_clearly(service: Service) -> None:
    fn = flow_grpo.reward_fn(
        service.http_url,
        group_size=6,
        namespace=uuid.uuid4().hex,
        assembly_timeout_s=1.0,
        downsize=False,
    )
    with pytest.raises((RewardTimeoutError, RewardServiceError), match="2 of 6 images arrived"):
        fn(make_images(2, 420), ["lonely", "lonely"], None)
    fn.close()  # type: ignore[attr-defined]


def test_trl_reward_func_quality_and_chat_prompts(service: Service, http: Any) -> None:
    f = trl.reward_func(service.grpc_url, scorers={"pickscore": 0.5}, downsize=False)
    imgs = make_images(3, 430)
    completions = [Image.fromarray(x) for x in imgs]
    prompts: list[Any] = [
        "a cat",
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a dog"}],
        [{"role": "user", "content": [{"type": "text", "text": "an owl"}]}],
    ]
    out = f(prompts=prompts, completions=completions, ground_truth=[None] * 3)
    f.close()  # type: ignore[attr-defined]
    assert f.__name__ == "divreward" and isinstance(out, list) and len(out) == 3
    expected = _q(http, imgs, ["a cat", "a dog", "an owl"], {"pickscore": 0.5})
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=r"prompts\[0\]: a conversation with no user text"):
        trl.prompt_text([{"role": "system", "content": "x"}], 0)


def test_trl_reward_func_with_groups(service: Service, http: Any) -> None:
    f = trl.reward_func(service.http_url, group_size=3, namespace=uuid.uuid4().hex, downsize=False)
    imgs = make_images(3, 440)
    out = f(prompts=["p"] * 3, completions=list(imgs))
    f.close()  # type: ignore[attr-defined]
    ref = http.rewards([Group("p", imgs)]).groups[0]
    np.testing.assert_allclose(out, ref.rewards, rtol=RTOL, atol=ATOL)


def test_trl_refuses_a_method_that_shapes_advantages_only() -> None:
    """TRL makes its advantages from the returned rewards: GARDO's shaping would be lost."""
    with pytest.raises(ValueError, match="method 'gardo' shapes the advantages only"):
        trl.reward_func("http://127.0.0.1:1", group_size=3, diversity={"method": "gardo"})


def test_verl_compute_score_quality(service: Service, http: Any) -> None:
    compute_score = verl.make_compute_score(service.http_url, downsize=False)
    img = make_images(1, 450)[0]
    got = compute_score("t2i", img, None, {"prompt": "a lake"})
    by_gt = compute_score("t2i", torch.from_numpy(img).permute(2, 0, 1) / 255.0, "a lake", {})
    compute_score.close()  # type: ignore[attr-defined]
    weights = http.models().defaults.quality
    expected = _q(http, img[None], ["a lake"], weights)[0]
    assert got["score"] == pytest.approx(expected, rel=RTOL, abs=ATOL)
    assert by_gt["score"] == pytest.approx(expected, rel=RTOL, abs=ATOL)
    assert set(got) == {"score", "quality/pickscore", "quality/clipscore"}
    with pytest.raises(ValueError, match=r"no prompt: extra_info\['prompt'\] is missing"):
        verl.make_compute_score(service.http_url)("t2i", img, None, {})


def test_verl_async_compute_score_assembles_one_image_calls(service: Service, http: Any) -> None:
    compute_score = verl.make_async_compute_score(
        service.grpc_url,
        group_size=3,
        diversity={"method": "drift"},
        namespace=uuid.uuid4().hex,
        downsize=False,
    )
    imgs = make_images(3, 460)

    async def run() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                compute_score("t2i", imgs[i], None, {"prompt": "a lake", "uid": "u-1"})
                for i in range(3)
            )
        )

    out = asyncio.run(run())
    compute_score.close()  # type: ignore[attr-defined]
    ref = http.rewards([Group("a lake", imgs)], diversity={"method": "drift"}).groups[0]
    np.testing.assert_allclose(
        sorted(o["score"] for o in out), sorted(ref.rewards), rtol=RTOL, atol=ATOL
    )
    # each call's image got its own reward (DRIFT is permutation-equivariant)
    for i, o in enumerate(out):
        assert o["score"] == pytest.approx(ref.rewards[i], rel=RTOL, abs=ATOL)
        assert o["advantage"] == pytest.approx(ref.advantages[i], rel=RTOL, abs=1e-4)
