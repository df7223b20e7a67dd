"""Serving layer of the reward service: the logic of /v1/score, /v1/rewards, /v1/models
and readiness over the scorer deployment handles and the diversity application, testable
without HTTP (the HTTP routes and the gRPC methods both call it).

For each group of a /v1/rewards request the images are decoded once, put in the object
store once, and sent whole to every scorer named by the quality weights and (unless the
method is 'none') to the diversity application's embedder, all concurrently. Then
``Q = sum(weight * score)`` or GDPO's sum of group-normalised scores, per request
(:func:`divreward.rewards.combine_quality`), and the core math
(DiverseGRPO or DRIFT, through :func:`divreward.rewards.group_diversity`) give the
rewards and group advantages: the same functions as the trainer's in-process rewards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import RayTaskError

from divreward.methods import METHODS
from divreward.models.base import MetadataError
from divreward.rewards import (
    combine_quality,
    group_diversity,
    resolve_advantage,
    resolve_diversity,
)
from divreward.schema import (
    DiversityRequest,
    DiversityResponse,
    EmbedRequest,
    EmbedResponse,
    MetricsRequest,
    MetricsResponse,
    ModelCard,
    ModelsResponse,
    RewardGroupResult,
    RewardParams,
    RewardsRequest,
    RewardsResponse,
    ScoreParams,
    ScoreRequest,
    ScoreResponse,
)
from divreward.services.common.decode import decode_and_put
from divreward.services.common.deployments import DiversityHandles
from divreward.services.common.errors import ServiceError
from divreward.services.common.fairqueue import FairQueue, FairScheduler, TenantShare
from divreward.services.common.limits import check_counts, check_prompt
from divreward.services.common.metrics import record_queue_wait, record_rejected
from divreward.services.common.serving import (
    Observer,
    core_error,
    floats,
    limit_blas_threads,
    no_observer,
    response_meta,
)
from divreward.services.common.tenants import Tenant, current_call, current_tenant
from divreward.services.config import RewardAppArgs
from divreward.services.model_deployments import ModelOutput

__all__ = ["RewardServing", "combine_quality"]

T = TypeVar("T")
R = TypeVar("R")


def metadata_error(
    exc: BaseException, scorer: str, group: int | None, offset: int = 0
) -> BaseException:
    """A scorer's MetadataError (raised in its replica) as a 400 naming the group (or, for
    /v1/score, the image: the call held the images from ``offset`` on); any other
    exception unchanged."""
    cause: BaseException = exc
    while isinstance(cause, RayTaskError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if not isinstance(cause, MetadataError):
        return exc
    if group is not None:
        where, image = f"groups[{group}].metadata", None
    else:
        image = None if cause.index is None else offset + cause.index
        where = "metadata" if image is None else f"metadata[{image}]"
    return ServiceError(
        400,
        "invalid_request",
        f"{where}: scorer {scorer!r}: {cause.detail}",
        group_index=group,
        image_index=image,
    )


class RewardServing:
    """The reward service's logic.

    scorers: registry name -> handle of a ScorerServer deployment
    (``await h.score.remote(images, prompts)`` -> ModelOutput); diversity: handles to
    the diversity application (its ingress and its embedder).
    """

    def __init__(
        self,
        scorers: Mapping[str, Any],
        diversity: DiversityHandles,
        args: RewardAppArgs,
        tenants: Sequence[Tenant] = (),
    ) -> None:
        self.scorers = dict(scorers)
        self.link = diversity
        self.args = args
        limit_blas_threads(args.ingress.blas_threads)
        self.limits = args.limits
        self.default_quality = args.default_quality()
        self.prompt_checks = prompt_checks(args)
        self.observe: Observer = no_observer
        # Every image of every route passes here before the models (see _admit).
        shares = {t.name: TenantShare(t.weight, t.max_queued_images) for t in tenants}
        self.queue = FairQueue(
            FairScheduler(
                inflight_capacity(args), shares, retry_after_floor_s=args.ingress.retry_after_s
            ),
            on_wait=lambda tenant, s: record_queue_wait(current_call().route, tenant, s),
            on_reject=lambda tenant: record_rejected(current_call().route, tenant),
        )

    def _bounds(self, n: int) -> list[tuple[int, int]]:
        """A group of ``n`` images as the fair queue's units: ``[lo, hi)`` slices of at
        most ``ingress.max_chunk_images`` images (the whole group when unset)."""
        size = self.args.ingress.max_chunk_images or max(n, 1)
        return [(lo, min(n, lo + size)) for lo in range(0, max(n, 1), size)]

    @contextlib.asynccontextmanager
    async def _admit(self, sizes: Sequence[int]) -> AsyncIterator[list[list[tuple[int, int, Any]]]]:
        """The fair queue's turns of a request's groups (their image counts), for the
        current call's tenant: ``async with self._admit(sizes) as turns`` admits the
        request or raises the tenant's 429; ``turns[g]`` lists group ``g``'s chunks (see
        :meth:`_bounds`) as ``(lo, hi, turn)``, for :meth:`_chunked`."""
        per_group = [self._bounds(n) for n in sizes]
        flat = [hi - lo for bounds in per_group for lo, hi in bounds]
        async with self.queue.slots(current_tenant(), flat) as slots:
            turns = iter(slots)
            yield [[(lo, hi, next(turns)) for lo, hi in bounds] for bounds in per_group]

    async def _chunked(
        self,
        images: Sequence[bytes],
        group: int | None,
        turns: Sequence[tuple[int, int, Any]],
        call: Callable[[Any, int, int], Awaitable[list[R]]],
    ) -> list[list[R]]:
        """Each chunk of a group in its own turn of the fair queue: decoded and put in
        the object store once, then ``call(ref, lo, hi)`` (the models' calls on images
        ``[lo, hi)``, one result per model), the chunks concurrently. Returns, per chunk
        in order, the results of ``call``."""

        async def one(lo: int, hi: int, turn: Any) -> list[R]:
            async with turn:  # the chunk's turn in the fair queue
                ref, _ = await self._decode_put(images[lo:hi], group, lo)
                return await call(ref, lo, hi)

        return list(await asyncio.gather(*(one(*t) for t in turns)))

    # -- helpers -----------------------------------------------------------------
    def _check_scorers(self, names: Sequence[str], field: str) -> None:
        unknown = [n for n in names if n not in self.scorers]
        if unknown:
            valid = sorted(self.scorers)
            raise ServiceError(
                400,
                "unknown_name",
                f"{field}: unknown scorer {unknown[0]!r}; this server runs: {', '.join(valid)}",
                valid=valid,
            )

    def _check_prompt_for(
        self, names: Sequence[str], prompt: str, where: str, group: int | None
    ) -> None:
        """A 422 naming the prompt when a scorer cannot score it (e.g. ocr without a quoted
        text), before anything is sent to a model: a bad prompt must not fail the batch
        it would share with other requests."""
        for name in names:
            check = self.prompt_checks.get(name)
            if check is None:
                continue
            try:
                check(prompt)
            except ValueError as exc:
                raise ServiceError(
                    422, "invalid_request", f"{where}: scorer {name!r}: {exc}", group_index=group
                ) from None

    async def _decode_put(
        self, images: Sequence[bytes], group: int | None, offset: int = 0
    ) -> tuple[Any, int]:
        """Decode a group (or its chunk from image ``offset`` on) and put its pixels in the
        object store once (in a thread)."""
        return await asyncio.to_thread(
            decode_and_put, images, group, self.limits.max_pixels_per_image, "groups", offset
        )

    async def _score(
        self,
        name: str,
        ref: Any,
        prompts: list[str],
        n: int,
        metadata: list[Any] | None = None,
        group: int | None = None,
        offset: int = 0,
    ) -> ModelOutput:
        try:
            out: ModelOutput = await self.scorers[name].score.remote(ref, prompts, metadata)
        except Exception as exc:
            raise metadata_error(exc, name, group, offset) from None
        self.observe(name, n, out.batch_images, out.model_s)
        return out

    def _diversity_app(self) -> DiversityHandles:
        """The diversity app's handles; a 400 when this reward app runs without one."""
        if not self.link.deployed:
            raise ServiceError(
                400,
                "invalid_request",
                f"this server runs no diversity application ({self.link.app_name!r}): it "
                "serves quality only; use diversity method 'none'",
                valid=["none"],
            )
        return self.link

    async def _embed(self, ref: Any, n: int) -> ModelOutput:
        out: ModelOutput = await self._diversity_app().embedder.embed.remote(ref)
        self.observe(out.card.name, n, out.batch_images, out.model_s)
        return out

    # -- /v1/score ---------------------------------------------------------------
    async def score(self, req: ScoreRequest) -> ScoreResponse:
        names = list(dict.fromkeys(req.scorers)) if req.scorers else list(self.scorers)
        self._check_scorers(names, "scorers")
        check_counts([len(req.images)], self.limits, grouped=False)
        for i, p in enumerate(req.prompts):
            check_prompt(p, f"prompts[{i}]", None, self.limits)
            self._check_prompt_for(names, p, f"prompts[{i}]", None)
        meta = list(req.metadata) if req.metadata is not None else None

        async def call(ref: Any, lo: int, hi: int) -> list[ModelOutput]:
            prompts = list(req.prompts[lo:hi])
            part = meta[lo:hi] if meta is not None else None
            return list(
                await asyncio.gather(
                    *(
                        self._score(n, ref, prompts, hi - lo, part, group=None, offset=lo)
                        for n in names
                    )
                )
            )

        async with self._admit([len(req.images)]) as turns:
            chunks = await self._chunked(req.images, None, turns[0], call)
        outs = merge_outputs(chunks)
        # a model that changed between two chunks (a rolling update) is warned of
        models, warnings = _merge_cards([[o.card for o in c] for c in chunks])
        head = response_meta(self.args, list(models.values()), req.request_id)
        head["warnings"] = head["warnings"] + warnings
        return ScoreResponse(
            **head,
            scores={n: floats(o.values) for n, o in zip(names, outs, strict=True)},
            models=models,
            params=ScoreParams(scorers=names),
        )

    async def score_components(
        self, name: str, images: Sequence[bytes], metadata: list[Any]
    ) -> dict[str, np.ndarray]:
        """Every number scorer ``name`` computes per image (its ``score_components``),
        for the dialects that return them all; 400 when the server does not run it."""
        self._check_scorers([name], "scorer")
        check_counts([len(images)], self.limits, grouped=False)
        prompts = [str(m.get("prompt", "")) if isinstance(m, dict) else "" for m in metadata]

        async def call(ref: Any, lo: int, hi: int) -> list[dict[str, np.ndarray]]:
            try:
                return [
                    await self.scorers[name].score_components.remote(
                        ref, prompts[lo:hi], metadata[lo:hi]
                    )
                ]
            except Exception as exc:
                raise metadata_error(exc, name, None, lo) from None

        async with self._admit([len(images)]) as turns:
            chunks = await self._chunked(images, None, turns[0], call)
        parts = [c[0] for c in chunks]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # -- /v1/rewards -------------------------------------------------------------
    async def rewards(self, req: RewardsRequest) -> RewardsResponse:
        weights = dict(req.quality) if req.quality is not None else dict(self.default_quality)
        self._check_scorers(list(weights), "quality")
        check_counts([len(g.images) for g in req.groups], self.limits)
        for g, group in enumerate(req.groups):
            check_prompt(group.prompt, f"groups[{g}].prompt", g, self.limits)
            self._check_prompt_for(list(weights), group.prompt, f"groups[{g}].prompt", g)
        aggregation = req.aggregation or "sum"
        params = resolve_diversity(req.diversity, self.args.core, self.args.default_diversity)
        adv = resolve_advantage(req.advantage, self.args.core)
        needs_embeddings = METHODS[params.method].needs_embeddings
        if needs_embeddings:
            self._diversity_app()  # refused before any decoding if there is none

        async def one(g: int) -> tuple[RewardGroupResult, list[ModelCard]]:
            group = req.groups[g]
            n = len(group.images)

            async def call(ref: Any, lo: int, hi: int) -> list[ModelOutput]:
                # One put per chunk: every model reads the same pixels from the store.
                k = hi - lo
                prompts = [group.prompt] * k
                meta = [group.metadata] * k if group.metadata is not None else None
                calls = [self._score(name, ref, prompts, k, meta, g) for name in weights]
                if needs_embeddings:
                    calls.append(self._embed(ref, k))
                return list(await asyncio.gather(*calls))

            chunks = await self._chunked(group.images, g, turns[g], call)
            outs = merge_outputs(chunks)
            scores = {name: outs[i].values for i, name in enumerate(weights)}
            total = combine_quality(weights, scores, n, aggregation)
            emb = outs[-1].values if needs_embeddings else None
            try:
                div = await asyncio.to_thread(
                    group_diversity,
                    params,
                    emb,
                    total,
                    adv,
                    group.group_id,
                    req.return_embeddings,
                )
            except ValueError as exc:
                raise core_error(exc, g) from None
            assert div.rewards is not None and div.advantages is not None
            quality = {name: floats(s) for name, s in scores.items()}
            quality["total"] = floats(total)
            result = RewardGroupResult(
                group_id=group.group_id,
                size=n,
                quality=quality,
                # rewards/advantages are reported once, at the group's top level.
                diversity=div.model_copy(update={"rewards": None, "advantages": None}),
                rewards=div.rewards,
                advantages=div.advantages,
            )
            # every chunk's cards: a model that changed between two chunks is warned of
            return result, [o.card for c in chunks for o in c]

        async with self._admit([len(g.images) for g in req.groups]) as turns:
            results = await asyncio.gather(*(one(g) for g in range(len(req.groups))))
        models, warnings = _merge_cards([cards for _, cards in results])
        meta = response_meta(self.args, list(models.values()), req.request_id)
        meta["warnings"] = meta["warnings"] + warnings
        return RewardsResponse(
            **meta,
            groups=[r for r, _ in results],
            models=models,
            params=RewardParams(
                quality=weights, diversity=params, advantage=adv, aggregation=aggregation
            ),
        )

    # -- delegated to the diversity application ----------------------------------
    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        return _raise_errors(await self._diversity_app().ingress.embed.remote(req))

    async def diversity(self, req: DiversityRequest) -> DiversityResponse:
        return _raise_errors(await self._diversity_app().ingress.diversity.remote(req))

    async def metrics(self, req: MetricsRequest) -> MetricsResponse:
        return _raise_errors(await self._diversity_app().ingress.metrics.remote(req))

    # -- /v1/models, readiness ---------------------------------------------------
    async def models(self) -> ModelsResponse:
        names = list(self.scorers)
        cards = await asyncio.gather(*(self.scorers[n].info.remote() for n in names))
        embedder = await self.link.embedder.info.remote() if self.link.deployed else None
        # The largest input any model looks at: clients downsize images to it.
        sides = await asyncio.gather(
            *(self.scorers[n].max_resolution.remote() for n in names),
            *([self.link.embedder.max_resolution.remote()] if self.link.deployed else []),
        )
        return ModelsResponse(
            **response_meta(self.args, [*cards, *([embedder] if embedder else [])], None),
            scorers=dict(zip(names, cards, strict=True)),
            embedder=embedder,
            defaults=RewardParams(
                quality=self.default_quality,
                diversity=resolve_diversity(None, self.args.core, self.args.default_diversity),
                advantage=self.args.core.advantage,
            ),
            limits={**self.args.limits.model_dump(), "max_resolution": max(sides)},
        )

    async def ready(self, timeout_s: float = 30.0) -> dict[str, str]:
        """Every deployment answers a real call (a tiny image through each model)."""

        async def probe(label: str, call: Callable[[], Any]) -> tuple[str, str]:
            try:
                await asyncio.wait_for(call(), timeout=timeout_s)
                return label, "ok"
            except Exception as exc:  # readiness reports any failure, it never raises
                return label, f"{type(exc).__name__}: {exc}"[:500]

        async def diversity_ready() -> dict[str, str]:
            try:
                states: dict[str, str] = await asyncio.wait_for(
                    self.link.ingress.ready.remote(), timeout=timeout_s
                )
            except Exception as exc:
                return {f"diversity:{self.link.app_name}": f"{type(exc).__name__}: {exc}"[:500]}
            return {f"diversity:{k}": v for k, v in states.items()}

        results = await asyncio.gather(
            *(probe(f"scorer:{n}", h.ready.remote) for n, h in self.scorers.items())
        )
        states = dict(results)
        if self.link.deployed:  # a quality-only reward app has nothing more to probe
            states.update(await diversity_ready())
        return states


