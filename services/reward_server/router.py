"""Routes of the reward API (/v1/score, /v1/rewards, /v1/groups). Routes only: the logic
is in :class:`~divreward.services.reward_server.serving.RewardServing`
(``app.state.serving``) and :class:`~divreward.services.reward_server.groups.GroupService`
(``app.state.groups``).

The reward app also mounts the diversity routes (served by delegation to the diversity
application), the operational routes (:mod:`divreward.services.common.routes`) and the
compatibility routes (:mod:`divreward.services.reward_server.compat`).
"""

from __future__ import annotations

from typing import Protocol

from fastapi import Request

from divreward.schema import RewardsRequest, RewardsResponse, ScoreRequest, ScoreResponse
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult
from divreward.services.common.app import counts_images, error_responses, wire_router
from divreward.services.common.routes import BODY_ERRORS, ServingLayer, delegate, group_images

__all__ = ["RewardServingLayer", "reward_router"]

reward_router = wire_router("rewards")


class RewardServingLayer(ServingLayer, Protocol):
    """What the reward routes call besides the diversity and operations routes."""

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """Quality scores of images for their prompts, one list per scorer."""

    async def rewards(self, req: RewardsRequest) -> RewardsResponse:
        """Per group: quality per scorer and total, diversity, rewards and advantages."""


delegate(reward_router, "/v1/score", RewardServingLayer.score, lambda r: len(r.images))
delegate(reward_router, "/v1/rewards", RewardServingLayer.rewards, group_images)


@reward_router.post(
    "/v1/groups",
    summary="Rewards of one group, or of a part of a group the server assembles "
    "(group_size set); answers once the group is complete.",
    responses=error_responses(*BODY_ERRORS, 408),
)
@counts_images(lambda r: len(r.images))
async def submit_group(body: GroupSubmission, request: Request) -> GroupSubmissionResult:
    return await request.app.state.groups.submit(body)  # type: ignore[no-any-return]
