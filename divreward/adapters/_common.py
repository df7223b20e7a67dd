"""What the adapters share: one client per adapter, scorer weights with Flow-GRPO's
score scales folded in, the quality ``Q = sum(w * s)`` of a batch, and splitting a batch
of mixed prompts into group parts that the service assembles."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import numpy as np

from divreward.client import Group, RewardClient
from divreward.images import to_canonical_batch
from divreward.schema_stream import GroupSubmissionResult

__all__ = [
    "FLOW_GRPO_SCALES",
    "LazyClient",
    "Quality",
    "ServiceRewards",
    "scaled_weights",
    "split_by_prompt",
]

#: Multipliers that turn the server's raw scores (registry defaults) into the values
#: Flow-GRPO's own reward functions return:
#: - pickscore: ``logit_scale.exp() * cos`` (~100 cos), Flow-GRPO divides by 26;
#: - clipscore: the server's default is Hessel's ``2.5 * max(cos, 0)``; Flow-GRPO uses
#:   CLIP logits / 30 = ``100 cos / 30``, i.e. 4/3 of Hessel's value (equal for cos >= 0;
#:   for cos < 0 Hessel's clamp gives 0 where Flow-GRPO's value is negative);
#: - hpsv21 (and hpsv2): the raw cosine, as Flow-GRPO;
#: - imagereward: raw, as Flow-GRPO.
#: A server configured with other options (e.g. pickscore ``scale_divisor=26``) needs
#: other multipliers: pass ``scales=`` explicitly then.
FLOW_GRPO_SCALES: dict[str, float] = {
    "pickscore": 1.0 / 26.0,
    "clipscore": (100.0 / 30.0) / 2.5,
    "hpsv2": 1.0,
    "hpsv21": 1.0,
    "imagereward": 1.0,
}


def scaled_weights(
    scorers: Mapping[str, float] | Sequence[str] | None,
    scales: Mapping[str, float] | None,
) -> dict[str, float] | None:
    """Server quality weights ``w * scale`` per scorer (Q = sum(w * scale * raw)).

    ``scorers`` None keeps the server's default weights (then ``scales`` must be None);
    a list of names means weight 1 each.
    """
    if scorers is None:
        if scales:
            raise ValueError(
                "scales need explicit scorers: name the scorers whose scores to rescale, "
                "e.g. scorers={'pickscore': 1.0}"
            )
        return None
    weights = {s: 1.0 for s in scorers} if not isinstance(scorers, Mapping) else dict(scorers)
    if not weights:
        raise ValueError("scorers: name at least one scorer")
    if scales is None:
        return weights
    missing = [s for s in weights if s not in scales]
    if missing:
        raise ValueError(
            f"scales has no entry for {missing}; known: {sorted(scales)} (pass scales= with "
            "a multiplier for every scorer)"
        )
    return {s: w * float(scales[s]) for s, w in weights.items()}


class LazyClient:
    """A :class:`RewardClient` made on first use, in the process that uses it (trainers
    build reward functions before forking data-loader or rank processes)."""

    def __init__(self, url: str, client_kwargs: Mapping[str, Any] | None) -> None:
        self.url = url
        self.kwargs = dict(client_kwargs or {})
        self._client: RewardClient | None = None
        self._lock = threading.Lock()

    def get(self) -> RewardClient:
        with self._lock:
            if self._client is None:
                self._client = RewardClient(self.url, **self.kwargs)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def split_by_prompt(
    images: Any, prompts: Sequence[str]
) -> tuple[list[np.ndarray], list[tuple[str, list[int]]]]:
    """Canonical images and, per distinct prompt (first-seen order), its indices."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of str, one per image, not a single str")
    arrays = to_canonical_batch(images)
    if len(arrays) != len(prompts):
        raise ValueError(
            f"prompts has {len(prompts)} entries but images has {len(arrays)}: give exactly "
            "one prompt per image"
        )
    order: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {type(p).__name__}")
        order.setdefault(p, []).append(i)
    return arrays, list(order.items())


