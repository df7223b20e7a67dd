"""Building API requests from a trainer's inputs, shared by every transport.

Everything here is pure: images are converted (and optionally downsized) through
:mod:`divreward.client.encoding`, parameters are validated by the schema's own models,
so a bad argument fails in the trainer's process with the schema's message instead of
costing a round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from divreward.client.encoding import encode_images, prepare_images
from divreward.client.retry import new_request_id
from divreward.methods import METHODS
from divreward.schema import (
    AdvantageConfig,
    EmbedRequest,
    MetricsRequest,
    ModelsResponse,
    RewardGroup,
    RewardsRequest,
    ScoreRequest,
)
from divreward.schema_stream import GroupSubmission

__all__ = ["Group", "ImageOptions", "advertised_max_side"]

# a dict such as {"method": "drift", "lam": 0.3}, or a method's parameters model from
# divreward.methods.METHODS (e.g. DriftParams(lam=0.3))
DiversityArg = Mapping[str, Any] | BaseModel | None
AdvantageArg = Mapping[str, Any] | AdvantageConfig | None


@dataclass(frozen=True)
class Group:
    """A group of images generated from one prompt.

    ``images``: a torch tensor ``(G, 3, H, W)`` float in [0, 1], a numpy array
    ``(G, H, W, 3)`` uint8, or a list of PIL images / arrays / encoded bytes.
    ``group_size``: set only when ``images`` is *part* of a group of that size that the
    server should assemble (see :class:`divreward.schema_stream.GroupSubmission`).
    ``metadata``: the prompt's metadata for the scorers that need one (geneval: a GenEval
    metadata line ``{"tag", "include", "exclude"}``); other scorers ignore it.
    """

    prompt: str
    images: Any
    group_id: str | None = None
    group_size: int | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ImageOptions:
    """How images are put on the wire."""

    max_side: int | None = None  # downsize so that the shorter side is at most this
    fmt: str = "PNG"
    quality: int = 95  # JPEG/WebP only

    def encode(self, images: Any) -> list[bytes]:
        return encode_images(images, max_side=self.max_side, fmt=self.fmt, quality=self.quality)


def advertised_max_side(models: ModelsResponse) -> int | None:
    """The largest input resolution the server's models look at, if it says so.

    The server advertises it in ``GET /v1/models`` as ``limits["max_resolution"]`` (the
    maximum over its scorers and embedder).
    """
    value = models.limits.get("max_resolution")
    return int(value) if value else None


def snapshot_images(images: Any) -> list[np.ndarray]:
    """Canonical copies of ``images``, taken at once so that the trainer may reuse or
    free its buffers (GPU tensors included) while the request is still in flight."""
    return [np.array(a, copy=True) for a in prepare_images(images)]


def _params(models: tuple[type[BaseModel], ...], value: Any, name: str) -> Any:
    """A parameters argument as the schema takes it: a dict, or one of ``models``."""
    if value is None or isinstance(value, models):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    names = " or ".join(m.__name__ for m in models)
    raise TypeError(f"{name} must be a dict or a {names}, got {type(value).__name__}")


_DIVERSITY_MODELS = tuple(m.params for m in METHODS.values())


def _reward_params(
    *,
    quality: Mapping[str, float] | None = None,
    diversity: DiversityArg = None,
    advantage: AdvantageArg = None,
    return_embeddings: bool = False,
    aggregation: str | None = None,
) -> dict[str, Any]:
    """The reward parameters the caller set (the rest takes the server's defaults)."""
    body: dict[str, Any] = {}
    if quality is not None:
        body["quality"] = dict(quality)
    if aggregation is not None:
        body["aggregation"] = aggregation
    if diversity is not None:
        body["diversity"] = _params(_DIVERSITY_MODELS, diversity, "diversity")
    if advantage is not None:
        body["advantage"] = _params((AdvantageConfig,), advantage, "advantage")
    if return_embeddings:
        body["return_embeddings"] = True
    return body


def score_request(
    images: Any,
    prompts: Sequence[str],
    scorers: Sequence[str] | None,
    request_id: str,
    opts: ImageOptions,
    metadata: Sequence[Mapping[str, Any] | None] | None = None,
) -> ScoreRequest:
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, one per image, not a single str")
    body: dict[str, Any] = {
        "prompts": list(prompts),
        "images": opts.encode(images),
        "scorers": list(scorers) if scorers is not None else None,
        "request_id": request_id,
    }
    if metadata is not None:
        body["metadata"] = [None if m is None else dict(m) for m in metadata]
    return ScoreRequest.model_validate(body)


def embed_request(images: Any, request_id: str, opts: ImageOptions) -> EmbedRequest:
    return EmbedRequest(images=opts.encode(images), request_id=request_id)


def metrics_request(
    groups: Sequence[Any],
    reference: Sequence[Any] | None,
    recall_k: int | None,
    request_id: str,
    opts: ImageOptions,
) -> MetricsRequest:
    """Each group (and reference group) is its images, in any form ``encode`` takes."""
    if isinstance(groups, str | bytes) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a list of image groups, got {type(groups).__name__}")
    body: dict[str, Any] = {
        "groups": [{"images": opts.encode(g)} for g in groups],
        "request_id": request_id,
    }
    if reference is not None:
        body["reference"] = [{"images": opts.encode(g)} for g in reference]
    if recall_k is not None:
        body["recall_k"] = recall_k
    return MetricsRequest.model_validate(body)


def _as_group(group: Group | tuple[str, Any], index: int) -> Group:
    if isinstance(group, Group):
        return group
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], str):
        return Group(prompt=group[0], images=group[1])
    raise TypeError(
        f"groups[{index}] must be a Group or a (prompt, images) tuple, got {type(group).__name__}"
    )


