"""Serving layer of the diversity service: the logic of /v1/embed, /v1/diversity and
/v1/metrics over an embedder deployment handle, testable without HTTP.

The math is the core's (:mod:`divreward.core`): this module only decodes, checks limits,
calls the embedder, calls the core functions (through
:mod:`divreward.services.common.diversity`, shared with the reward service) and builds
the schema's responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from divreward.core import evaluate_groups
from divreward.schema import (
    DiversityRequest,
    DiversityResolvedParams,
    DiversityResponse,
    EmbedRequest,
    EmbedResponse,
    MetricsGroup,
    MetricsRequest,
    MetricsResponse,
    ModelCard,
    ModelsResponse,
    RewardParams,
)
from divreward.services.common.decode import decode_and_put
from divreward.services.common.diversity import (
    group_diversity,
    resolve_advantage,
    resolve_diversity,
)
from divreward.services.common.errors import ServiceError
from divreward.services.common.limits import check_counts
from divreward.services.common.serving import (
    Observer,
    core_error,
    floats,
    limit_blas_threads,
    no_observer,
    response_meta,
)
from divreward.services.config import DiversityAppArgs
from divreward.services.model_deployments import ModelOutput

__all__ = ["DiversityServing"]

log = logging.getLogger("ray.serve")


class DiversityServing:
    """The diversity service's logic over an embedder deployment handle.

    embedder: a handle to an :class:`~divreward.services.model_deployments.EmbedderServer`
    deployment (``await embedder.embed.remote(images)`` -> ModelOutput).
    """

    def __init__(self, embedder: Any, args: DiversityAppArgs) -> None:
        self.embedder = embedder
        self.args = args
        self.limits = args.limits
        limit_blas_threads(args.ingress.blas_threads)
        self.observe: Observer = no_observer

    async def embed_arrays(self, images: list[np.ndarray]) -> ModelOutput:
        """Embed one group of canonical images (one call: one replica, one model)."""
        # One object-store put per group, passed by reference: several MB of pixels are
        # copied once instead of once per hop.
        ref = await asyncio.to_thread(ray.put, images)
        return await self._embed_ref(ref, len(images))

    async def _embed_ref(self, ref: Any, n: int) -> ModelOutput:
        out: ModelOutput = await self.embedder.embed.remote(ref)
        self.observe(out.card.name, n, out.batch_images, out.model_s)
        return out

    async def _embed_group(
        self, images: Sequence[bytes], group_index: int | None, field: str = "groups"
    ) -> ModelOutput:
        ref, n = await asyncio.to_thread(
            decode_and_put, images, group_index, self.limits.max_pixels_per_image, field
        )
        return await self._embed_ref(ref, n)

    # -- /v1/embed ---------------------------------------------------------------
    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        check_counts([len(req.images)], self.limits, grouped=False)
        out = await self._embed_group(req.images, None)
        return EmbedResponse(
            **response_meta(self.args, [out.card], req.request_id),
            embeddings=[floats(row) for row in out.values],
            dim=int(out.values.shape[1]),
            model=out.card,
        )

    # -- /v1/diversity -----------------------------------------------------------
    async def diversity(self, req: DiversityRequest) -> DiversityResponse:
        check_counts([g.size for g in req.groups], self.limits)
        params = resolve_diversity(req.diversity, self.args.core, self.args.default_method)
        adv = resolve_advantage(req.advantage, self.args.core)

        async def one(g: int) -> tuple[Any, ModelCard | None]:
            group = req.groups[g]
            card = None
            if group.images is not None:
                out = await self._embed_group(group.images, g)
                emb, card = out.values, out.card
            else:
                emb = np.asarray(group.embeddings, dtype=np.float64)
            quality = np.asarray(group.quality, dtype=np.float64) if group.quality else None
            try:
                result = await asyncio.to_thread(
                    group_diversity,
                    params,
                    emb,
                    quality,
                    adv,
                    group.group_id,
                    req.return_embeddings,
                )
            except ValueError as exc:
                raise core_error(exc, g) from None
            return result, card

        results = await asyncio.gather(*(one(g) for g in range(len(req.groups))))
        cards = [c for _, c in results if c is not None]
        return DiversityResponse(
            **response_meta(self.args, cards, req.request_id),
            groups=[r for r, _ in results],
            params=DiversityResolvedParams(diversity=params, advantage=adv),
            models={c.name: c for c in cards[:1]},
        )

    # -- /v1/metrics -------------------------------------------------------------
    async def _group_embeddings(
        self, groups: Sequence[MetricsGroup], field: str
    ) -> tuple[list[np.ndarray], list[ModelCard]]:
        async def one(g: int) -> tuple[np.ndarray, ModelCard | None]:
            group = groups[g]
            if group.images is not None:
                out = await self._embed_group(group.images, g, field)
                return out.values.astype(np.float64), out.card
            return np.asarray(group.embeddings, dtype=np.float64), None

        results = await asyncio.gather(*(one(g) for g in range(len(groups))))
        return [e for e, _ in results], [c for _, c in results if c is not None]

    async def metrics(self, req: MetricsRequest) -> MetricsResponse:
        sizes = [len(g.images or g.embeddings or []) for g in req.groups]
        ref_sizes = [len(g.images or g.embeddings or []) for g in req.reference or []]
        check_counts(sizes + ref_sizes, self.limits, grouped=False)
        embs, cards = await self._group_embeddings(req.groups, "groups")
        ref = None
        if req.reference is not None:
            ref, ref_cards = await self._group_embeddings(req.reference, "reference")
            cards += ref_cards
        core = self.args.core
        if req.recall_k is not None:
            core = core.model_copy(update={"recall_k": req.recall_k})
        t0 = time.perf_counter()
        try:
            metrics = await asyncio.to_thread(evaluate_groups, embs, ref, core)
        except ValueError as exc:
            raise ServiceError(422, "invalid_request", f"metrics: {exc}") from None
        log.debug("metrics over %d groups in %.3fs", len(embs), time.perf_counter() - t0)
        return MetricsResponse(
            **response_meta(self.args, cards, req.request_id),
            metrics=_json_metrics(metrics),
            params={"recall_k": core.recall_k, "embedding": cards[0].name if cards else "given"},
            models={c.name: c for c in cards[:1]},
        )

    # -- readiness ---------------------------------------------------------------
    async def ready(self) -> dict[str, str]:
        try:
            card = await self.embedder.ready.remote()
            return {f"embedder:{card.name}": "ok"}
        except Exception as exc:  # readiness reports any failure, it never raises
            return {"embedder": f"{type(exc).__name__}: {exc}"}

    async def model_card(self) -> ModelCard:
        return await self.embedder.info.remote()

    async def models(self) -> ModelsResponse:
        card = await self.model_card()
        return ModelsResponse(
            **response_meta(self.args, [card], None),
            scorers={},
            embedder=card,
            defaults=RewardParams(
                quality={},
                diversity=resolve_diversity(None, self.args.core, self.args.default_method),
                advantage=self.args.core.advantage,
            ),
            limits=self.args.limits.model_dump(),
        )


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars/arrays in the core's metrics dict as plain JSON values."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, np.ndarray):
            return conv(v.tolist())
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
        return v

    return {k: conv(v) for k, v in metrics.items()}
