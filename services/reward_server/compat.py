"""Compatibility endpoints, so that existing trainers' reward clients work unmodified
(only their URL changes). See docs/client.md and ../shared/design/PEERS.md.

Pickle dialect (Flow-GRPO, ddpo-pytorch and their reference servers; verl-omni/deepgen):
    ``POST /`` (or ``/compat/pickle``), body ``pickle.dumps({"images": [JPEG/PNG bytes],
    "prompts": [str], "metadata": {...}})`` -> pickled ``{"scores": [float], "outputs":
    [float]}`` (both keys: the DeQA-style clients read ``outputs``, verl-omni ``scores``).
    The score is the server's quality ``Q = sum(weight * score)`` (``?scorers=a,b`` picks
    scorers with weight 1 each).
    Flow-GRPO's GenEval client (``geneval_score``) posts ``{"images": [JPEG bytes],
    "meta_datas": [GenEval metadata dict per image], "only_strict": bool}`` to the same
    route; it is answered by the ``geneval`` scorer with Flow-GRPO's reward server's reply
    ``{"scores": [partial reward], "rewards": [GenEval 0/1, all 0 when only_strict],
    "strict_rewards": [0/1], "group_rewards": {tag: [...]}, "group_strict_rewards":
    {tag: [...]}}`` (per-tag lists hold -10.0 for images of another tag, as there).
    Bodies are decoded by the allow-list unpickler (:mod:`divreward.safe_pickle`): a
    pickle naming any global is refused with a 400 and never executed. Errors reply a
    pickled ``{"error": str}``: 4xx for a bad request (these clients then stop, as they
    should), and **500 for anything transient**
    (overload, timeout, internal) because 500 is the only status Flow-GRPO retries.

Flow-Factory JSON dialect, at base URLs ``/compat/flow-factory/<mode>`` with ``mode`` =
``pointwise``, ``groupwise`` (the server's default diversity method), or
``groupwise-<method>`` for each diversity method whose diversity enters the rewards
(``groupwise-diversegrpo``, ``groupwise-drift``; not GARDO, which shapes advantages only,
and Flow-Factory computes its advantages from the rewards itself):
    ``GET <base>/health`` -> ``{"status": "ok"}``; ``POST <base>/compute`` JSON
    ``{"prompt": [str], "image": [base64 PNG], "video": null, "condition_images": null,
    "condition_videos": null, "kwargs": {...}}`` -> ``{"rewards": [float]}``. Pointwise:
    the quality Q of each image. Groupwise (one prompt group per request, as Flow-Factory
    sends them): the diversity-aware rewards ``R_i`` of the group (Flow-Factory computes
    advantages itself). ``kwargs`` is the trainer's own context and is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, WithJsonSchema

from divreward.methods import METHODS, embedding_methods
from divreward.safe_pickle import PickleDecodeError, UnsafePickleError, safe_dumps, safe_loads
from divreward.schema import (
    IMAGE_JSON_SCHEMA,
    ImageBytes,
    RewardGroup,
    RewardsRequest,
    ScoreRequest,
)
from divreward.services.common.api import Api
from divreward.services.common.app import error_responses
from divreward.services.common.errors import ServiceError, from_validation_error, to_service_error
from divreward.services.common.metrics import request_tenant
from divreward.services.common.wire import error_response, read_body, retry_after
from divreward.services.reward_server.serving import combine_quality

__all__ = ["FlowFactoryRequest", "compat_router"]

compat_router = APIRouter(tags=["compatibility"])

PICKLE_MEDIA_TYPE = "application/octet-stream"
_PICKLE_KEYS = ("images", "prompts", "metadata")


def _api(request: Request) -> Api:
    return request.app.state.api  # type: ignore[no-any-return]


async def _quality(
    serving: Any, images: list[bytes], prompts: list[str], scorers: Sequence[str] | None
) -> list[float]:
    """Q = sum(weight * score) per image, over the server's default weights (or the named
    scorers, weight 1 each), accumulated in weight order as /v1/rewards does."""
    weights = {name: 1.0 for name in scorers} if scorers else dict(serving.default_quality)
    resp = await serving.score(ScoreRequest(prompts=prompts, images=images, scorers=list(weights)))
    scores = {name: np.asarray(resp.scores[name], dtype=np.float64) for name in weights}
    return [float(v) for v in combine_quality(weights, scores, len(images))]


# ------------------------------------------------------------------ pickle dialect
def _pickle_reply(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        safe_dumps(payload), status_code=status, media_type=PICKLE_MEDIA_TYPE, headers=headers
    )


def _pickle_error(err: ServiceError) -> Response:
    # Flow-GRPO retries only 500 and crashes on anything else: transient errors become
    # 500 (a tenant over its quota too, with its Retry-After), a bad request keeps its 4xx
    # so the trainer stops at the real cause.
    transient = err.status >= 500 or err.status == 429
    headers = {"Retry-After": retry_after(err)} if err.retry_after_s is not None else None
    return _pickle_reply(
        {"error": f"{err.kind}: {err.message}"}, 500 if transient else err.status, headers
    )


def _check_keys(data: dict[Any, Any], keys: Sequence[str], what: str) -> None:
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise ServiceError(
            400,
            "invalid_request",
            f"unknown keys {unknown} in {what}; accepted: {list(keys)}",
            valid=list(keys),
        )


def _parse_pickle_body(data: Any, check: bool = True) -> tuple[list[bytes], list[str]]:
    """``images`` and ``prompts`` of a pickled body (``check=False``: images only)."""
    if not isinstance(data, dict):
        raise ServiceError(
            400,
            "invalid_request",
            f"the pickled body must be a dict with {list(_PICKLE_KEYS)}, got {type(data).__name__}",
        )
    _check_keys(data, _PICKLE_KEYS, "the pickled body")
    images = data.get("images")
    if not isinstance(images, list | tuple) or not images:
        raise ServiceError(
            400, "invalid_request", "images: required, a non-empty list of JPEG/PNG/WebP bytes"
        )
    for i, img in enumerate(images):
        if not isinstance(img, bytes | bytearray):
            raise ServiceError(
                400,
                "invalid_image",
                f"images[{i}]: expected encoded image bytes, got {type(img).__name__}",
                image_index=i,
            )
    if not check:
        return [bytes(b) for b in images], []
    prompts = data.get("prompts")
    if not isinstance(prompts, list | tuple) or not all(isinstance(p, str) for p in prompts):
        raise ServiceError(
            400,
            "invalid_request",
            "prompts: required, a list of str, one per image (every scorer of this server "
            "rates an image for its prompt)",
        )
    if len(prompts) != len(images):
        raise ServiceError(
            400,
            "invalid_request",
            f"prompts has {len(prompts)} entries but images has {len(images)}: give exactly "
            "one prompt per image",
        )
    return [bytes(b) for b in images], list(prompts)


_GENEVAL_KEYS = ("images", "meta_datas", "only_strict")
_GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _parse_geneval_body(data: dict[Any, Any]) -> tuple[list[bytes], list[Any], bool]:
    """Flow-GRPO's GenEval request: images, one metadata dict per image, only_strict."""
    _check_keys(data, _GENEVAL_KEYS, "the GenEval pickled body")
    images, _ = _parse_pickle_body({"images": data.get("images"), "prompts": []}, check=False)
    metas = data.get("meta_datas")
    if not isinstance(metas, list | tuple) or len(metas) != len(images):
        n = len(metas) if isinstance(metas, list | tuple) else type(metas).__name__
        raise ServiceError(
            400,
            "invalid_request",
            f"meta_datas: required, one GenEval metadata dict per image ({len(images)} "
            f"images), got {n}",
        )
    only_strict = data.get("only_strict", False)
    if not isinstance(only_strict, bool):
        raise ServiceError(400, "invalid_request", "only_strict must be a bool")
    return images, list(metas), only_strict