def _group_body(g: Group, opts: ImageOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": g.prompt, "images": opts.encode(g.images)}
    if g.group_id is not None:
        body["group_id"] = g.group_id
    if g.metadata is not None:
        body["metadata"] = dict(g.metadata)
    return body


def rewards_request(
    groups: Sequence[Group | tuple[str, Any]],
    *,
    quality: Mapping[str, float] | None,
    diversity: DiversityArg,
    advantage: AdvantageArg,
    return_embeddings: bool,
    request_id: str,
    opts: ImageOptions,
    aggregation: str | None = None,
) -> RewardsRequest:
    if isinstance(groups, Group | tuple) and not isinstance(groups, list):
        groups = [groups]  # type: ignore[list-item]
    body: dict[str, Any] = {
        "groups": [
            RewardGroup.model_validate(_group_body(g, opts))
            for g in (_as_group(x, i) for i, x in enumerate(groups))
        ],
        "request_id": request_id,
        **_reward_params(
            quality=quality,
            diversity=diversity,
            advantage=advantage,
            return_embeddings=return_embeddings,
            aggregation=aggregation,
        ),
    }
    return RewardsRequest.model_validate(body)


def group_submission(
    group: Group,
    *,
    namespace: str | None,
    opts: ImageOptions,
    assembly_timeout_s: float | None = None,
    request_id: str | None = None,
    **reward_params: Any,
) -> GroupSubmission:
    """The submission of one group (or part); a fresh request id unless one is given.
    ``reward_params``: those of :meth:`RewardClient.submit` (quality, diversity,
    advantage, return_embeddings, aggregation)."""
    if group.group_id is None:
        raise ValueError("group.group_id is required for submit/stream: answers are tagged by it")
    body: dict[str, Any] = {
        **_group_body(group, opts),
        "request_id": request_id or new_request_id(),
    }
    if group.group_size is not None:
        body["group_size"] = group.group_size
    if namespace is not None:
        body["namespace"] = namespace
    body.update(_reward_params(**reward_params))
    if assembly_timeout_s is not None:
        body["assembly_timeout_s"] = assembly_timeout_s
    return GroupSubmission.model_validate(body)
