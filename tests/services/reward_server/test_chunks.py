"""``ingress.max_chunk_images``: the fair queue's unit is a chunk of a group, not the
whole group. Without Ray: the serving layer with fake scorer handles and the decoding
replaced by a slice of the request's "images" (each a number, as bytes)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from divreward.schema import ModelCard, RewardsRequest, ScoreRequest
from divreward.services.common.deployments import DiversityHandles
from divreward.services.common.errors import ServiceError
from divreward.services.config import RewardAppArgs
from divreward.services.model_deployments import ModelOutput
from divreward.services.reward_server.serving import RewardServing

CARD = ModelCard(name="pickscore", kind="scorer", source="stub")


class Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeScorer:
    """Scores image ``x`` (its bytes, a number) as ``10 * x``; records each call's size;
    a metadata entry ``{"bad": True}`` fails like a scorer's MetadataError."""

    def __init__(self) -> None:
        self.calls: list[int] = []

        async def score(ref: list[int], prompts: list[str], meta: Any) -> ModelOutput:
            from divreward.models.base import MetadataError

            assert len(prompts) == len(ref)
            self.calls.append(len(ref))
            for i, m in enumerate(meta or []):
                if isinstance(m, dict) and m.get("bad"):
                    raise MetadataError("bad entry", i)
            return ModelOutput(
                np.array([10.0 * x for x in ref]), CARD, [len(ref)], 0.001 * len(ref)
            )

        self.score = Remote(score)


def serving(chunk: int | None, capacity: int = 64) -> tuple[RewardServing, FakeScorer]:
    args = RewardAppArgs.model_validate(
        {
            "default_diversity": "none",
            "ingress": {"max_chunk_images": chunk, "max_inflight_images": capacity},
        }
    )
    scorer = FakeScorer()
    s = RewardServing({"pickscore": scorer}, DiversityHandles("diversity", None, None), args)
    sizes: list[int] = []

    async def decode_put(images: list[bytes], group: int | None, offset: int = 0) -> Any:
        sizes.append(len(images))
        return [int(b) for b in images], len(images)

    s._decode_put = decode_put  # type: ignore[method-assign]
    s.decoded = sizes  # type: ignore[attr-defined]
    return s, scorer


def images(n: int, start: int = 0) -> list[bytes]:
    return [str(start + i).encode() for i in range(n)]


def test_bounds_split_a_group_into_chunks_of_at_most_the_setting() -> None:
    assert serving(3)[0]._bounds(8) == [(0, 3), (3, 6), (6, 8)]
    assert serving(3)[0]._bounds(3) == [(0, 3)]
    assert serving(None)[0]._bounds(8) == [(0, 8)]
    assert serving(3)[0]._bounds(0) == [(0, 0)]


@pytest.mark.parametrize("chunk", [None, 1, 3, 8, 100])
def test_rewards_are_the_same_whatever_the_chunking(chunk: int | None) -> None:
    s, scorer = serving(chunk)
    req = RewardsRequest.model_validate(
        {
            "groups": [
                {"prompt": "p", "images": images(8)},
                {"prompt": "q", "images": images(5, 100)},
            ],
            "quality": {"pickscore": 1.0},
        }
    )
    out = asyncio.run(s.rewards(req))
    assert out.groups[0].quality["pickscore"] == [10.0 * i for i in range(8)]
    assert out.groups[1].quality["pickscore"] == [10.0 * (100 + i) for i in range(5)]
    # every image scored exactly once, in calls of at most `chunk` images
    assert sum(scorer.calls) == 13
    size = chunk or 8
    expected = sorted(
        [min(size, 8 - lo) for lo in range(0, 8, size)]
        + [min(size, 5 - lo) for lo in range(0, 5, size)]
    )
    assert sorted(scorer.calls) == expected
    assert sorted(s.decoded) == expected  # type: ignore[attr-defined]
    # GRPO's group advantages over the whole group, not per chunk (up to its epsilon)
    q = np.arange(8) * 10.0
    np.testing.assert_allclose(out.groups[0].advantages, (q - q.mean()) / q.std(), rtol=1e-6)


def test_each_chunk_takes_its_own_turn_in_the_fair_queue() -> None:
    """With room for one chunk at a time the chunks of a group go one after the other,
    and the scheduler saw one entry per chunk."""
    s, scorer = serving(3, capacity=3)
    seen: list[int] = []
    submit = s.queue.scheduler.submit

    def spy(tenant: str, sizes: list[int]) -> Any:
        seen.extend(sizes)
        return submit(tenant, sizes)

    s.queue.scheduler.submit = spy  # type: ignore[method-assign]
    req = ScoreRequest.model_validate({"images": images(7), "prompts": ["p"] * 7})
    out = asyncio.run(s.score(req))
    assert seen == [3, 3, 1]
    assert scorer.calls == [3, 3, 1]
    assert out.scores["pickscore"] == [10.0 * i for i in range(7)]
    assert s.queue.scheduler.in_flight == 0 and s.queue.scheduler.queued_images() == 0


def test_a_metadata_error_in_a_later_chunk_names_the_requests_own_image_index() -> None:
    s, _ = serving(3)
    meta: list[Any] = [{} for _ in range(7)]
    meta[4] = {"bad": True}
    req = ScoreRequest.model_validate({"images": images(7), "prompts": ["p"] * 7, "metadata": meta})
    with pytest.raises(ServiceError) as info:
        asyncio.run(s.score(req))
    assert info.value.status == 400
    assert info.value.message.startswith("metadata[4]: scorer 'pickscore': ")
    assert info.value.image_index == 4


def test_decoding_a_chunk_names_the_groups_own_image_index() -> None:
    from divreward.services.common.decode import decode_group

    with pytest.raises(ServiceError) as info:
        decode_group([b"not an image"], 2, 10**6, offset=5)
    assert info.value.status == 400
    assert info.value.message.startswith("groups[2].images[5]: ")
    assert (info.value.group_index, info.value.image_index) == (2, 5)


def test_a_model_that_changed_between_two_chunks_is_warned_of() -> None:
    """A rolling update between two chunks of one call: the response says so."""
    s, scorer = serving(3)
    score = scorer.score.remote
    calls = 0

    async def updated(ref: list[int], prompts: list[str], meta: Any) -> ModelOutput:
        nonlocal calls
        calls += 1
        out = await score(ref, prompts, meta)
        if calls > 1:
            out.card = CARD.model_copy(update={"weights_hash": "new"})
        return out

    scorer.score = Remote(updated)
    out = asyncio.run(
        s.score(ScoreRequest.model_validate({"images": images(5), "prompts": ["p"] * 5}))
    )
    assert out.scores["pickscore"] == [10.0 * i for i in range(5)]
    assert any("'pickscore' changed during the request" in w for w in out.warnings)
