"""The one schema of the divreward HTTP API (pydantic v2).

Every request and response body of the reward and diversity services is defined here;
the OpenAPI document is generated from these models, the gRPC ``.proto`` mirrors them
field by field (a test keeps the two in step), and the Python client reuses them.

Two wire forms carry the same models with the same semantics:

- JSON (``Content-Type: application/json``): an image is a base64 string of a PNG, JPEG
  or WebP file (a ``data:image/...;base64,`` prefix is accepted);
- binary (``Content-Type: application/msgpack``): the same field names in a msgpack map,
  an image is the raw file bytes (msgpack ``bin``), so nothing is base64-encoded.
  Responses come back in msgpack when the request's ``Accept`` header asks for
  ``application/msgpack``.

Algorithm parameters reuse the core's config models (:mod:`divreward.core.config`): a
request names only what it changes; everything else comes from the server's config,
whose defaults are the papers' values. Every response echoes the resolved parameters
and the models (name, source, revision, weights hash, profile) that produced it.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    WithJsonSchema,
    create_model,
    model_validator,
)

from divreward.core.aggregate import Aggregation
from divreward.core.config import AdvantageConfig
from divreward.methods import (
    METHODS,
    DiverseGRPOParams,
    DriftParams,
    GARDOParams,
    NoDiversityParams,
    embedding_methods,
    method_names,
)

__all__ = [
    "API_VERSION",
    "BINARY_MEDIA_TYPE",
    "BINARY_MEDIA_TYPES",
    "IMAGE_JSON_SCHEMA",
    "DiverseGRPOParams",
    "DiversityGroup",
    "DiversityGroupResult",
    "DiversityParams",
    "DiversityRequest",
    "DiversityResponse",
    "DriftParams",
    "EmbedRequest",
    "EmbedResponse",
    "ErrorDetail",
    "ErrorInfo",
    "ErrorKind",
    "ErrorResponse",
    "GARDOParams",
    "HealthResponse",
    "ImageBytes",
    "Metadata",
    "MetricsGroup",
    "MetricsRequest",
    "MetricsResponse",
    "ModelCard",
    "ModelsResponse",
    "NoDiversityParams",
    "ReadyResponse",
    "RewardDiversityParams",
    "RewardGroup",
    "RewardGroupResult",
    "RewardParams",
    "RewardsRequest",
    "RewardsResponse",
    "ScoreParams",
    "ScoreRequest",
    "ScoreResponse",
]

API_VERSION = "v1"
#: Content type of the binary request/response form; the others are accepted aliases.
BINARY_MEDIA_TYPE = "application/msgpack"
BINARY_MEDIA_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")

Profile = Literal["real", "tiny"]


# ----------------------------------------------------------------------------- images
def _image_from_wire(value: Any) -> bytes:
    """Accept raw bytes (binary form) or a base64 string (JSON form); return file bytes.

    The bytes are decoded as an image later, by the service, so that an undecodable
    image is reported with its group and image index (400), not as a schema error.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        text = value
        if text.startswith("data:"):
            head, sep, rest = text.partition(",")
            if not sep or not head.endswith(";base64"):
                raise ValueError("a data URL image must be 'data:<type>;base64,<data>'")
            text = rest
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"is not valid base64 ({exc})") from None
    raise ValueError(
        "an image must be a base64 string (JSON) or raw bytes (msgpack), "
        f"got {type(value).__name__}"
    )


def _image_to_wire(value: bytes, info: SerializationInfo) -> str | bytes:
    return base64.b64encode(value).decode("ascii") if info.mode_is_json() else value


#: The JSON schema of an image on the wire.
IMAGE_JSON_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "image",
    "contentEncoding": "base64",
    "minLength": 1,
    "description": "A PNG, JPEG or WebP file: base64 in JSON (a data URL prefix is "
    "accepted), raw bytes (msgpack bin) in the binary form. A file that does not decode is "
    "a 400 naming it.",
}

ImageBytes = Annotated[
    bytes,
    PlainValidator(_image_from_wire),
    PlainSerializer(_image_to_wire),
    WithJsonSchema(IMAGE_JSON_SCHEMA),
]
"""An encoded image file (PNG, JPEG or WebP). Held as the file's bytes in Python."""


