"""Input checks shared by every function of the core.

Arrays arrive from trainers (numpy or torch) and from the services (decoded JSON). Each
check converts to float64 numpy and raises ``ValueError`` with a message that starts
with the argument's name (prefixed by the group, e.g. ``groups[2].embeddings``) and
says which image is wrong and why, so the services can pass it on as a 4xx as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

# Every array type the core accepts: numpy arrays, torch tensors (converted through
# ``.detach().cpu()`` without importing torch here), and nested sequences of numbers.
ArrayLike = Any


def _label(name: str, where: str | None) -> str:
    return f"{where}.{name}" if where else name


def to_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        # bfloat16 has no numpy dtype: widen it (and any other float) losslessly.
        if hasattr(x, "is_floating_point") and x.is_floating_point():
            x = x.double()
        return np.asarray(x.numpy())
    return np.asarray(x)


def plain_dict(result: Any) -> dict[str, Any]:
    """A result dataclass as JSON-friendly data: arrays become lists of Python numbers,
    numpy scalars Python scalars, in field order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        v = getattr(result, f.name)
        out[f.name] = v.tolist() if isinstance(v, np.ndarray | np.generic) else v
    return out


def _as_real(x: ArrayLike, label: str) -> np.ndarray:
    try:
        arr = to_numpy(x)
    except (TypeError, ValueError) as exc:  # ragged nested lists, unconvertible objects
        raise ValueError(f"{label}: not a numeric array ({exc})") from exc
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{label}: expected real numbers (float or int), got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _as_real_ndim(x: ArrayLike, label: str, ndim: int, layout: str) -> np.ndarray:
    """:func:`_as_real` with ``ndim`` dimensions (``layout`` says what they are)."""
    arr = _as_real(x, label)
    if arr.ndim != ndim:
        raise ValueError(
            f"{label}: expected a {ndim}-D array ({layout}), got {arr.ndim}-D "
            f"shape {tuple(arr.shape)}"
        )
    return arr


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_embeddings(
    embeddings: ArrayLike,
    name: str = "embeddings",
    *,
    where: str | None = None,
    min_rows: int = 1,
) -> np.ndarray:
    """``embeddings`` as a float64 (N, D) array with finite values and N >= ``min_rows``.

    Raises ``ValueError`` naming the argument (and the image for non-finite values).
    """
    label = _label(name, where)
    arr = _as_real_ndim(embeddings, label, 2, "N images, D dims")
    n, d = arr.shape
    if n < min_rows:
        raise ValueError(f"{label}: needs at least {min_rows} image(s), got {n}")
    if d == 0:
        raise ValueError(f"{label}: embeddings have 0 dimensions")
    finite = np.isfinite(arr)
    if not finite.all():
        row = _first_bad(~finite.all(axis=1))
        col = _first_bad(~finite[row])
        raise ValueError(
            f"{label}: image {row} has a non-finite value ({arr[row, col]}) at dim {col}"
        )
    return arr


def check_unit_normalisable(
    embeddings: np.ndarray, name: str = "embeddings", *, where: str | None = None
) -> np.ndarray:
    """Row norms of checked embeddings; raises if one is 0 (cosine would be undefined)."""
    norms = np.linalg.norm(embeddings, axis=1)
    if (norms <= 0).any():
        row = _first_bad(norms <= 0)
        raise ValueError(
            f"{_label(name, where)}: image {row} has zero norm, so its cosine distance is undefined"
        )
    return norms


def check_scores(
    values: ArrayLike,
    name: str,
    *,
    where: str | None = None,
    min_len: int = 1,
) -> np.ndarray:
    """``values`` as a float64 (N,) array of finite numbers with N >= ``min_len``."""
    label = _label(name, where)
    arr = _as_real_ndim(values, label, 1, "one value per image")
    if arr.shape[0] < min_len:
        raise ValueError(f"{label}: needs at least {min_len} value(s), got {arr.shape[0]}")
    finite = np.isfinite(arr)
    if not finite.all():
        i = _first_bad(~finite)
        raise ValueError(f"{label}: image {i} has a non-finite value ({arr[i]})")
    return arr


def check_same_length(
    a: np.ndarray, a_name: str, b: np.ndarray, b_name: str, *, where: str | None = None
) -> None:
    """Raise if ``a`` and ``b`` do not have one entry per image each."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{_label(a_name, where)}: has {a.shape[0]} values but {b_name} has "
            f"{b.shape[0]} rows; both need one entry per image"
        )


def check_groups(
    groups: Sequence[ArrayLike], name: str = "groups", *, min_rows: int = 1
) -> list[np.ndarray]:
    """A non-empty list of (n_i, D) embedding arrays with one D, each checked."""
    if isinstance(groups, np.ndarray) or hasattr(groups, "detach"):
        raise ValueError(
            f"{name}: expected a list of (n_i, D) arrays, one per prompt, got a single "
            "array; wrap it in a list for one group"
        )
    try:
        items = list(groups)
    except TypeError as exc:
        raise ValueError(f"{name}: expected a list of (n_i, D) arrays ({exc})") from exc
    if not items:
        raise ValueError(f"{name}: is empty; at least one group is needed")
    out = [
        check_embeddings(g, "embeddings", where=f"{name}[{i}]", min_rows=min_rows)
        for i, g in enumerate(items)
    ]
    dim = out[0].shape[1]
    for i, g in enumerate(out):
        if g.shape[1] != dim:
            raise ValueError(
                f"{name}[{i}]: embeddings have {g.shape[1]} dims but {name}[0] has {dim}"
            )
    return out


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def check_real(value: Any, name: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite float (>= ``minimum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {v}")
    return v
