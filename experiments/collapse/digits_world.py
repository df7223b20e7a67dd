"""World "digits": scikit-learn's handwritten digits (``sklearn.datasets.load_digits``,
1797 8x8 images shipped inside scikit-learn, nothing downloaded), data nobody here drew.

The world
    The 10 digit classes are the modes. An image is a digit upsampled to 12x12
    (bilinear), white ink on black, placed on the 16x16 canvas (3 equal channels) shifted
    by a whole number of pixels, uniform in [-2, 2] on each axis: the one thing drawn
    here, so that centring, the within-mode quality, is spread widely in every mode.
    The 1797 digits are split once (fixed permutation, seed 0): 297 test, 750 for the
    classifier, 750 for the embedder, and the generator trains on the 1500 that are not
    test (so the classifier and the embedder each see digits the other never saw, and
    both are measured on digits none of the three saw).

Quality
    ``Q(x) = within * centring(x) + between * preferred(x)``: ``centring`` is the same
    pixel oracle as in the shapes world (:mod:`.oracles`, ink centroid vs the image
    centre, sigma = 1.5 px, background 0), which the classifier does not define;
    ``preferred = sum_m p(m | x) [m in preferred]`` (the classifier's softmax; default
    preferred digits 0 and 1) is a mild between-mode preference. There is no colour to
    read a preference from, so this part comes from the classifier; the within-mode part,
    which carries most of the range, does not. Defaults ``within = 4``, ``between = 1``,
    as in the shapes world (maximum 5, gap 1).

Auxiliary scorers, embedder, oracle policy, ideal distribution
    As in the shapes world (:mod:`.shapes_world`): two CNN regressors of (centring,
    preferred); a ModeCNN embedder trained on the embedder split; the oracle policy is
    each class's best-quality render among 256 of the test split; p* = uniform over the
    10 classes.

Measured (cached default world, ``digits-k10-s0-<hash>``; details in ``WORLDS.md``)
    Classifier 96.4% held-out accuracy, embedder 97.0%, regressors' MAE per part 0.044
    and 0.052; pre-training 137-153 s on the loaded 2-core machine. Base model (512 ODE
    samples): centring 0.50 ± 0.26, Q 2.20 ± 1.12. Oracle policy
    (:func:`digits_oracle_policy`; a class's candidates are the renders the classifier
    reads as that class, so that no "best" image owes its score to being mistaken for a
    preferred digit): best per class [5.0, 4.97, 3.95, 3.91, 3.97, 3.99, 3.99, 3.94,
    4.00, 4.00], even mixture 4.17 with coverage 10 of 10 against 5.0 for the best
    single class (ratio 0.83); data mean 2.02. GRPO collapse check (the runner,
    ``methods=[grpo]``, in-process rewards, 80 steps x G = 16, seeds 0, 1, 2): coverage
    9 -> 1, 4, 3, quality 2.43 -> 4.74, 4.26, 4.68, Vendi 5.22 -> 2.04, 2.92, 3.04;
    seeds 3 and 4: coverage 9 -> 1, 1 (5 of 5 seeds collapse; final 2.0 ± 0.6 SE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from divreward.models.base import LoadOptions
from experiments.collapse.oracles import centring
from experiments.collapse.plugins import _model_dir
from experiments.collapse.pretrain import ToySettings, load_cnn
from experiments.collapse.quality import (
    CnnWorld,
    PartsQuality,
    PartsScorer,
    RegressorScorer,
    build_regressors,
    check_options,
    regressor_scorer,
    weights_from,
)
from experiments.collapse.worlds import PluginSpec

__all__ = [
    "DEFAULT_WEIGHTS",
    "SIGMA",
    "Digits",
    "DigitsSettings",
    "digits_oracle_policy",
    "quality",
    "quality_scorer",
    "regressor_scorer_plugin",
    "render_digits",
    "splits",
]

SIGMA = 1.5
DEFAULT_WEIGHTS: dict[str, float] = {"within": 4.0, "between": 1.0}
DEFAULT_PREFERRED = (0, 1)
_NAMES = ("centring", "preferred")
_DIGIT = 12  # side of the upsampled digit
_SIZE = 16


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(_DIGIT, _DIGIT), mode="bilinear")
    return x.clamp(0, 1)[:, 0], torch.from_numpy(d.target.astype(np.int64))


def splits() -> dict[str, np.ndarray]:
    """Indices into load_digits: test 297, classifier 750, embedder 750, flow = not test."""
    n = len(_digits()[1])
    perm = np.random.default_rng(0).permutation(n)
    test, clf, emb = perm[:297], perm[297:1047], perm[1047:]
    return {"test": test, "classifier": clf, "embedder": emb, "flow": perm[297:]}


def render_digits(idx: np.ndarray, shifts: np.ndarray) -> torch.Tensor:
    """Digits ``idx`` at integer ``shifts`` (n, 2) (dy, dx) in [-2, 2]: (n, 3, 16, 16)."""
    digits, _ = _digits()
    m = (_SIZE - _DIGIT) // 2
    out = torch.zeros((len(idx), 3, _SIZE, _SIZE))
    for i, (j, (dy, dx)) in enumerate(zip(idx, shifts, strict=True)):
        y0, x0 = m + int(dy), m + int(dx)
        out[i, :, y0 : y0 + _DIGIT, x0 : x0 + _DIGIT] = digits[int(j)]
    return out


@dataclass(frozen=True)
class DigitsSettings(ToySettings):
    """The 10 classes of load_digits; ``offset``: the largest shift in px;
    ``regressor_target``: the parts the regressors are fitted to (in the cache key)."""

    k: int = 10
    offset: int = 2
    cnn_epochs: int = 12
    cnn_data: int = 8192
    regressor_target: str = f"centring(sigma={SIGMA}), p(preferred={DEFAULT_PREFERRED})"
    world = "digits"  # type: ignore[misc]

    def __post_init__(self) -> None:
        if self.k != 10:
            raise ValueError(f"digits: K is the 10 digit classes, got k={self.k}")
        if not 0 <= self.offset <= (_SIZE - _DIGIT) // 2:
            raise ValueError(f"digits: offset must be in 0..{(_SIZE - _DIGIT) // 2}")

    def sample(self, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        idx = rng.choice(splits()[split], size=n)
        shifts = rng.integers(-self.offset, self.offset + 1, size=(n, 2))
        return render_digits(idx, shifts), _digits()[1][idx]

    def mode_names(self) -> list[str]:
        return [f"digit {m}" for m in range(10)]

    def build_extra(self, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        clf = load_cnn(out / "classifier.safetensors", self.k)
        return build_regressors(self, _parts_fn(clf, DEFAULT_PREFERRED), len(_NAMES), out, log)


def _parts_fn(classifier: torch.nn.Module, preferred: tuple[int, ...]) -> Any:
    mask = torch.zeros(10, dtype=torch.float64)
    mask[list(preferred)] = 1.0

    @torch.no_grad()
    def parts(x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(classifier(x.float()), dim=1).double() @ mask
        return torch.stack([centring(x, 0.0, SIGMA), p], dim=1)

    return parts


def quality(
    classifier: torch.nn.Module,
    preferred: tuple[int, ...] = DEFAULT_PREFERRED,
    within: float = 4.0,
    between: float = 1.0,
) -> PartsQuality:
    return PartsQuality(_NAMES, (within, between), _parts_fn(classifier, preferred))


def digits_oracle_policy(
    model_dir: str | Path, n: int = 256, seed: int = 7, **weights: float
) -> dict[str, Any]:
    """:func:`~experiments.collapse.quality.oracle_policy` of this world built in
    ``model_dir`` (its classifier scores the preference and picks the candidates)."""
    world = Digits(**weights)
    world._dir = Path(model_dir)
    return world.oracle_policy(n, seed)


def _preferred(opts: LoadOptions) -> tuple[int, ...]:
    raw = opts.options.get("preferred", list(DEFAULT_PREFERRED))
    pref = (raw,) if isinstance(raw, int) else tuple(int(m) for m in raw)
    bad = [m for m in pref if not 0 <= m < 10]
    if bad:
        raise ValueError(f"digits quality: preferred digits {bad} outside 0..9")
    return pref


def quality_scorer(opts: LoadOptions) -> PartsScorer:
    """Plugin ``experiments.collapse.digits_world:quality_scorer``; options ``model_dir``
    (the world's directory: its classifier), ``preferred`` (digits), ``within``,
    ``between``."""
    check_options(opts, {"model_dir", "preferred", *DEFAULT_WEIGHTS}, "digits quality")
    path = _model_dir(opts, "digits quality")
    w = weights_from(opts, DEFAULT_WEIGHTS, "digits quality")
    pref = _preferred(opts)
    q = quality(load_cnn(path / "classifier.safetensors", 10), pref, *w)
    options = {"preferred": list(pref), **dict(zip(DEFAULT_WEIGHTS, w, strict=True))}
    return PartsScorer("digits_quality", q, str(path), options)


def regressor_scorer_plugin(opts: LoadOptions) -> RegressorScorer:
    """Plugin ``experiments.collapse.digits_world:regressor_scorer_plugin``; options
    ``model_dir`` (the world's directory), ``member`` (0 or 1), ``within``, ``between``
    (the regressors were fitted to the default preferred digits)."""
    return regressor_scorer(opts, "digits quality regressor", _NAMES, DEFAULT_WEIGHTS)


class Digits(CnnWorld):
    """The world of this module (see its docstring)."""

    name: ClassVar[str] = "digits"
    summary: ClassVar[str] = (
        "sklearn's 8x8 handwritten digits (10 classes) upsampled and shifted on 16x16; "
        "quality = 4 x centring (a pixel oracle) + 1 x p(digit 0 or 1) (the classifier)"
    )
    regressor_plugin: ClassVar[str] = "experiments.collapse.digits_world:regressor_scorer_plugin"

    preferred: list[int] = Field(
        default_factory=lambda: list(DEFAULT_PREFERRED), description="Preferred digits."
    )

    def model_post_init(self, context: Any, /) -> None:
        bad = [m for m in self.preferred if not 0 <= m < 10]
        if bad:
            raise ValueError(f"preferred: digits {bad} outside 0..9")

    def settings(self) -> DigitsSettings:
        return DigitsSettings(**{"seed": self.toy_seed, **self.toy})

    def parts_quality(self) -> PartsQuality:
        clf = load_cnn(self.model_dir / "classifier.safetensors", 10)
        return quality(clf, tuple(self.preferred), self.within, self.between)

    def quality(self) -> PluginSpec:  # type: ignore[override]
        return PluginSpec(
            name="digits_quality",
            plugin="experiments.collapse.digits_world:quality_scorer",
            options={
                "model_dir": str(self.model_dir),
                "preferred": list(self.preferred),
                **self._weights(),
            },
        )