def _finite_matrix(rows: list[list[float]], field: str) -> list[list[float]]:
    """Check an embedding matrix: non-empty rows of one length, all values finite."""
    if not rows:
        return rows
    dim = len(rows[0])
    if dim == 0:
        raise ValueError(f"{field}[0] is empty: an embedding needs at least one value")
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise ValueError(
                f"{field}[{i}] has {len(row)} values but {field}[0] has {dim}: "
                "all embeddings of a group must have the same length"
            )
        for j, x in enumerate(row):
            if not math.isfinite(x):
                raise ValueError(f"{field}[{i}][{j}] is {x}: embeddings must be finite")
    return rows


def _finite_vector(values: list[float], field: str) -> list[float]:
    for i, x in enumerate(values):
        if not math.isfinite(x):
            raise ValueError(f"{field}[{i}] is {x}: values must be finite")
    return values


class _Model(BaseModel):
    """Base of every API model: unknown fields are errors (a misspelt parameter must not
    be silently ignored), and instances are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------ model info
class ModelCard(_Model):
    """Which model produced a number (mirrors :class:`divreward.models.base.ModelInfo`)."""

    name: str = Field(description="Registry name, e.g. 'pickscore'.")
    kind: Literal["scorer", "embedder"]
    source: str = Field(description="Hub id or local directory the weights came from.")
    revision: str | None = Field(default=None, description="Hub commit, when known.")
    weights_hash: str | None = Field(
        default=None, description="sha256 prefix of the main weights file."
    )
    profile: Profile = Field(
        default="real", description="'tiny' = random test weights: scores are meaningless."
    )
    device: str = "cpu"
    dtype: str = "float32"
    options: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def from_info(cls, info: Any) -> ModelCard:
        """Build from a ``ModelInfo`` dataclass (or anything with its ``to_dict``)."""
        data = dict(info.to_dict() if hasattr(info, "to_dict") else info)
        data["options"] = _json_safe(data.get("options") or {})
        return cls.model_validate(data)


def _json_safe(value: Any) -> Any:
    """Model options as JSON values: tuples become lists, anything else exotic its repr
    (they are reported for provenance, never read back)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return repr(value)


class _ResponseMeta(_Model):
    """Fields every successful response carries."""

    request_id: str | None = Field(default=None, description="Echo of the request's id.")
    profile: Profile = Field(
        default="real",
        description="'tiny' when the server runs the tiny random test models.",
    )
    warnings: list[str] = Field(
        default_factory=list, description="Anything the caller must know (e.g. tiny models)."
    )


_REQUEST_ID = Field(
    default=None,
    min_length=1,
    max_length=128,
    description="Optional client id of this request. A retry with the same id and the same "
    "body gets the same answer without recomputation (per replica, recent requests).",
)


# ------------------------------------------------------------------------ parameters
# The methods' parameter models come from the method table (divreward.methods); the
# unions below are built from it, so a new method is accepted everywhere at once.
def _union(members: tuple[type[BaseModel], ...]) -> Any:
    return Annotated[Union[members], Field(discriminator="method")]  # noqa: UP007


if TYPE_CHECKING:  # built from the table at run time: to mypy, any method's params or name
    DiversityParams: TypeAlias = Any
    RewardDiversityParams: TypeAlias = Any
    MethodName: TypeAlias = str
else:
    DiversityParams = _union(tuple(m.params for m in embedding_methods()))
    """Parameters of ``/v1/diversity``: the method and any of its config fields."""

    RewardDiversityParams = _union(tuple(m.params for m in METHODS.values()))
    """Parameters of the diversity term of ``/v1/rewards``."""

    MethodName = Literal[method_names()]
    """A diversity method's name (every method of the table)."""


# --------------------------------------------------------------------------- /v1/embed
class EmbedRequest(_Model):
    images: list[ImageBytes] = Field(min_length=1)
    request_id: str | None = _REQUEST_ID