async def _geneval_reply(serving: Any, data: dict[Any, Any]) -> dict[str, Any]:
    images, metas, only_strict = _parse_geneval_body(data)
    parts = await serving.score_components("geneval", images, metas)
    correct = [0.0] * len(images) if only_strict else [float(v) for v in parts["geneval"]]
    strict = [float(v) for v in parts["strict"]]
    tags = [m.get("tag") if isinstance(m, dict) else None for m in metas]

    def per_tag(values: list[float]) -> dict[str, list[float]]:
        return {k: [v if t == k else -10.0 for v, t in zip(values, tags, strict=True)]
                for k in _GENEVAL_TAGS}  # fmt: skip

    return {
        "scores": [float(v) for v in parts["reward"]],
        "rewards": correct,
        "strict_rewards": strict,
        "group_rewards": per_tag(correct),
        "group_strict_rewards": per_tag(strict),
    }


async def _pickle_dialect(request: Request) -> Response:
    api = _api(request)
    route = "compat:pickle"
    try:
        body = await read_body(request, api.limits.max_request_bytes)
        data = safe_loads(body, what="request body")
        if isinstance(data, dict) and "meta_datas" in data:
            reply = await _geneval_reply(request.app.state.serving, data)
            api.metrics.count(route, 200, tenant=request_tenant(request))
            return _pickle_reply(reply)
        images, prompts = _parse_pickle_body(data)
        param = request.query_params.get("scorers")
        scorers = [s for s in param.split(",") if s] if param else None
        scores = await _quality(request.app.state.serving, images, prompts, scorers)
    except UnsafePickleError as exc:
        api.metrics.count(route, 400, kind="invalid_request", tenant=request_tenant(request))
        return _pickle_error(ServiceError(400, "invalid_request", f"refused: {exc}"))
    except PickleDecodeError as exc:
        api.metrics.count(route, 400, kind="invalid_request", tenant=request_tenant(request))
        return _pickle_error(ServiceError(400, "invalid_request", str(exc)))
    except Exception as exc:
        err = to_service_error(exc)
        api.metrics.count(route, err.status, kind=err.kind, tenant=request_tenant(request))
        return _pickle_error(err)
    api.metrics.count(route, 200, tenant=request_tenant(request))
    return _pickle_reply({"scores": scores, "outputs": scores})


