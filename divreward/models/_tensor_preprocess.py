"""Image preprocessing as batched tensor operations on the model's device (the models'
option ``preprocess: tensor``), shared by every model that offers it.

The reference preprocessing of most models resizes PIL images one at a time on the CPU
(bicubic with PIL's antialiasing filter). Here images of one size are stacked, sent to
the device as uint8 and resized together with torch's antialiased bicubic kernel (PIL's
kernel, ``a = -0.5``, the filter widened by the scale when shrinking), in PIL's two
passes, each rounded to uint8 levels as PIL stores its results. The two agree within 1
uint8 level per pixel as measured (PIL computes in fixed point); each model's tests
state and check the tolerance against its own reference. Imports torch lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PREPROCESS = ("pil", "tensor")  # "pil": the reference (default); "tensor": this module


def preprocess_mode(model: str, options: dict[str, Any]) -> str:
    """The ``preprocess`` option of ``model`` (default ``pil``), checked."""
    mode = options.get("preprocess", "pil")
    if mode not in PREPROCESS:
        raise ValueError(f"{model}: option 'preprocess' must be one of {PREPROCESS}, got {mode!r}")
    return str(mode)


def by_size(images: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``images`` grouped by ``(H, W)``, groups in order of first appearance:
    each group is one batched resize."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((int(img.shape[0]), int(img.shape[1])), []).append(i)
    return groups


def stack_on(images: Sequence[np.ndarray], idx: Sequence[int], device: str) -> torch.Tensor:
    """``images[idx]`` (same size, ``(H, W, 3) uint8``) -> ``(B, 3, H, W)`` float32 in
    0..255 on ``device`` (sent as uint8: a quarter of the bytes of float32)."""
    import torch

    x = torch.from_numpy(np.stack([images[i] for i in idx]))  # (B, H, W, 3) uint8
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()


def resize_like_pil(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bicubic resize of ``(B, 3, H, W)`` float values in 0..255 to ``size`` =
    ``(h, w)``, rounded and clamped to uint8 levels (still float32). As PIL: two
    separable passes, horizontal then vertical, each rounded to uint8 with halves up
    (PIL stores the intermediate image in the image's own mode); a pass whose side does
    not change is skipped (PIL's resize is the identity then)."""
    import torch.nn.functional as F  # noqa: N812

    h, w = int(x.shape[-2]), int(x.shape[-1])
    if w != size[1]:
        x = _round_like_pil(F.interpolate(x, size=(h, size[1]), mode="bicubic", antialias=True))
    if h != size[0]:
        x = _round_like_pil(F.interpolate(x, size=size, mode="bicubic", antialias=True))
    return x


def _round_like_pil(x: torch.Tensor) -> torch.Tensor:
    """PIL's fixed-point rounding: half up (``floor(x + 0.5)``, where torch's ``round``
    goes half to even; a 2x resize lands on exact halves), then clipped to 0..255."""
    return x.add_(0.5).floor_().clamp_(0, 255)
