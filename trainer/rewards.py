"""Rewards for the trainer: through the divreward service, or in-process.

Both sources have the same two methods:

- ``submit(prompt, images, group_id) -> Future[GroupRewards]``: called the moment a
  group is decoded; returns at once, so the next group is generated while this one is
  scored. The future yields the whole group's rewards and advantages, or raises
  :class:`RewardsUnavailableError`; the loop never trains on a partial group.
- ``metrics(groups) -> dict``: the diversity metrics of evaluation groups (the
  service's ``/v1/metrics``, or :func:`divreward.core.evaluate_groups`).

The diversity method and its parameters are this run's (``TrainConfig.diversity`` and
``diversity_params``), sent with every request, so one service serves every ablation.
GARDO's auxiliary scorers (``gardo.aux_scorers``) are requested with weight 0: their
scores come back per scorer and leave Q, the rewards and the advantages unchanged.

With DRIFT's reward-based selection (``subset``), a prompt's pool of ``pool_factor*G``
images is first scored for quality only; ``divreward.core.select_subset`` picks G of
them on the total quality Q, and those G are rewarded as the group (with the run's
diversity method, whose statistics are then over the trained group only).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from divreward.core.config import AdvantageConfig, CoreConfig
from divreward.core.drift import select_subset
from divreward.methods import METHODS
from divreward.rewards import (
    combine_quality,
    diversity_params,
    group_diversity,
    resolve_advantage,
    resolve_diversity,
)
from divreward.trainer.config import TrainConfig, prompt_metadata

log = logging.getLogger(__name__)

__all__ = [
    "GroupRewards",
    "InProcessRewards",
    "RewardSource",
    "RewardsUnavailableError",
    "ServiceRewards",
    "make_reward_source",
]


class RewardsUnavailableError(RuntimeError):
    """The rewards of a group could not be obtained (the run stops)."""


@dataclass
class GroupRewards:
    """One prompt's group, rewarded whole. Arrays are (G,) float64, image order.

    ``keep``: indices into the generated pool of the G images rewarded (all of them
    without a DRIFT subset). ``quality``: scorer -> scores, and 'total' (Q).
    ``bonus``: DiverseGRPO's E or DRIFT's intrinsic reward; ``k``: DiverseGRPO's
    cluster count; ``diversity``: DRIFT's d_i (Eq. 11); ``embeddings``: the
    embedder's rows when the diversity method computed them.
    """

    group_id: str
    prompt: str
    keep: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    quality: dict[str, np.ndarray]
    bonus: np.ndarray | None = None
    k: int | None = None
    diversity: np.ndarray | None = None
    embeddings: np.ndarray | None = None  # (G, D) unit rows (DreamSim), for logging
    extra: dict[str, Any] = field(default_factory=dict)


class RewardSource(Protocol):
    def submit(
        self, prompt: str, images: torch.Tensor, group_id: str, *, select: bool = True
    ) -> concurrent.futures.Future[GroupRewards]: ...

    def metrics(
        self, groups: Sequence[torch.Tensor], embeddings: Sequence[np.ndarray] | None = None
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _arr(x: Sequence[float] | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def _from_result(
    group_id: str,
    prompt: str,
    quality: dict[str, Any],
    rewards: Sequence[float],
    advantages: Sequence[float],
    div: Any,
) -> GroupRewards:
    """A group's rewards from the API's per-group diversity result (a
    DiversityGroupResult), whichever backend computed it."""
    rew = np.asarray(rewards, dtype=np.float64)
    return GroupRewards(
        group_id=group_id,
        prompt=prompt,
        keep=np.arange(len(rew)),
        rewards=rew,
        advantages=np.asarray(advantages, dtype=np.float64),
        quality={k: np.asarray(v, dtype=np.float64) for k, v in quality.items()},
        bonus=_arr(div.bonus if div.bonus is not None else div.intrinsic),
        k=div.k,
        diversity=_arr(div.diversity),
        embeddings=None if div.embeddings is None else np.asarray(div.embeddings),
    )


class _Base:
    def __init__(self, cfg: TrainConfig, max_workers: int) -> None:
        self.cfg = cfg
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="divreward-rewards"
        )

    def submit(
        self, prompt: str, images: torch.Tensor, group_id: str, *, select: bool = True
    ) -> concurrent.futures.Future[GroupRewards]:
        """images: (P, 3, H, W) float in [0, 1] (P = pool_factor * G with a subset).
        select=False rewards all P as one group (evaluation)."""
        snapshot = images.detach().float().clamp(0, 1).cpu().clone()
        return self.pool.submit(self._group, prompt, snapshot, group_id, select)

    def _group(
        self, prompt: str, images: torch.Tensor, group_id: str, select: bool
    ) -> GroupRewards:
        g = self.cfg.group_size
        keep = np.arange(images.shape[0], dtype=np.int64)
        if select and images.shape[0] != g:
            q = self._quality_total(prompt, images, group_id + "/pool")
            keep = select_subset(q, g, self.cfg.subset)
        res = self._rewards(prompt, images[torch.as_tensor(keep)], group_id)
        res.keep = keep
        return res

    # implemented by each source
    def _quality_total(self, prompt: str, images: torch.Tensor, group_id: str) -> np.ndarray:
        raise NotImplementedError

    def _rewards(self, prompt: str, images: torch.Tensor, group_id: str) -> GroupRewards:
        raise NotImplementedError

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- service


class ServiceRewards(_Base):
    """Rewards from the divreward service over HTTP or gRPC (``cfg.reward_url``)."""

    def __init__(self, cfg: TrainConfig, client: Any | None = None) -> None:
        super().__init__(cfg, max_workers=max(4, 2 * cfg.prompts_per_step))
        from divreward.client import RetryPolicy, RewardClient
        from divreward.client.tls import check_token

        token = os.environ.get(cfg.reward_token_env) if cfg.reward_token_env else None
        self.client = client or RewardClient(
            cfg.reward_url,
            timeout_s=cfg.reward_timeout_s,
            retry=RetryPolicy(max_attempts=cfg.reward_retries),
            # one token (a list, e.g. the server's DIVREWARD_API_TOKENS, is an error)
            headers={"authorization": f"Bearer {check_token(token, cfg.reward_token_env)}"}
            if token and cfg.reward_token_env
            else None,
        )

    def _call(self, prompt: str, images: torch.Tensor, group_id: str, diversity: Any) -> Any:
        from divreward.client import Group, RewardClientError

        fut: concurrent.futures.Future[Any] | None = None
        try:
            fut = self.client.submit(
                Group(prompt, images, group_id=group_id, metadata=prompt_metadata(prompt)),
                quality=self.cfg.request_quality(),
                aggregation=self.cfg.aggregation,
                diversity=diversity,
                advantage={"eps": self.cfg.advantage_eps},
                return_embeddings=METHODS[diversity["method"]].needs_embeddings,
            )
            # the client retries each attempt within reward_timeout_s; this bounds the whole
            # group even if an answer is lost (e.g. on a broken stream)
            res = fut.result(timeout=self.cfg.reward_timeout_s * self.cfg.reward_retries + 30)
        except (RewardClientError, concurrent.futures.TimeoutError) as exc:
            if fut is not None:
                fut.cancel()
            raise RewardsUnavailableError(
                f"group {group_id!r}: the reward service at {self.cfg.reward_url} did not "
                f"answer after {self.cfg.reward_retries} attempts ({type(exc).__name__}: {exc}); "
                "stopping: a partial group is never trained on. Restart the service and "
                "resume from the last checkpoint (--resume)."
            ) from exc
        if res.error is not None:
            raise RewardsUnavailableError(
                f"group {group_id!r}: the reward service refused it: {res.error.kind}: "
                f"{res.error.message}"
            )
        if len(res.rewards) != images.shape[0] or len(res.groups) != 1:
            raise RewardsUnavailableError(
                f"group {group_id!r}: {len(res.rewards)} rewards in {len(res.groups)} groups "
                f"for {images.shape[0]} images; expected one whole group"
            )
        return res

    def _quality_total(self, prompt: str, images: torch.Tensor, group_id: str) -> np.ndarray:
        res = self._call(prompt, images, group_id, {"method": "none"})
        return np.asarray(res.quality["total"], dtype=np.float64)

    def _rewards(self, prompt: str, images: torch.Tensor, group_id: str) -> GroupRewards:
        res = self._call(prompt, images, group_id, self.cfg.diversity_request())
        div = res.groups[0].result.diversity
        return _from_result(group_id, prompt, res.quality, res.rewards, res.advantages, div)

    def metrics(
        self, groups: Sequence[torch.Tensor], embeddings: Sequence[np.ndarray] | None = None
    ) -> dict[str, Any]:
        """The service's /v1/metrics (HTTP, or the Metrics RPC) on evaluation groups."""
        from divreward.client import RewardClientError

        try:
            return dict(self.client.metrics([g.float().cpu() for g in groups]).metrics)
        except RewardClientError as exc:
            raise RewardsUnavailableError(
                f"/v1/metrics at {self.cfg.reward_url}: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        super().close()
        self.client.close()


# --------------------------------------------------------------------------- in-process


class InProcessRewards(_Base):
    """The registry's scorers and embedder in this process, and the service's own reward
    functions (:mod:`divreward.rewards`: the quality combination and the method table's
    dispatch, over a default :class:`~divreward.core.CoreConfig`): the same numbers as a
    service with the default configuration, without one (a single GPU)."""

    def __init__(
        self, cfg: TrainConfig, device: str = "cpu", models: Mapping[str, Any] | None = None
    ) -> None:
        """``models``: scorer/embedder objects by name to use instead of loading the
        registry's (plugins in the same process, e.g. the collapse experiment's)."""
        super().__init__(cfg, max_workers=1)  # one model user at a time
        from divreward.models.base import LoadOptions
        from divreward.models.registry import load_model

        core = CoreConfig()
        self.diversity = resolve_diversity(
            diversity_params(cfg.diversity, cfg.diversity_params), core, cfg.diversity
        )
        self.advantage = resolve_advantage(AdvantageConfig(eps=cfg.advantage_eps), core)
        self.needs_embeddings = METHODS[cfg.diversity].needs_embeddings
        if models is not None:
            self.models: dict[str, Any] = dict(models)
            return
        names = [*cfg.request_quality()]
        if self.needs_embeddings or cfg.eval_metrics:
            names.append(cfg.inprocess_embedder)
        opts: dict[str, LoadOptions] = {}
        if cfg.inprocess_profile == "tiny":
            from divreward.models.tiny import ensure_tiny_models, tiny_load_options

            root = ensure_tiny_models(Path(cfg.tiny_models_dir), names)
            opts = {n: tiny_load_options(n, root, device=device) for n in names}
        self.models = {}
        for n in names:
            o = opts.get(n, LoadOptions(device=device))
            extra = cfg.inprocess_options.get(n, {})
            o = LoadOptions(**{**o.__dict__, "options": {**o.options, **extra}})
            self.models[n] = load_model(n, o)

    @staticmethod
    def _np_images(images: torch.Tensor) -> list[np.ndarray]:
        arr = (images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
        return list(arr)

    def _scores(self, prompt: str, images: torch.Tensor) -> dict[str, np.ndarray]:
        ims = self._np_images(images)
        prompts = [prompt] * len(ims)
        meta = prompt_metadata(prompt)
        metadata = None if meta is None else [meta] * len(ims)
        weights = self.cfg.request_quality()  # GARDO's auxiliary scorers with weight 0
        scores = {
            n: np.asarray(self.models[n].score_with_metadata(ims, prompts, metadata))
            for n in weights
        }
        scores["total"] = combine_quality(weights, scores, len(ims), self.cfg.aggregation)
        return scores

    def _quality_total(self, prompt: str, images: torch.Tensor, group_id: str) -> np.ndarray:
        return self._scores(prompt, images)["total"]

    def _rewards(self, prompt: str, images: torch.Tensor, group_id: str) -> GroupRewards:
        quality = self._scores(prompt, images)
        emb = None
        if self.needs_embeddings:
            emb = self.models[self.cfg.inprocess_embedder].embed(self._np_images(images))
        div = group_diversity(self.diversity, emb, quality["total"], self.advantage, group_id)
        out = _from_result(group_id, prompt, quality, div.rewards, div.advantages, div)
        out.embeddings = None if emb is None else np.asarray(emb, dtype=np.float64)
        return out

    def metrics(
        self, groups: Sequence[torch.Tensor], embeddings: Sequence[np.ndarray] | None = None
    ) -> dict[str, Any]:
        from divreward.core import evaluate_groups

        emb = self.models[self.cfg.inprocess_embedder]
        embs = [emb.embed(self._np_images(g.float().cpu())) for g in groups]
        return evaluate_groups(embs)


def make_reward_source(cfg: TrainConfig, device: str = "cpu") -> RewardSource:
    if cfg.reward_backend == "service":
        return ServiceRewards(cfg)
    return InProcessRewards(cfg, device=device)


def wait_all(
    futures: Sequence[concurrent.futures.Future[GroupRewards]],
    on_done: Callable[[int, GroupRewards], None] | None = None,
) -> tuple[list[GroupRewards], float]:
    """Every group's rewards (in submission order) and the seconds spent waiting.

    A failure of any group raises :class:`RewardsUnavailableError`; the step is not
    trained on.
    """
    t0 = time.perf_counter()
    out: list[GroupRewards] = []
    for i, f in enumerate(futures):
        try:
            res = f.result()
        except RewardsUnavailableError:
            for other in futures:
                other.cancel()
            raise
        except Exception as exc:
            for other in futures:
                other.cancel()
            raise RewardsUnavailableError(
                f"group {i}: rewards failed: {type(exc).__name__}: {exc}"
            ) from exc
        if on_done is not None:
            on_done(i, res)
        out.append(res)
    return out, time.perf_counter() - t0
