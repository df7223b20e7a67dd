"""The two model contracts: a Scorer (prompts + images -> one score per image) and an
Embedder (images -> one vector per image). Every model in the zoo implements one of them.

Images arrive in the canonical form of :mod:`divreward.images` (``(H, W, 3) uint8`` RGB
arrays); each model does its own resize/normalisation inside ``score``/``embed``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

ModelKind = Literal["scorer", "embedder"]

# Default forward-pass limits of every model: at most this many images, and at most this
# many input pixels (H*W summed over the chunk, before the model's own resize). A Serve
# model deployment replaces both with its ``user_config`` (``max_batch_images``,
# ``max_batch_pixels``) through :meth:`BatchLimits.set_batch_limits`.
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_PIXELS = 32 * 1024 * 1024
Profile = Literal["real", "tiny"]


@dataclass(frozen=True)
class ModelInfo:
    """What produced a number: reported in every service response."""

    name: str  # registry name, e.g. "pickscore"
    kind: ModelKind
    source: str  # hub id or local directory the weights came from
    revision: str | None = None  # hub commit, when known
    weights_hash: str | None = None  # sha256 prefix of the main weights file
    profile: Profile = "real"
    device: str = "cpu"
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: where from, onto which device, in which precision."""

    source: str | None = None  # hub id or local dir; None = the registry default
    weights_dir: str | None = None  # root of local weights (DIVREWARD_WEIGHTS_DIR)
    device: str = "cpu"
    dtype: str | None = None  # None = fp32 on CPU, fp16 on CUDA (bf16 where the model says)
    cache_dir: str | None = None  # hub cache / dreamsim cache override
    options: dict[str, Any] = field(default_factory=dict)  # per-model options


class BatchLimits:
    """The one batch setting of a model: its chunking reads ``max_batch`` (images per
    forward pass) and ``max_batch_pixels`` (pixels per forward pass)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_batch_pixels: int = DEFAULT_MAX_PIXELS

    def set_batch_limits(self, max_batch: int, max_batch_pixels: int) -> None:
        """Set the forward-pass limits (ValueError naming the limit if one is < 1)."""
        for key, value in (("max_batch", max_batch), ("max_batch_pixels", max_batch_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels


class MetadataError(ValueError):
    """A scorer's per-prompt metadata is missing or malformed (a 4xx for the caller);
    ``index`` is the image it belongs to, when known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        self.detail = message
        super().__init__(f"metadata[{index}]: {message}" if index is not None else message)


#: One image's metadata: a JSON object (e.g. GenEval's {"tag", "include", "exclude"}).
Metadata = Mapping[str, Any]


class Scorer(BatchLimits, ABC):
    """Quality scorer: ``score(images, prompts)[i]`` rates ``images[i]`` for ``prompts[i]``.

    A scorer that also reads per-prompt metadata (GenEval) sets ``needs_metadata`` and
    overrides :meth:`score_with_metadata`; every other scorer ignores metadata, so
    callers may always go through :meth:`score_with_metadata`.
    """

    info: ModelInfo
    #: longest image side the model looks at; clients may downsize to this before sending
    max_resolution: int = 224
    #: True when the scores depend on per-image metadata (missing metadata is an error)
    needs_metadata: bool = False
    #: a valid metadata object for the readiness probe of a scorer that needs metadata
    probe_metadata: Metadata | None = None

    def score_with_metadata(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> np.ndarray:
        """``score`` with one metadata object (or None) per image; the default ignores
        the metadata. Raises :class:`MetadataError` when the scorer needs metadata and an
        image has none, or it is malformed."""
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(
                f"metadata has {len(metadata)} entries but images has {len(images)}: give "
                "one metadata object per image"
            )
        return self.score(images, prompts)

    def score_components(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every number the scorer computes per image, by name (GenEval: its reward and
        both 0/1 decisions); the default is the score alone, under ``"score"``."""
        return {"score": self.score_with_metadata(images, prompts, metadata)}

    def check_metadata(self, metadata: Sequence[Metadata | None] | None) -> None:
        """Validate metadata before any model work (:class:`MetadataError` naming the
        image); the default accepts anything."""

    @abstractmethod
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """Return a float64 array of shape ``(len(images),)``.

        Raises ``ValueError`` if ``len(prompts) != len(images)``.
        """


class Embedder(BatchLimits, ABC):
    """Image embedder: ``embed(images)`` -> ``(N, dim)`` float32, rows unit-normalised."""

    info: ModelInfo
    dim: int
    max_resolution: int = 224

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return a float32 array of shape ``(len(images), self.dim)``."""


def check_prompts(images: Sequence[Any], prompts: Sequence[str]) -> None:
    """The one check that prompts pair with images; every scorer calls it first."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, one per image, not a single str")
    if len(prompts) != len(images):
        raise ValueError(
            f"prompts has {len(prompts)} entries but images has {len(images)}: "
            "give exactly one prompt per image"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {type(p).__name__}")