class EmbedResponse(_ResponseMeta):
    embeddings: list[list[float]] = Field(description="(N, dim) unit rows, image order.")
    dim: int
    model: ModelCard


# ----------------------------------------------------------------------- /v1/diversity
def _one_of(*names: str) -> dict[str, Any]:
    """JSON schema: exactly one of these (array) fields is given."""
    return {"oneOf": [{"required": [n], "properties": {n: {"type": "array"}}} for n in names]}


def _one_source(images: list[Any] | None, embeddings: list[list[float]] | None) -> None:
    """A group gives its images or its (finite) embeddings, not both."""
    if (images is None) == (embeddings is None):
        raise ValueError("give exactly one of 'images' or 'embeddings'")
    if embeddings is not None:
        _finite_matrix(embeddings, "embeddings")


class DiversityGroup(_Model):
    """One group: its images (embedded by the server) or its embeddings, not both."""

    model_config = ConfigDict(json_schema_extra=_one_of("images", "embeddings"))

    images: list[ImageBytes] | None = Field(default=None, min_length=1)
    embeddings: list[list[float]] | None = Field(
        default=None, min_length=1, description="(G, dim) embeddings, one row per image."
    )
    quality: list[float] | None = Field(
        default=None,
        description="Optional quality score per image; when given, the response also "
        "carries the combined rewards and group advantages.",
    )
    group_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> DiversityGroup:
        _one_source(self.images, self.embeddings)
        if self.quality is not None:
            _finite_vector(self.quality, "quality")
            n = len(self.images) if self.images is not None else len(self.embeddings or [])
            if len(self.quality) != n:
                raise ValueError(
                    f"quality has {len(self.quality)} values but the group has {n} images"
                )
        return self

    @property
    def size(self) -> int:
        return len(self.images) if self.images is not None else len(self.embeddings or [])


class DiversityRequest(_Model):
    groups: list[DiversityGroup] = Field(min_length=1)
    diversity: DiversityParams | None = Field(
        default=None,
        description="Method and the config fields to override; unset fields (or no "
        "'diversity' at all) take the server's config. The flat form "
        "{'method': 'drift', 'lam': 0.3, 'groups': ...} is accepted too.",
    )
    advantage: AdvantageConfig | None = None
    return_embeddings: bool = False
    request_id: str | None = _REQUEST_ID

    @model_validator(mode="before")
    @classmethod
    def _flat_params(cls, data: Any) -> Any:
        """Accept ``method`` and its parameters beside ``groups`` (the flat form of the
        issue, ``{"groups": [...], "method": "drift", "lam": 0.3}``) as ``diversity``."""
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        flat = {k: v for k, v in data.items() if k not in known}
        if not flat:
            return data
        if "diversity" in data:
            raise ValueError(
                f"give the method's parameters either flat or under 'diversity', not both "
                f"(flat keys: {sorted(flat)})"
            )
        out = {k: v for k, v in data.items() if k in known}
        out["diversity"] = flat
        return out


class _GroupResultBase(_Model):
    group_id: str | None = None
    size: int
    method: MethodName


def _group_result_model() -> type[_Model]:
    """One group's diversity result: the common fields, every method's own fields
    (optional: set for the method that ran), then rewards, advantages, embeddings."""
    fields: dict[str, Any] = {}
    for method in METHODS.values():
        for name, info in method.result.model_fields.items():
            if name in fields:
                raise TypeError(f"method {method.name!r}: result field {name!r} is taken")
            optional: Any = Union[info.annotation, None]  # noqa: UP007 (a runtime type, not a hint)
            fields[name] = (optional, Field(None, description=info.description))
    fields["rewards"] = (
        list[float] | None,
        Field(None, description="Combined rewards (when quality was given)."),
    )
    fields["advantages"] = (
        list[float] | None,
        Field(None, description="Group advantages (when quality was given)."),
    )
    fields["embeddings"] = (
        list[list[float]] | None,
        Field(None, description="The embeddings used (when return_embeddings was set)."),
    )
    return create_model(  # type: ignore[no-any-return, call-overload]
        "DiversityGroupResult",
        __base__=_GroupResultBase,
        __module__=__name__,
        __doc__="One group's diversity term: the fields of the method that ran.",
        **fields,
    )


