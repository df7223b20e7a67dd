"""verl-style ``compute_score`` backed by a divreward service.

verl (and verl-omni) call ``compute_score(data_source, solution, ground_truth,
extra_info, **kwargs)`` one sample at a time, many concurrently, and accept a float or a
dict with a ``"score"`` key. For text-to-image the solution is the generated image
(PIL, array, tensor or encoded bytes) and the prompt is read from ``extra_info`` (key
``prompt_key``, default ``"prompt"``) or, failing that, from a str ``ground_truth``. The
one-line change in the trainer's config is the path of the custom reward function::

    compute_score = divreward.adapters.verl.make_compute_score("http://reward-host:8000")

With ``group_size`` (the rollout's ``n``), each sample is sent as a one-image part of
the group named by ``extra_info[group_key]`` (default ``"uid"``, verl's id of a
prompt's group); the call returns when the whole group is rewarded, with the
diversity-aware reward as ``score`` and the service's group advantage beside it. Every
sample of a group must be in flight at once (verl's async reward loop does that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from divreward.adapters._common import ServiceRewards

__all__ = ["make_async_compute_score", "make_compute_score"]

Score = dict[str, Any]


class _Scorer:
    def __init__(self, service: ServiceRewards, prompt_key: str, group_key: str) -> None:
        self.service = service
        self.prompt_key = prompt_key
        self.group_key = group_key

    def prompt(self, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> str:
        if extra_info is not None and isinstance(extra_info.get(self.prompt_key), str):
            return str(extra_info[self.prompt_key])
        if isinstance(ground_truth, str):
            return ground_truth
        raise ValueError(
            f"no prompt: extra_info[{self.prompt_key!r}] is missing and ground_truth is not "
            "a str; put the prompt in extra_info (or set prompt_key)"
        )

    def group_id(self, extra_info: Mapping[str, Any] | None) -> str:
        if extra_info is None or extra_info.get(self.group_key) is None:
            raise ValueError(
                f"group_size is set but extra_info[{self.group_key!r}] is missing: each "
                "sample must say which group it belongs to (set group_key)"
            )
        return str(extra_info[self.group_key])

    def __call__(
        self,
        data_source: Any,
        solution: Any,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Score:
        prompt = self.prompt(ground_truth, extra_info)
        images = [solution]
        if self.service.group_size is None:
            q = self.service.quality(images, [prompt])
            return {
                "score": float(q.total[0]),
                **{f"quality/{n}": float(v[0]) for n, v in q.scores.items()},
            }
        result = self.service.submit_part(prompt, images, self.group_id(extra_info)).result()
        return {
            "score": float(result.rewards[0]),
            "quality": float(result.quality["total"][0]),
            "advantage": float(result.advantages[0]),
        }


def make_compute_score(
    url: str, *, prompt_key: str = "prompt", group_key: str = "uid", **options: Any
) -> Callable[..., Score]:
    """A blocking ``compute_score(data_source, solution, ground_truth, extra_info)``
    returning ``{"score": float, ...}`` (thread-safe; verl calls it concurrently). Options
    as :func:`divreward.adapters.flow_grpo.reward_fn`'s (scorers, scales, group_size,
    diversity, namespace, assembly_timeout_s, and the client's)."""
    service = ServiceRewards.from_options(url, options)
    scorer = _Scorer(service, prompt_key, group_key)

    def compute_score(
        data_source: Any,
        solution_str: Any,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Score:
        return scorer(data_source, solution_str, ground_truth, extra_info, **kwargs)

    compute_score.close = service.close  # type: ignore[attr-defined]
    return compute_score


def make_async_compute_score(url: str, **kwargs: Any) -> Callable[..., Awaitable[Score]]:
    """The same as an ``async`` function (for verl's async reward loop): the blocking
    call runs in a worker thread, so many samples are in flight at once."""
    sync = make_compute_score(url, **kwargs)

    async def compute_score(
        data_source: Any,
        solution_str: Any,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Score:
        return await asyncio.to_thread(
            sync, data_source, solution_str, ground_truth, extra_info, **kw
        )

    compute_score.close = sync.close  # type: ignore[attr-defined]
    return compute_score