#: OpenAPI of the pickle routes: they read their body themselves (a pickle, not JSON).
_PICKLE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            PICKLE_MEDIA_TYPE: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "pickle.dumps({'images': [PNG/JPEG bytes], 'prompts': "
                    "[str], 'metadata': {...}}); only plain data is unpickled.",
                }
            }
        },
    },
    "parameters": [
        {
            "name": "scorers",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "Comma-separated scorers (weight 1 each); default: the server's Q.",
        }
    ],
}
_PICKLE_REPLY = {"content": {PICKLE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
_PICKLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "pickle.dumps({'scores': [...], 'outputs': [...]})", **_PICKLE_REPLY},
    400: {"description": "A bad request: pickle.dumps({'error': str}).", **_PICKLE_REPLY},
    413: {"description": "Too many bytes or pixels: {'error': str}.", **_PICKLE_REPLY},
    500: {"description": "Transient (overload, timeout): {'error': str}.", **_PICKLE_REPLY},
    **error_responses(401, 405),
}
for _path, _summary in [
    ("/", "Pickle dialect (Flow-GRPO, ddpo-pytorch, verl-omni, deepgen): quality per image."),
    ("/compat/pickle", "Pickle dialect at an explicit path (same as POST /)."),
]:
    compat_router.add_api_route(
        _path,
        _pickle_dialect,
        methods=["POST"],
        summary=_summary,
        description=__doc__ if _path == "/" else None,
        response_class=Response,
        responses=_PICKLE_RESPONSES,
        openapi_extra=_PICKLE_DOC,
    )


# ------------------------------------------------------------------ Flow-Factory
#: pointwise, groupwise, and groupwise-<method> for every method of the method table whose
#: diversity enters the rewards (Flow-Factory makes its own advantages from them).
MODES = (
    "pointwise",
    "groupwise",
    *(f"groupwise-{m.name}" for m in embedding_methods() if m.in_rewards),
)
Mode = str


_NULL = WithJsonSchema({"type": "null", "description": "Not supported (images only): null."})