class Quality(NamedTuple):
    """A batch's quality: ``total[i] = sum(weights[s] * scores[s][i])``."""

    total: np.ndarray  # (N,) float64
    scores: dict[str, np.ndarray]  # every scorer the service answered with, (N,) each
    weights: dict[str, float]  # the weights used (the caller's, or the server's defaults)


_SETTINGS = ("scorers", "scales", "group_size", "diversity", "namespace", "assembly_timeout_s")


class ServiceRewards:
    """What an adapter asks the service, with its settings: scorer weights (``scorers``
    and ``scales``, see :func:`scaled_weights`), the group mode (``group_size``,
    ``diversity``, ``namespace``, ``assembly_timeout_s``) and the client's options."""

    def __init__(
        self,
        url: str,
        *,
        scorers: Mapping[str, float] | Sequence[str] | None,
        scales: Mapping[str, float] | None,
        group_size: int | None,
        diversity: Mapping[str, Any] | None,
        namespace: str | None,
        assembly_timeout_s: float | None,
        client_kwargs: Mapping[str, Any],
    ) -> None:
        if group_size is not None and group_size < 1:
            raise ValueError(
                f"group_size must be >= 1 (or None for quality only), got {group_size}"
            )
        self.weights = scaled_weights(scorers, scales)
        self.group_size = group_size
        self.diversity = diversity
        self.assembly_timeout_s = assembly_timeout_s
        self.lazy = LazyClient(url, {**client_kwargs, "namespace": namespace})
        self._server_weights: dict[str, float] = {}  # the server's defaults, fetched once

    @classmethod
    def from_options(cls, url: str, options: dict[str, Any]) -> ServiceRewards:
        """From an adapter's keyword options: those of
        :func:`divreward.adapters.flow_grpo.reward_fn` (scorers, scales, group_size,
        diversity, namespace, assembly_timeout_s; each None when absent); the rest go to
        the client."""
        settings = {k: options.pop(k, None) for k in _SETTINGS}
        return cls(url, **settings, client_kwargs=options)

    def close(self) -> None:
        self.lazy.close()

    def quality(self, images: Any, prompts: Sequence[str]) -> Quality:
        """Each image's quality Q, summed in weight order as the service does."""
        client = self.lazy.get()
        res = client.score(images, prompts, scorers=list(self.weights) if self.weights else None)
        weights = self.weights
        if weights is None:
            if not self._server_weights:
                self._server_weights.update(client.models().defaults.quality)
            weights = self._server_weights
        scores = {name: np.asarray(v, np.float64) for name, v in res.scores.items()}
        total = np.zeros(len(prompts), np.float64)
        for name, w in weights.items():
            total += w * scores[name]
        return Quality(total, scores, dict(weights))

    def submit_part(self, prompt: str, images: Any, group_id: str) -> Future[GroupSubmissionResult]:
        """Send ``images`` as a part of the group ``group_id`` (``group_size`` images)."""
        return self.lazy.get().submit(
            Group(prompt, images, group_id=group_id, group_size=self.group_size),
            quality=self.weights,
            diversity=self.diversity,
            assembly_timeout_s=self.assembly_timeout_s,
        )

    def group_rewards(
        self, arrays: list[np.ndarray], parts: list[tuple[str, list[int]]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Submit each prompt's images as a part of its group; wait for every part.

        Returns (rewards, advantages, quality) per image, in the batch's order.
        """
        n = len(arrays)
        futures = [
            (idx, self.submit_part(prompt, [arrays[i] for i in idx], group_id=prompt))
            for prompt, idx in parts
        ]
        rewards = np.zeros(n, np.float64)
        advantages = np.zeros(n, np.float64)
        quality = np.zeros(n, np.float64)
        for idx, fut in futures:
            res = fut.result()
            rewards[idx] = res.rewards
            advantages[idx] = res.advantages
            quality[idx] = res.quality["total"]
        return rewards, advantages, quality