def merge_outputs(chunks: Sequence[Sequence[ModelOutput]]) -> list[ModelOutput]:
    """Per model, its outputs for a group's chunks (in order) as one: values
    concatenated, the passes listed, the model time summed, the first chunk's card (the
    callers give every chunk's cards to :func:`_merge_cards`, which warns when a model
    changed between two chunks)."""
    if len(chunks) == 1:
        return list(chunks[0])
    merged = []
    for parts in zip(*chunks, strict=True):
        merged.append(
            ModelOutput(
                values=np.concatenate([p.values for p in parts]),
                card=parts[0].card,
                batch_images=[b for p in parts for b in p.batch_images],
                model_s=sum(p.model_s for p in parts),
            )
        )
    return merged


def inflight_capacity(args: RewardAppArgs) -> int:
    """Images one ingress replica lets through to the models at once
    (``ingress.max_inflight_images``, else derived from the scorers: enough for a batch
    computing and the next filling on every replica of the scorer with the least room,
    shared among the ingress replicas). Fairness needs the excess to wait in the ingress:
    what is past this bound queues FIFO in Serve, for everyone alike."""
    if args.ingress.max_inflight_images is not None:
        return args.ingress.max_inflight_images

    def replicas(s: Any) -> int:
        if isinstance(s.num_replicas, int):
            return int(s.num_replicas)
        return int((s.autoscaling or {}).get("max_replicas", 1))

    room = min(2 * s.batch.max_batch_images * replicas(s) for s in args.scorers.values())
    return max(1, math.ceil(room / args.ingress.num_replicas))