class FlowFactoryRequest(BaseModel):
    """The body Flow-Factory's RemoteRewardClient sends to ``/compute``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"required": ["prompt", "image"]}
    )

    prompt: list[str] = Field(min_length=1, description="One prompt per image.")
    # Checked by _ff_parse (with its own messages); the schema states the same.
    image: Annotated[
        list[ImageBytes] | None,
        WithJsonSchema({"type": "array", "items": IMAGE_JSON_SCHEMA, "minItems": 1}),
    ] = None
    video: Annotated[JsonValue, _NULL] = None
    condition_images: Annotated[JsonValue, _NULL] = None
    condition_videos: Annotated[JsonValue, _NULL] = None
    kwargs: dict[str, JsonValue] | None = Field(
        default=None, description="The trainer's own context; not used."
    )


class FlowFactoryResponse(BaseModel):
    rewards: list[float]


class FlowFactoryHealth(BaseModel):
    status: Literal["ok"] = "ok"


def _ff_error(err: ServiceError) -> Response:
    return error_response(err, None, binary=False)


def _check_mode(mode: str) -> Mode:
    valid = list(MODES)
    if mode not in valid:
        raise ServiceError(
            404,
            "unknown_name",
            f"unknown Flow-Factory mode {mode!r}; valid: {', '.join(valid)}",
            valid=valid,
        )
    return mode


def _ff_parse(body: bytes) -> FlowFactoryRequest:
    try:
        req = FlowFactoryRequest.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    for name in ("video", "condition_images", "condition_videos"):
        if getattr(req, name) is not None:
            raise ServiceError(
                422,
                "invalid_request",
                f"{name}: not supported by divreward (images only); send null",
            )
    if req.image is None:
        raise ServiceError(422, "invalid_request", "image: required, a list of base64 PNGs")
    if len(req.image) != len(req.prompt):
        raise ServiceError(
            422,
            "invalid_request",
            f"prompt has {len(req.prompt)} entries but image has {len(req.image)}: give one "
            "prompt per image",
        )
    return req


async def _groupwise(serving: Any, req: FlowFactoryRequest, mode: Mode) -> list[float]:
    assert req.image is not None
    for i, p in enumerate(req.prompt):
        if p != req.prompt[0]:
            raise ServiceError(
                422,
                "invalid_request",
                f"prompt[{i}] differs from prompt[0]: a groupwise request is one prompt's "
                "group (Flow-Factory sends one group per call)",
                image_index=i,
            )
    body: dict[str, Any] = {"groups": [RewardGroup(prompt=req.prompt[0], images=req.image)]}
    if mode != "groupwise":
        body["diversity"] = {"method": mode.removeprefix("groupwise-")}
    resp = await serving.rewards(RewardsRequest.model_validate(body))
    method = resp.params.diversity.method
    if not METHODS[method].in_rewards:  # the server's default: its shaping would be lost
        raise ServiceError(
            400,
            "invalid_request",
            f"the server's default diversity method {method!r} shapes advantages only, and "
            "Flow-Factory computes its advantages from the rewards: use a groupwise-<method> "
            "mode or /v1/rewards",
        )
    return list(resp.groups[0].rewards)


ModeParam = Annotated[
    str, Path(description="The reward mode.", json_schema_extra={"enum": list(MODES)})
]


@compat_router.get(
    "/compat/flow-factory/{mode}/health",
    summary="Flow-Factory health probe: {'status': 'ok'}.",
    response_model=FlowFactoryHealth,
    responses=error_responses(401, 404, 405),
)
async def flow_factory_health(mode: ModeParam) -> Response:
    try:
        _check_mode(mode)
    except ServiceError as err:
        return _ff_error(err)
    return JSONResponse({"status": "ok"})


@compat_router.post(
    "/compat/flow-factory/{mode}/compute",
    summary="Flow-Factory compute: {'rewards': [...]} (quality, or group rewards).",
    response_model=FlowFactoryResponse,
    responses=error_responses(400, 401, 404, 405, 413, 422, 503, 504),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": FlowFactoryRequest.model_json_schema()}},
        }
    },
)
async def flow_factory_compute(mode: ModeParam, request: Request) -> Response:
    api = _api(request)
    # an unknown mode is not a label value (the metrics' labels stay a bounded set)
    route = f"compat:flow-factory:{mode}" if mode in MODES else "compat:flow-factory"
    try:
        m = _check_mode(mode)
        req = _ff_parse(await read_body(request, api.limits.max_request_bytes))
        serving = request.app.state.serving
        assert req.image is not None
        if m == "pointwise":
            rewards = await _quality(serving, list(req.image), list(req.prompt), None)
        else:
            rewards = await _groupwise(serving, req, m)
    except Exception as exc:
        err = to_service_error(exc)
        api.metrics.count(route, err.status, kind=err.kind, tenant=request_tenant(request))
        return _ff_error(err)
    api.metrics.count(route, 200, tenant=request_tenant(request))
    return JSONResponse({"rewards": rewards})