if TYPE_CHECKING:  # created from the table at run time: to mypy, any model
    DiversityGroupResult: TypeAlias = Any
else:
    DiversityGroupResult = _group_result_model()


class DiversityResolvedParams(_Model):
    diversity: DiversityParams
    advantage: AdvantageConfig


class DiversityResponse(_ResponseMeta):
    groups: list[DiversityGroupResult]
    params: DiversityResolvedParams
    models: dict[str, ModelCard] = Field(
        default_factory=dict, description="The embedder, when any group sent images."
    )


# ------------------------------------------------------------------------- /v1/metrics
class MetricsGroup(_Model):
    """One group: its images (embedded by the server) or its embeddings, not both."""

    model_config = ConfigDict(json_schema_extra=_one_of("images", "embeddings"))

    images: list[ImageBytes] | None = Field(default=None, min_length=1)
    embeddings: list[list[float]] | None = Field(default=None, min_length=1)
    group_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> MetricsGroup:
        _one_source(self.images, self.embeddings)
        return self


class MetricsRequest(_Model):
    groups: list[MetricsGroup] = Field(
        min_length=1, description="The evaluated model's samples, one group per prompt."
    )
    reference: list[MetricsGroup] | None = Field(
        default=None,
        description="Reference samples (e.g. the base model's) for generalized recall.",
        json_schema_extra={"minItems": 1},
    )
    recall_k: int | None = Field(default=None, ge=1, description="k of generalized recall.")
    request_id: str | None = _REQUEST_ID


class MetricsResponse(_ResponseMeta):
    metrics: dict[str, JsonValue] = Field(
        description="The core's evaluate_groups output (diversity, Vendi, recall, ...)."
    )
    params: dict[str, JsonValue]
    models: dict[str, ModelCard] = Field(default_factory=dict)


# --------------------------------------------------------------------------- /v1/score
Metadata = dict[str, Any]
"""A prompt's metadata: a JSON object read by the scorers that need one (GenEval's
``{"tag", "include": [...], "exclude": [...]}``) and ignored by the others."""

_METADATA_DOC = (
    "The prompt's metadata, a JSON object for the scorers that need one (geneval: GenEval's "
    "{'tag', 'include': [{'class', 'count', 'color', 'position'}], 'exclude'}); other "
    "scorers ignore it. A scorer that needs metadata and gets none, or a malformed one, is "
    "a 400 naming the group."
)


class ScoreRequest(_Model):
    prompts: list[str] = Field(min_length=1, description="One prompt per image.")
    images: list[ImageBytes] = Field(min_length=1)
    scorers: list[str] | None = Field(
        default=None, min_length=1, description="Scorer names; default: all configured."
    )
    metadata: list[Metadata | None] | None = Field(
        default=None,
        description="One metadata object (or null) per image, for the scorers that need "
        "one (see RewardGroup.metadata); a 400 names the image when one is missing or bad.",
    )
    request_id: str | None = _REQUEST_ID

    @model_validator(mode="after")
    def _check(self) -> ScoreRequest:
        if len(self.prompts) != len(self.images):
            raise ValueError(
                f"prompts has {len(self.prompts)} entries but images has "
                f"{len(self.images)}: give exactly one prompt per image"
            )
        if self.metadata is not None and len(self.metadata) != len(self.images):
            raise ValueError(
                f"metadata has {len(self.metadata)} entries but images has "
                f"{len(self.images)}: give one metadata object (or null) per image"
            )
        return self


class ScoreParams(_Model):
    scorers: list[str]


class ScoreResponse(_ResponseMeta):
    scores: dict[str, list[float]] = Field(description="Scorer name -> one score per image.")
    models: dict[str, ModelCard]
    params: ScoreParams


# ------------------------------------------------------------------------- /v1/rewards
class RewardGroup(_Model):
    prompt: str = Field(description="The prompt every image of the group was made from.")
    images: list[ImageBytes] = Field(min_length=1)
    group_id: str | None = Field(default=None, max_length=256)
    metadata: Metadata | None = Field(default=None, description=_METADATA_DOC)