def prompt_checks(args: RewardAppArgs) -> dict[str, Callable[[str], None]]:
    """scorer -> its model module's ``check_prompt(prompt, options)`` bound to the
    deployment's options (registry models with ``checks_prompts``; plugins have none)."""
    import importlib

    from divreward.models.registry import REGISTRY

    checks: dict[str, Callable[[str], None]] = {}
    for name, s in args.scorers.items():
        spec = REGISTRY.get(name)
        if s.plugin is not None or spec is None or not spec.checks_prompts:
            continue
        module = importlib.import_module(f"divreward.models.{spec.module}")
        options = {**spec.defaults, **s.options}
        checks[name] = functools.partial(module.check_prompt, options=options)
    return checks


def _raise_errors(result: T | ServiceError) -> T:
    """The diversity ingress returns request errors instead of raising them."""
    if isinstance(result, ServiceError):
        raise result
    return result


def _merge_cards(
    per_group: Sequence[Sequence[ModelCard]],
) -> tuple[dict[str, ModelCard], list[str]]:
    """The models of a response (the cards of each group, or of each chunk); a warning if
    a model changed between them (a rolling update during the request: each group, or
    each chunk of one, was still handled by one version)."""
    models: dict[str, ModelCard] = {}
    warnings: list[str] = []
    for cards in per_group:
        for c in cards:
            prev = models.get(c.name)
            if prev is None:
                models[c.name] = c
            elif prev != c and not any(c.name in w for w in warnings):
                warnings.append(
                    f"model {c.name!r} changed during the request (a rolling update): images "
                    f"were scored by {prev.weights_hash or prev.revision} or "
                    f"{c.weights_hash or c.revision}, each group (or chunk of a group, with "
                    "ingress.max_chunk_images) by one of them"
                )
    return models, warnings
