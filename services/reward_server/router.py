"""Routes of the reward API (/v1/score, /v1/rewards). Routes only: the logic is in
:class:`~divreward.services.reward_server.serving.RewardServing` (``app.state.serving``).

The reward app also mounts the diversity routes (served by delegation to the diversity
application) and the shared operational routes; ``EXTRA_ROUTERS`` lists any further
routers to include (issue #5 adds its compatibility router there).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from divreward.schema import RewardsRequest, RewardsResponse, ScoreRequest, ScoreResponse
from divreward.services.http import Api, body_doc, error_responses
from divreward.services.reward_server.assembler import groups_router
from divreward.services.reward_server.compat import compat_router

__all__ = ["BODY_MODELS", "EXTRA_ROUTERS", "reward_router"]

BODY_MODELS = (ScoreRequest, RewardsRequest)
_ERRORS = error_responses(400, 401, 409, 413, 415, 422, 503, 504)

reward_router = APIRouter(tags=["rewards"])

#: Extra routers of the reward app's FastAPI ingress (one place; protected by the same
#: bearer-token auth as every other non-probe route).
EXTRA_ROUTERS: list[APIRouter] = [groups_router, compat_router]


def _api(request: Request) -> Api:
    return request.app.state.api  # type: ignore[no-any-return]


@reward_router.post(
    "/v1/score",
    summary="Quality scores of images for their prompts, one list per scorer.",
    openapi_extra=body_doc(ScoreRequest),
    responses={200: {"model": ScoreResponse}, **_ERRORS},
)
async def score(request: Request) -> Response:
    serving = request.app.state.serving
    return await _api(request).handle(
        request, "/v1/score", ScoreRequest, serving.score, lambda r: len(r.images)
    )


@reward_router.post(
    "/v1/rewards",
    summary="Per group: quality per scorer and total, diversity, rewards and advantages.",
    openapi_extra=body_doc(RewardsRequest),
    responses={200: {"model": RewardsResponse}, **_ERRORS},
)
async def rewards(request: Request) -> Response:
    serving = request.app.state.serving
    return await _api(request).handle(
        request,
        "/v1/rewards",
        RewardsRequest,
        serving.rewards,
        lambda r: sum(len(g.images) for g in r.groups),
    )
