"""Model deployments: one registered scorer or embedder per deployment, batched across
requests with ``@serve.batch``.

A deployment is a plain class: it loads its model once in ``__init__`` (through the
registry's real loader; the tiny profile points that loader at the tiny random twins)
and answers ``score(images, prompts)`` / ``embed(images)`` for **one whole group per
call**. The call is split into chunks no larger than a batch, the chunks of concurrent
calls are merged into forward passes bounded by image count and by pixels, and the
results are put back together in order. A group is therefore always handled by one
replica (one model version), never split across replicas.

Batch limits are retunable at run time through ``user_config`` (the keys of
:class:`~divreward.services.config.BatchArgs`), which Serve passes to ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from divreward.models._common import recording_passes
from divreward.models.base import Embedder, LoadOptions, Metadata, Scorer
from divreward.models.registry import get_spec, load_model
from divreward.schema import ModelCard
from divreward.services.common.metrics import record_batch
from divreward.services.config import BatchArgs, ModelDeploymentArgs

__all__ = [
    "Chunk",
    "EmbedderServer",
    "ModelOutput",
    "ScorerServer",
    "load_options",
    "plan_chunks",
    "readiness_image",
    "replica_threads",
]

log = logging.getLogger("ray.serve")


@dataclass
class Chunk:
    """Part of one call that fits in one batch: images (and prompts for a scorer)."""

    images: list[np.ndarray]
    prompts: list[str] | None
    cost: int  # batch slots used: max(#images, pixels / pixels-per-slot), see plan_chunks
    metadata: list[Metadata | None] | None = None  # one per image, for scorers that read it


@dataclass
class ModelOutput:
    """What a model deployment returns for one call."""

    values: np.ndarray  # scorer: float64 (N,); embedder: float32 (N, D)
    card: ModelCard  # the model that produced them
    batch_images: list[int] = field(default_factory=list)  # size of each forward pass used
    model_s: float = 0.0  # seconds spent in the model's forward passes for this call


def _chunk_cost(pixels: int, n: int, batch: BatchArgs) -> int:
    per_slot = batch.max_batch_pixels / batch.max_batch_images
    return max(n, math.ceil(pixels / per_slot))


def plan_chunks(
    images: Sequence[np.ndarray],
    prompts: Sequence[str] | None,
    batch: BatchArgs,
    metadata: Sequence[Metadata | None] | None = None,
) -> list[Chunk]:
    """Split one call into consecutive chunks that each fit in a batch.

    A chunk's cost, in batch slots, is ``max(#images, ceil(pixels / (max_batch_pixels /
    max_batch_images)))``; costs add up across the chunks of a batch, so a batch holds at
    most ``max_batch_images`` images and ``max_batch_pixels`` pixels. An image that alone
    exceeds the pixel budget gets a chunk of its own, capped at a full batch.
    """
    chunks: list[Chunk] = []
    cur: list[int] = []
    cur_pixels = 0
    limit = batch.max_batch_images

    def close() -> None:
        nonlocal cur, cur_pixels
        if cur:
            cost = min(_chunk_cost(cur_pixels, len(cur), batch), limit)
            chunks.append(
                Chunk(
                    images=[images[i] for i in cur],
                    prompts=[prompts[i] for i in cur] if prompts is not None else None,
                    cost=cost,
                    metadata=[metadata[i] for i in cur] if metadata is not None else None,
                )
            )
        cur, cur_pixels = [], 0

    for i, img in enumerate(images):
        pixels = int(img.shape[0]) * int(img.shape[1])
        if cur and _chunk_cost(cur_pixels + pixels, len(cur) + 1, batch) > limit:
            close()
        cur.append(i)
        cur_pixels += pixels
    close()
    return chunks


def _batch_cost(chunks: list[Chunk]) -> int:
    return sum(c.cost for c in chunks)


def load_options(
    name: str,
    args: ModelDeploymentArgs,
    profile: str,
    weights_dir: str | None,
    tiny_dir: Path | None,
) -> LoadOptions:
    """LoadOptions of a model deployment; the tiny profile uses the tiny directory as the
    weights directory, exactly as :func:`divreward.models.tiny.tiny_load_options` does."""
    device = args.device or ("cuda" if args.num_gpus > 0 else "cpu")
    if profile == "tiny":
        from divreward.models.tiny import tiny_load_options

        if tiny_dir is None:
            raise ValueError("profile 'tiny' needs a tiny-model directory")
        opts = tiny_load_options(name, tiny_dir, device=device)
    else:
        opts = LoadOptions(weights_dir=weights_dir, device=device)
    return replace(opts, source=args.source, dtype=args.dtype, options=dict(args.options))


def replica_threads(args: ModelDeploymentArgs) -> int:
    """torch intra-op threads of a replica: ``torch_threads``, else the CPUs it is given
    (``max(1, floor(num_cpus))``, as Ray sets a replica's ``OMP_NUM_THREADS``)."""
    if args.torch_threads is not None:
        return args.torch_threads
    return max(1, math.floor(args.num_cpus))


def warn_if_niced(what: str) -> int:
    """Log a warning when this process runs below normal priority (Ray starts its workers
    at niceness 15 unless ``RAY_worker_niceness`` says otherwise): a model replica then
    gets the CPU only when no normal-priority process wants it. Returns the niceness."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0:
        log.warning(
            "%s runs at niceness %d: any process at normal priority on this machine (a "
            "client, a trainer, a data loader) takes the CPU first. Start Ray with "
            "RAY_worker_niceness=0 in the environment (divreward serve and the divreward "
            "images do)",
            what,
            nice,
        )
    return nice


def readiness_image() -> np.ndarray:
    """A small deterministic (32, 32, 3) uint8 image for readiness calls."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)


class _ModelServer:
    """Shared by the scorer and embedder deployments."""

    kind: str
    #: /readyz asks each model for a real call. A batch of real traffic that finished
    #: (finite values, one row per image) this many seconds ago or less is that call, so
    #: a busy replica answers at once instead of queueing the probe behind its work; an
    #: idle, failing or stuck one gets a real probe.
    READY_FRESH_S = 10.0
    _last_ok: float | None = None  # time.monotonic() of the last good batch

    def __init__(
        self,
        name: str,
        args: ModelDeploymentArgs,
        profile: str = "real",
        weights_dir: str | None = None,
        tiny_dir: str | None = None,
    ) -> None:
        self.name = name
        self.batch = args.batch
        import torch

        torch.set_num_threads(replica_threads(args))
        t0 = time.perf_counter()
        self.model: Scorer | Embedder
        if args.plugin is not None:  # docs/plugins.md: loaded and checked by its import path
            from divreward.models.plugins import load_plugin

            device = args.device or ("cuda" if args.num_gpus > 0 else "cpu")
            opts = LoadOptions(
                device=device, dtype=args.dtype, source=args.source, options=dict(args.options)
            )
            entry = f"scorers.{name}" if self.kind == "scorer" else "embedder"
            self.model = load_plugin(entry, args.plugin, self.kind, opts, name=name)  # type: ignore[arg-type]
        else:
            spec = get_spec(name)
            if spec.kind != self.kind:
                raise ValueError(f"{name!r} is a {spec.kind}, not a {self.kind}")
            tiny = Path(tiny_dir) if tiny_dir else None
            opts = load_options(name, args, profile, weights_dir, tiny)
            self.model = load_model(name, opts)
        self.card = ModelCard.from_info(self.model.info)
        if self.card.profile == "tiny":
            log.warning(
                "%s %r runs TINY RANDOM WEIGHTS: its outputs are meaningless", self.kind, name
            )
        dt = time.perf_counter() - t0
        log.info(
            "loaded %s %r in %.1fs (%d torch threads): %s",
            self.kind,
            name,
            dt,
            torch.get_num_threads(),
            self.card,
        )
        warn_if_niced(f"{self.kind} {name!r}")
        self._apply_batch(self.batch)

    # -- configuration ------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config`` (BatchArgs keys)."""
        self.batch = BatchArgs.model_validate({**self.batch.model_dump(), **user_config})
        self._apply_batch(self.batch)

    def _apply_batch(self, batch: BatchArgs) -> None:
        # The model's own chunking reads the same limits, so one Serve batch is one
        # forward pass (the metric reports the passes the model actually ran).
        self.model.set_batch_limits(batch.max_batch_images, batch.max_batch_pixels)
        # @serve.batch adds these setters to the wrapped method at run time.
        self._batched.set_max_batch_size(batch.max_batch_images)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def info(self) -> ModelCard:
        return self.card

    async def max_resolution(self) -> int:
        """Longest image side the model looks at (advertised so clients can downsize)."""
        return int(self.model.max_resolution)

    # -- batching -----------------------------------------------------------------
    def _forward(
        self,
        images: list[np.ndarray],
        prompts: list[str] | None,
        metadata: list[Metadata | None] | None = None,
    ) -> np.ndarray:
        raise NotImplementedError

    def _forward_recorded(
        self,
        images: list[np.ndarray],
        prompts: list[str] | None,
        metadata: list[Metadata | None] | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """The forward of one batch and the image count of each pass the model ran (a
        model that does not chunk through ``iter_chunks`` counts as one pass)."""
        with recording_passes() as passes:
            values = self._forward(images, prompts, metadata)
        return values, passes or [len(images)]

    # Serve keeps one batch queue per decorated function per process; a Serve replica
    # is its own actor process holding one deployment instance, so the queue is that
    # replica's.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_batch_cost)
    async def _batched(self, chunks: list[Chunk]) -> list[tuple[np.ndarray, list[int], float]]:
        images = [img for c in chunks for img in c.images]
        prompts = (
            [p for c in chunks for p in (c.prompts or [])]
            if chunks[0].prompts is not None
            else None
        )
        # Per-image metadata when any call of the batch sent some (None for the others).
        metadata = (
            [m for c in chunks for m in (c.metadata or [None] * len(c.images))]
            if any(c.metadata is not None for c in chunks)
            else None
        )
        t0 = time.perf_counter()
        # The forward pass runs in a thread so the replica's event loop keeps collecting
        # the next batch meanwhile (torch releases the GIL).
        values, passes = await asyncio.to_thread(self._forward_recorded, images, prompts, metadata)
        dt = time.perf_counter() - t0
        record_batch(self.name, len(images), dt)
        if values.shape[0] != len(images):
            raise RuntimeError(
                f"{self.kind} {self.name!r} returned {values.shape[0]} rows for "
                f"{len(images)} images"
            )
        if np.isfinite(values).all():
            self._last_ok = time.monotonic()
        out: list[tuple[np.ndarray, list[int], float]] = []
        start = 0
        for c in chunks:
            n = len(c.images)
            out.append((values[start : start + n], passes, dt))
            start += n
        return out

    async def ready(self) -> ModelCard:
        """What /readyz asks: a batch that finished in the last ``READY_FRESH_S`` seconds,
        else a real call on a tiny image (``_probe``)."""
        last = self._last_ok
        if last is None or time.monotonic() - last > self.READY_FRESH_S:
            await self._probe()
        return self.card

    async def _probe(self) -> None:
        raise NotImplementedError

    async def _run(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str] | None,
        metadata: Sequence[Metadata | None] | None = None,
    ) -> ModelOutput:
        chunks = plan_chunks(images, prompts, self.batch, metadata)
        parts = await asyncio.gather(*(self._batched(c) for c in chunks))
        values = np.concatenate([p[0] for p in parts], axis=0)
        # Chunks of this call that rode in the same batch share its pass list and time.
        batches = list({id(p[1]): p for p in parts}.values())
        return ModelOutput(
            values=values,
            card=self.card,
            batch_images=[n for p in batches for n in p[1]],
            model_s=sum(p[2] for p in batches),
        )


class ScorerServer(_ModelServer):
    """A quality scorer: ``score(images, prompts)`` -> float64 (N,) in a ModelOutput."""

    kind = "scorer"

    def _forward(
        self,
        images: list[np.ndarray],
        prompts: list[str] | None,
        metadata: list[Metadata | None] | None = None,
    ) -> np.ndarray:
        assert isinstance(self.model, Scorer) and prompts is not None
        return np.asarray(self.model.score_with_metadata(images, prompts, metadata), np.float64)

    def _checked(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None,
    ) -> list[Metadata | None] | None:
        """A call's arguments checked before any model work: one prompt (and metadata
        object, when given) per image; the scorer's own metadata check (MetadataError,
        which the ingress answers with a 400 naming the group or image)."""
        assert isinstance(self.model, Scorer)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(f"{len(images)} images but {len(metadata)} metadata objects")
        meta = None if metadata is None else list(metadata)
        if self.model.needs_metadata or meta is not None:
            self.model.check_metadata(meta)
        return meta

    async def score(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> ModelOutput:
        """Scores of one call; ``metadata``: one object (or None) per image. Missing or
        malformed metadata for a scorer that needs it raises MetadataError before any
        batching (the ingress answers 400 naming the group or image)."""
        meta = self._checked(images, prompts, metadata)
        return await self._run(images, list(prompts), meta)

    async def score_components(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        metadata: Sequence[Metadata | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every number the scorer computes per image, by name (``Scorer.score_components``;
        GenEval: reward, strict, geneval), outside the batch queue, in the model's own
        chunks; for the dialects that return them all (Flow-GRPO's GenEval client)."""
        meta = self._checked(images, prompts, metadata)
        assert isinstance(self.model, Scorer)
        return await asyncio.to_thread(
            self.model.score_components, list(images), list(prompts), meta
        )

    async def _probe(self) -> None:
        assert isinstance(self.model, Scorer)
        probe = self.model.probe_metadata
        out = await self.score(
            [readiness_image()],
            # quoted text: a prompt every scorer accepts (ocr reads the text in double quotes)
            ['a readiness probe saying "ready"'],
            [probe] if self.model.needs_metadata else None,
        )
        if out.values.shape != (1,) or not np.isfinite(out.values).all():
            raise RuntimeError(f"scorer {self.name!r} returned {out.values!r} on the probe")


class EmbedderServer(_ModelServer):
    """An image embedder: ``embed(images)`` -> float32 (N, D) unit rows in a ModelOutput."""

    kind = "embedder"

    def _forward(
        self,
        images: list[np.ndarray],
        prompts: list[str] | None,
        metadata: list[Metadata | None] | None = None,
    ) -> np.ndarray:
        assert isinstance(self.model, Embedder)
        return np.asarray(self.model.embed(images), dtype=np.float32)

    async def embed(self, images: Sequence[np.ndarray]) -> ModelOutput:
        return await self._run(images, None)

    async def _probe(self) -> None:
        out = await self.embed([readiness_image()])
        if out.values.ndim != 2 or out.values.shape[0] != 1 or not np.isfinite(out.values).all():
            raise RuntimeError(f"embedder {self.name!r} returned shape {out.values.shape}")


ScorerDeployment = serve.deployment(name="scorer")(ScorerServer)
EmbedderDeployment = serve.deployment(name="embedder")(EmbedderServer)


def model_deployment_options(name: str, args: ModelDeploymentArgs) -> dict[str, Any]:
    """Serve options of a model deployment from its args (resources, scaling, batching)."""
    both = sorted({"max_batch", "max_batch_pixels"} & set(args.options))
    if both:
        raise ValueError(
            f"model {name!r}: options {both} would set the batch a second time; in a "
            "deployment set batch.max_batch_images / batch.max_batch_pixels (its user_config)"
        )
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {
            "num_cpus": args.num_cpus,
            "num_gpus": args.num_gpus,
            **({"resources": dict(args.resources)} if args.resources else {}),
        },
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "max_constructor_retry_count": args.max_constructor_retry_count,
        "user_config": args.batch.model_dump(),
    }
    if args.num_replicas == "auto":
        opts["autoscaling_config"] = args.autoscaling
    else:
        opts["num_replicas"] = args.num_replicas
    return opts
