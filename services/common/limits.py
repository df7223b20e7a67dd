"""Request limits that both serving layers check: groups and images per request."""

from __future__ import annotations

from collections.abc import Sequence

from divreward.services.common.errors import ServiceError
from divreward.services.config import LimitsArgs

__all__ = ["check_counts", "check_prompt"]


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


def check_prompt(prompt: str, where: str, group: int | None, limits: LimitsArgs) -> None:
    """422 when a prompt is longer than ``limits.max_prompt_chars``."""
    if len(prompt) > limits.max_prompt_chars:
        raise ServiceError(
            422,
            "invalid_request",
            f"{where}: the prompt has {len(prompt)} characters, more than the limit of "
            f"{limits.max_prompt_chars}",
            group_index=group,
        )
