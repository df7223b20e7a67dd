"""Serving layer of the diversity service: the logic of /v1/embed, /v1/diversity and
/v1/metrics over an embedder deployment handle, testable without HTTP.

The math is the core's (:mod:`divreward.core`): this module only decodes, checks limits,
calls the embedder, calls the core functions and builds the schema's responses. The
pure helpers :func:`resolve_diversity` and :func:`group_diversity` are shared with the
reward service, so both compute a group's diversity in exactly one way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray

from divreward.core import (
    AdvantageConfig,
    CoreConfig,
    DiverseGRPOConfig,
    DRIFTConfig,
    diversegrpo_rewards,
    drift_rewards,
    evaluate_groups,
    group_advantages,
)
from divreward.models.weights import TINY_WARNING
from divreward.schema import (
    DiverseGRPOParams,
    DiversityGroupResult,
    DiversityRequest,
    DiversityResolvedParams,
    DiversityResponse,
    DriftParams,
    EmbedRequest,
    EmbedResponse,
    MetricsGroup,
    MetricsRequest,
    MetricsResponse,
    ModelCard,
    ModelsResponse,
    NoDiversityParams,
    RewardParams,
)
from divreward.services.config import DiversityAppArgs, LimitsArgs, ServiceArgs
from divreward.services.decode import decode_and_put
from divreward.services.errors import ServiceError
from divreward.services.model_deployments import ModelOutput

__all__ = [
    "DiversityServing",
    "check_counts",
    "group_diversity",
    "resolve_advantage",
    "resolve_diversity",
    "response_meta",
]

log = logging.getLogger("ray.serve")

AnyDiversity = DiverseGRPOParams | DriftParams | NoDiversityParams


# ------------------------------------------------------------------ pure helpers
def resolve_diversity(
    requested: AnyDiversity | None, core: CoreConfig, default_method: str
) -> AnyDiversity:
    """The full parameters of a request: the fields it set over the server's config.

    ``requested`` carries the pydantic ``model_fields_set`` of what the client wrote;
    every other field comes from ``core`` (whose defaults are the papers' values), not
    from the class defaults, so a server configured with beta=0.5 gives beta=0.5 to a
    request that only says ``{"method": "diversegrpo"}``.
    """
    method = requested.method if requested is not None else default_method
    explicit: dict[str, Any] = {}
    if requested is not None:
        explicit = {f: getattr(requested, f) for f in requested.model_fields_set if f != "method"}
    if method == "diversegrpo":
        base = core.diversegrpo.model_dump()
        return DiverseGRPOParams.model_validate({**base, **explicit, "method": method})
    if method == "drift":
        base = core.drift.model_dump()
        return DriftParams.model_validate({**base, **explicit, "method": method})
    return NoDiversityParams()


def resolve_advantage(requested: AdvantageConfig | None, core: CoreConfig) -> AdvantageConfig:
    if requested is None:
        return core.advantage
    explicit = {f: getattr(requested, f) for f in requested.model_fields_set}
    return AdvantageConfig.model_validate({**core.advantage.model_dump(), **explicit})


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in x]


def group_diversity(
    params: AnyDiversity,
    embeddings: np.ndarray | None,
    quality: np.ndarray | None,
    advantage: AdvantageConfig,
    group_id: str | None = None,
    return_embeddings: bool = False,
) -> DiversityGroupResult:
    """One group's diversity term through the core math.

    embeddings: (G, D) or None (method 'none'); quality: (G,) or None. Without quality
    the core still runs (on Q = 0) for the diversity values; rewards and advantages are
    then left out. Returns the schema's per-group result.
    """
    if embeddings is not None:
        size = int(embeddings.shape[0])
    elif quality is not None:
        size = len(quality)
    else:
        raise ValueError("a group needs embeddings or quality scores")
    q = quality if quality is not None else np.zeros(size, dtype=np.float64)
    emb_out = (
        [_floats(row) for row in embeddings]
        if return_embeddings and embeddings is not None
        else None
    )
    if isinstance(params, DiverseGRPOParams):
        cfg = DiverseGRPOConfig.model_validate(params.model_dump(exclude={"method"}))
        res = diversegrpo_rewards(q, embeddings, cfg, advantage)
        return DiversityGroupResult(
            group_id=group_id,
            size=size,
            method="diversegrpo",
            bonus=_floats(res.bonus),
            labels=[int(v) for v in res.labels],
            k=int(res.k),
            sigma=float(res.sigma),
            rewards=_floats(res.rewards) if quality is not None else None,
            advantages=_floats(res.advantages) if quality is not None else None,
            embeddings=emb_out,
        )
    if isinstance(params, DriftParams):
        cfg_d = DRIFTConfig.model_validate(params.model_dump(exclude={"method"}))
        res_d = drift_rewards(q, embeddings, cfg_d, advantage)
        return DiversityGroupResult(
            group_id=group_id,
            size=size,
            method="drift",
            diversity=_floats(res_d.diversity),
            intrinsic=_floats(res_d.intrinsic),
            rewards=_floats(res_d.rewards) if quality is not None else None,
            advantages=_floats(res_d.advantages) if quality is not None else None,
            embeddings=emb_out,
        )
    return DiversityGroupResult(
        group_id=group_id,
        size=size,
        method="none",
        rewards=_floats(q) if quality is not None else None,
        advantages=_floats(group_advantages(q, advantage.eps)) if quality is not None else None,
        embeddings=emb_out,
    )


def check_counts(sizes: Sequence[int], limits: LimitsArgs, grouped: bool = True) -> None:
    """413 when a request carries more groups or images than the limits allow."""
    if grouped and len(sizes) > limits.max_groups_per_request:
        raise ServiceError(
            413,
            "payload_too_large",
            f"groups: {len(sizes)} groups exceed the limit of {limits.max_groups_per_request} "
            "per request; send them in several requests",
        )
    for g, n in enumerate(sizes):
        if grouped and n > limits.max_images_per_group:
            raise ServiceError(
                413,
                "payload_too_large",
                f"groups[{g}]: {n} images exceed the limit of {limits.max_images_per_group} "
                "per group",
                group_index=g,
            )
    total = sum(sizes)
    if total > limits.max_images_per_request:
        raise ServiceError(
            413,
            "payload_too_large",
            f"{total} images exceed the limit of {limits.max_images_per_request} per request; "
            "send them in several requests",
        )


def response_meta(
    args: ServiceArgs, cards: Sequence[ModelCard], request_id: str | None
) -> dict[str, Any]:
    """request_id, profile and warnings of a response; 'tiny' whenever the server runs
    the tiny profile or any model that answered reports tiny weights."""
    tiny = args.profile == "tiny" or any(c.profile == "tiny" for c in cards)
    return {
        "request_id": request_id,
        "profile": "tiny" if tiny else "real",
        "warnings": [f"profile 'tiny': {TINY_WARNING}"] if tiny else [],
    }


def core_error(exc: ValueError, group_index: int | None) -> ServiceError:
    """A ValueError from the core math on a request's data: a 422 naming the group."""
    where = f"groups[{group_index}]: " if group_index is not None else ""
    return ServiceError(422, "invalid_request", f"{where}{exc}", group_index=group_index)


# ------------------------------------------------------------------ serving
def _no_observer(name: str, n: int, batches: list[int], seconds: float) -> None:
    return None


def limit_blas_threads(n: int | None) -> None:
    """Cap BLAS threads for this whole process (an ingress replica); None leaves them."""
    if n is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")


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
        # Called as observe(model_name, n_images, batch_sizes, model_seconds) after every
        # model call; the ingress points it at its Prometheus metrics.
        self.observe: Callable[[str, int, list[int], float], None] = _no_observer

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
            embeddings=[_floats(row) for row in out.values],
            dim=int(out.values.shape[1]),
            model=out.card,
        )

    # -- /v1/diversity -----------------------------------------------------------
    async def diversity(self, req: DiversityRequest) -> DiversityResponse:
        check_counts([g.size for g in req.groups], self.limits)
        params = resolve_diversity(req.diversity, self.args.core, self.args.default_method)
        assert not isinstance(params, NoDiversityParams)  # DiversityParams has no 'none'
        adv = resolve_advantage(req.advantage, self.args.core)

        async def one(g: int) -> tuple[DiversityGroupResult, ModelCard | None]:
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