AGGREGATION_DOC = (
    "How the weighted scorers make Q, before the diversity method: 'sum' (default): "
    "Q = sum(weight * score); 'gdpo': each score normalised within its group first, "
    "(s - mean) / max(std, 1e-6) with the population std, then the weighted sum."
)


class RewardsRequest(_Model):
    groups: list[RewardGroup] = Field(min_length=1)
    quality: dict[str, float] | None = Field(
        default=None,
        description="Scorer name -> weight; Q = sum(weight * score). Default: the server's. "
        "Names the server does not run are a 400 listing the valid ones (/v1/models).",
        json_schema_extra={"minProperties": 1},
    )
    diversity: RewardDiversityParams | None = Field(
        default=None, description="Diversity method and parameters. Default: the server's."
    )
    advantage: AdvantageConfig | None = None
    return_embeddings: bool = False
    request_id: str | None = _REQUEST_ID
    aggregation: Aggregation | None = Field(default=None, description=AGGREGATION_DOC)

    @model_validator(mode="after")
    def _check(self) -> RewardsRequest:
        if self.quality is not None:
            if not self.quality:
                raise ValueError("quality must name at least one scorer")
            for name, w in self.quality.items():
                if not math.isfinite(w):
                    raise ValueError(f"quality[{name!r}] is {w}: weights must be finite")
        return self


class RewardGroupResult(_Model):
    group_id: str | None = None
    size: int
    quality: dict[str, list[float]] = Field(
        description="Scorer name -> scores, and 'total' = the weighted sum Q."
    )
    diversity: DiversityGroupResult
    rewards: list[float]
    advantages: list[float]


class RewardParams(_Model):
    quality: dict[str, float]
    diversity: RewardDiversityParams
    advantage: AdvantageConfig
    aggregation: Aggregation = "sum"


class RewardsResponse(_ResponseMeta):
    groups: list[RewardGroupResult]
    models: dict[str, ModelCard]
    params: RewardParams


# ------------------------------------------------------------------- /v1/models etc.
class ModelsResponse(_ResponseMeta):
    scorers: dict[str, ModelCard]
    embedder: ModelCard | None = None
    defaults: RewardParams = Field(description="The parameters a request gets by default.")
    limits: dict[str, int] = Field(description="Request limits (images, pixels, bytes).")


class HealthResponse(_Model):
    status: Literal["ok"] = "ok"


class ReadyResponse(_Model):
    status: Literal["ready", "not_ready"]
    deployments: dict[str, str] = Field(
        description="Deployment -> 'ok' or the error its real test call raised."
    )


# ----------------------------------------------------------------------------- errors
ErrorKind = Literal[
    "invalid_request",  # 422: malformed JSON/msgpack or a field
    "invalid_image",  # 400: an image that does not decode, or is too large
    "unknown_name",  # 400: unknown scorer or method
    "payload_too_large",  # 413: too many bytes or images
    "unsupported_media_type",  # 415
    "unauthorized",  # 401
    "conflict",  # 409: request_id reused with a different body
    "overloaded",  # 429/503: queue full (Retry-After set)
    "timeout",  # 504
    "internal",  # 500
]


class ErrorDetail(_Model):
    loc: list[str | int] = Field(
        default_factory=list, description="Path of the offending field, e.g. ['groups', 2]."
    )
    msg: str
    type: str | None = None


class ErrorInfo(_Model):
    kind: ErrorKind
    message: str = Field(description="What was wrong and where (field, group, image).")
    status: int
    group_index: int | None = None
    image_index: int | None = None
    valid: list[str] | None = Field(
        default=None, description="The accepted names, for unknown_name errors."
    )
    details: list[ErrorDetail] = Field(default_factory=list)
    retry_after_s: float | None = Field(
        default=None,
        description="For 429/503: seconds to wait before retrying (as the Retry-After "
        "header; also where a gRPC stream's in-band errors carry it).",
    )


class ErrorResponse(_Model):
    error: ErrorInfo
    request_id: str | None = None
