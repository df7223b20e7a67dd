"""API models of group streaming and group assembly, beside the one schema.

A trainer that keeps its groups whole sends each group as one :class:`GroupSubmission`
(``group_size`` unset). A trainer that scatters a prompt's group over calls, ranks or
stream messages (Flow-GRPO, TRL, verl) sends parts: ``group_size`` set, the same
``namespace`` and ``group_id`` on every part. The server holds parts until ``group_size``
images have arrived, computes the group's rewards exactly as ``POST /v1/rewards`` would,
and answers every part with the numbers for its own images. Images beyond
``group_size`` under one ``group_id`` start the next group of that id (``sequence`` 1,
2, ...), so a prompt drawn twice in one step simply makes two groups.

These models are carried by the gRPC ``RewardStream`` / ``SubmitGroup`` RPCs and by
``POST /v1/groups``; like :mod:`divreward.schema`, the ``.proto`` mirrors them field by
field (checked by a test).
"""

from __future__ import annotations

from pydantic import Field

from divreward.core.aggregate import Aggregation
from divreward.core.config import AdvantageConfig
from divreward.schema import (
    _REQUEST_ID,
    AGGREGATION_DOC,
    ErrorInfo,
    ImageBytes,
    Metadata,
    ModelCard,
    RewardDiversityParams,
    RewardGroupResult,
    RewardParams,
    _Model,
    _ResponseMeta,
)

__all__ = ["AssembledGroup", "GroupSubmission", "GroupSubmissionResult"]


class GroupSubmission(_Model):
    """A whole group, or a part of one (``group_size`` set), tagged with its group id."""

    group_id: str = Field(
        min_length=1,
        max_length=256,
        description="The trainer's id of the group (e.g. the prompt, or 'step12/prompt3'); "
        "the answer carries it back.",
    )
    prompt: str = Field(description="The prompt the images were generated from.")
    images: list[ImageBytes] = Field(min_length=1)
    group_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Unset: 'images' is the whole group. Set: the images are part of a "
        "group of this size, assembled by the server across messages, streams and ranks "
        "that share 'namespace' and 'group_id'.",
    )
    namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Keeps the groups of different trainers/runs apart (default "
        "'default'); all parts of one group must use the same namespace.",
    )
    quality: dict[str, float] | None = Field(
        default=None,
        description="Scorer name -> weight, as in RewardsRequest.",
        json_schema_extra={"minProperties": 1},
    )
    diversity: RewardDiversityParams | None = Field(
        default=None, description="Diversity method and parameters, as in RewardsRequest."
    )
    advantage: AdvantageConfig | None = None
    return_embeddings: bool = False
    assembly_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="How long the server holds an incomplete group after its first part "
        "before failing every waiting part (default and upper bound: server settings).",
    )
    metadata: Metadata | None = Field(
        default=None,
        description="The prompt's metadata, as RewardGroup.metadata; all parts of a group "
        "must send the same.",
    )
    request_id: str | None = _REQUEST_ID
    aggregation: Aggregation | None = Field(default=None, description=AGGREGATION_DOC)


class AssembledGroup(_Model):
    """One assembled group that some images of a submission belong to."""

    sequence: int = Field(
        ge=0, description="0 for the first group assembled under this group_id, then 1, ..."
    )
    positions: list[int] = Field(description="Indices, in the submission, of its images here.")
    group_positions: list[int] = Field(
        description="Where those images sit in the group (same order as 'positions')."
    )
    result: RewardGroupResult


class GroupSubmissionResult(_ResponseMeta):
    """The answer to one :class:`GroupSubmission`: either the rewards or an error."""

    group_id: str
    rewards: list[float] = Field(
        default_factory=list, description="One reward per submitted image, in its order."
    )
    advantages: list[float] = Field(
        default_factory=list, description="One group advantage per submitted image."
    )
    quality: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Scorer name (and 'total') -> one score per submitted image.",
    )
    groups: list[AssembledGroup] = Field(
        default_factory=list, description="The whole groups the images were rewarded in."
    )
    models: dict[str, ModelCard] = Field(default_factory=dict)
    params: RewardParams | None = None
    error: ErrorInfo | None = Field(
        default=None,
        description="Set instead of the results when this submission failed (bad image, "
        "incomplete group at timeout, ...); other groups of the stream are unaffected.",
    )
