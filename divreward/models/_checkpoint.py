"""Strict checkpoint loading shared by the reimplemented models (HPSv3, ImageReward).

The reference packages load with ``strict=False`` (ImageReward) or pin old library
versions (HPSv3); here every key of a checkpoint must be accounted for: loaded into the
module, or named as a key the reference carries but never reads (and then only its shape
is checked). A missing key, an unexpected key or a shape mismatch is an error that names
the keys, never a silently half-initialised model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]

# An error message lists this many keys per category, then says how many more there are.
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the architecture it is loaded into."""


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_keys_and_shapes(
    expected: Mapping[str, Shape], found: Mapping[str, Shape], *, model: str, path: str
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``found`` has exactly the keys of
    ``expected`` with the same shapes. Both map checkpoint key -> shape."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(found[k])} vs model {tuple(expected[k])}"
        for k in set(expected) & set(found)
        if tuple(found[k]) != tuple(expected[k])
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    raise CheckpointMismatchError(
        f"checkpoint {path} does not match the {model} architecture: " + "; ".join(parts)
    )


def module_shapes(module: torch.nn.Module) -> dict[str, Shape]:
    """Parameter and persistent-buffer shapes of ``module`` (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}


def meta_tensors(module: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers (persistent or not) still on the meta device."""
    names = [n for n, p in module.named_parameters() if p.is_meta]
    names += [n for n, b in module.named_buffers() if b.is_meta]
    return names
