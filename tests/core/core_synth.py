"""Synthetic embedding groups for the core tests (no models).

A mode is a random unit centre in a high dimension; its images are the centre plus
isotropic noise of norm ~``noise``, renormalised. Between random centres 1 - cos is
~1; within a mode it is ~noise^2 / 2.
"""

from __future__ import annotations

import numpy as np

DIM = 1792  # DreamSim's ensemble embedding size


def modes(
    sizes: tuple[int, ...] | list[int],
    *,
    noise: float = 0.3,
    dim: int = DIM,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum(sizes), dim) unit embeddings and their true mode labels (int64)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, sizes, axis=0)
    x += noise * rng.standard_normal(x.shape) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.repeat(np.arange(len(sizes)), sizes)


def isotropic(n: int, *, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """n structureless unit vectors (i.i.d. Gaussian directions)."""
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings define the same partition (labels up to renaming)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))
