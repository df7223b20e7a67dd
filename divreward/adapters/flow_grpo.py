"""Flow-GRPO / ddpo-pytorch reward function backed by a divreward service.

The one-line change in a Flow-GRPO or ddpo-pytorch training script::

    reward_fn = divreward.adapters.flow_grpo.reward_fn("http://reward-host:8000")

``reward_fn(images, prompts, metadata) -> (scores, info)`` with the trainer's contract:
``images`` a torch tensor ``(N, 3, H, W)`` float in [0, 1] or a numpy ``(N, H, W, 3)``
uint8 array, ``prompts`` a list of str, ``metadata`` a list of dicts (not used);
``scores`` a float32 numpy array ``(N,)``; ``info`` a dict of per-image numpy arrays.

Two modes:

(a) quality only (``group_size=None``, default): ``scores[i]`` is the quality
    ``Q = sum(weight * scale * score)`` of image i, computed per call.
(b) group assembly (``group_size=k``): these trainers spread a prompt's group of k
    images over calls and ranks, but diversity needs whole groups. Each call sends every
    prompt's images as a *part* tagged with the prompt; the service holds parts until k
    images of that prompt have arrived (from any call, any rank using the same
    ``namespace``), rewards the whole group with the diversity method, and answers each
    part. ``scores[i]`` is then the diversity-aware reward ``R_i`` (Flow-GRPO computes
    its advantages from it as usual); ``info["advantages"]`` holds the service's own
    group advantages. With ``{"method": "gardo"}``, which shapes advantages only,
    ``scores`` is the quality Q and the shaping is in ``info["advantages"]``: the training
    script must use those (they are not std-normalised) instead of its own. The call
    blocks until its groups are complete: the trainer must submit all of a step's calls
    concurrently (Flow-GRPO does, through its executor). A group still incomplete after
    ``assembly_timeout_s`` fails with a 408 error that says how many of its k images
    arrived.

``flow_grpo_scales=True`` multiplies each scorer's raw score by Flow-GRPO's scale
(:data:`~divreward.adapters._common.FLOW_GRPO_SCALES`: PickScore / 26, CLIPScore as
CLIP logits / 30, HPSv2.1 and ImageReward raw), so scores match Flow-GRPO's own reward
functions and its hyper-parameters carry over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from divreward.adapters._common import FLOW_GRPO_SCALES, ServiceRewards, split_by_prompt

__all__ = ["FLOW_GRPO_SCALES", "reward_fn"]

RewardFn = Callable[
    [Any, Sequence[str], Sequence[Mapping[str, Any]] | None], tuple[np.ndarray, dict[str, Any]]
]


def reward_fn(
    url: str,
    *,
    scorers: Mapping[str, float] | Sequence[str] | None = None,
    flow_grpo_scales: bool = False,
    scales: Mapping[str, float] | None = None,
    group_size: int | None = None,
    diversity: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    assembly_timeout_s: float | None = None,
    **client_kwargs: Any,
) -> RewardFn:
    """A Flow-GRPO / ddpo-pytorch reward function calling the service at ``url``.

    Args:
        url: ``http://host:8000`` or ``grpc://host:9000``.
        scorers: scorer -> weight (or a list of names, weight 1 each); default: the
            server's configured weights.
        flow_grpo_scales: rescale each scorer as Flow-GRPO does (needs ``scorers``).
        scales: explicit per-scorer multipliers instead of Flow-GRPO's.
        group_size: None = mode (a), quality only; k = mode (b), groups of k images per
            prompt assembled by the service, diversity-aware rewards.
        diversity: mode (b): the method and parameters, e.g. ``{"method": "drift",
            "lam": 0.5}``; default: the server's.
        namespace: mode (b): keeps this run's groups apart from other runs on the same
            service (use the run name); every rank must use the same one.
        assembly_timeout_s: mode (b): how long the service waits for a group's other parts.
        client_kwargs: passed to :class:`divreward.client.RewardClient` (timeouts,
            retries, ``downsize``...).
    """
    if flow_grpo_scales and scales is not None:
        raise ValueError("give either flow_grpo_scales=True or scales=..., not both")
    service = ServiceRewards(
        url,
        scorers=scorers,
        scales=FLOW_GRPO_SCALES if flow_grpo_scales else scales,
        group_size=group_size,
        diversity=diversity,
        namespace=namespace,
        assembly_timeout_s=assembly_timeout_s,
        client_kwargs=client_kwargs,
    )

    def _fn(
        images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        arrays, parts = split_by_prompt(images, prompts)
        if service.group_size is None:
            q = service.quality(arrays, list(prompts))
            info = {f"quality/{k}": q.scores[k].astype(np.float32) for k in q.weights}
            return q.total.astype(np.float32), info
        rewards, advantages, quality = service.group_rewards(arrays, parts)
        info = {
            "quality": quality.astype(np.float32),
            "advantages": advantages.astype(np.float32),
        }
        return rewards.astype(np.float32), info

    _fn.close = service.close  # type: ignore[attr-defined]
    _fn.__name__ = "divreward"
    return _fn
