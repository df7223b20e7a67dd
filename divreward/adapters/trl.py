"""TRL-style reward function backed by a divreward service.

TRL's GRPO trainer calls each reward function as ``f(prompts, completions, **columns)``
and expects ``list[float | None]``, one per completion; for text-to-image trainers built
on that contract, the completions are the generated images (PIL images, arrays or a
``(N, 3, H, W)`` tensor). The one-line change::

    reward_funcs = [divreward.adapters.trl.reward_func("http://reward-host:8000")]

A call sees a slice of the batch, not necessarily whole groups. With ``group_size`` set
(TRL's ``num_generations``), each prompt's images are sent as parts that the service
assembles into whole groups (see :mod:`divreward.adapters.flow_grpo`, mode (b)) and the
function returns the diversity-aware rewards; without it, the quality of each image.
TRL computes its advantages from these rewards, so a method that shapes advantages only
(``gardo``) is refused: its effect would be lost.
Prompts given as chat messages (lists of ``{"role", "content"}`` dicts) are reduced to
the text of their last user message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from divreward.adapters._common import ServiceRewards, split_by_prompt
from divreward.methods import METHODS

__all__ = ["prompt_text", "reward_func"]


def prompt_text(prompt: Any, index: int) -> str:
    """The prompt as text: a str as is, a chat conversation as its last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        for message in reversed(prompt):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, Sequence):  # multimodal content parts
                    texts = [c.get("text") for c in content if isinstance(c, Mapping)]
                    joined = " ".join(t for t in texts if isinstance(t, str))
                    if joined:
                        return joined
        raise ValueError(f"prompts[{index}]: a conversation with no user text")
    raise ValueError(
        f"prompts[{index}]: expected a str or a list of chat messages, got {type(prompt).__name__}"
    )


def reward_func(
    url: str, *, name: str = "divreward", **options: Any
) -> Callable[..., list[float | None]]:
    """A TRL reward function ``f(prompts, completions, **columns) -> list[float]``.

    Options as :func:`divreward.adapters.flow_grpo.reward_fn`'s (scorers, scales,
    group_size, diversity, namespace, assembly_timeout_s, and the client's); ``name`` is
    the function's ``__name__`` (TRL logs each reward under it).
    """
    method = (options.get("diversity") or {}).get("method")
    if method in METHODS and not METHODS[method].in_rewards:
        raise ValueError(
            f"diversity: method {method!r} shapes the advantages only, and TRL computes its "
            "advantages from the rewards this function returns, so it would have no effect; "
            "use a method whose diversity enters the rewards (diversegrpo, drift)"
        )
    service = ServiceRewards.from_options(url, options)

    def f(prompts: Sequence[Any], completions: Any, **columns: Any) -> list[float | None]:
        texts = [prompt_text(p, i) for i, p in enumerate(prompts)]
        arrays, parts = split_by_prompt(completions, texts)
        if service.group_size is None:
            return [float(v) for v in service.quality(arrays, texts).total]
        rewards, _, _ = service.group_rewards(arrays, parts)
        return [float(v) for v in rewards]

    f.__name__ = name
    f.close = service.close  # type: ignore[attr-defined]
    return f
