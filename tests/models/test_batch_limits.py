"""One batch setting per model: every model's chunking reads its ``max_batch`` /
``max_batch_pixels``, ``set_batch_limits`` changes the forward-pass sizes, and the
outputs do not depend on how a call was chunked."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_models import TinyZoo, make_images

from divreward.models._common import recording_passes
from divreward.models.base import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, Embedder, Scorer
from divreward.models.registry import REGISTRY, load_model

# quoted, so that the ocr scorer has a text to look for
PROMPTS = [
    '"a red bicycle"',
    '"two cats"',
    '"a lighthouse"',
    '"ramen"',
    '"a fox"',
    '"snow"',
    '"a boat"',
]


# GenEval metadata without colours: the recorded passes are the detector's alone.
METADATA = {"tag": "two_object",
            "include": [{"class": "car", "count": 1}, {"class": "person", "count": 1}]}  # fmt: skip


def _run(model: Scorer | Embedder, images: list[np.ndarray]) -> np.ndarray:
    if isinstance(model, Scorer):
        meta = [METADATA] * len(images) if model.needs_metadata else None
        return model.score_with_metadata(images, PROMPTS[: len(images)], meta)
    return model.embed(images)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_set_batch_limits_sets_the_forward_passes(tiny_zoo: TinyZoo, name: str) -> None:
    model = load_model(name, tiny_zoo.options(name))  # own copy: the limits are state
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(7)]
    side = 48 * 40
    model.set_batch_limits(32, DEFAULT_MAX_PIXELS)
    with recording_passes() as passes:
        whole = _run(model, images)
    assert passes == [7]
    model.set_batch_limits(3, DEFAULT_MAX_PIXELS)
    with recording_passes() as passes:
        by_three = _run(model, images)
    assert passes == [3, 3, 1]
    model.set_batch_limits(32, 2 * side)  # the pixel limit: two images per pass
    with recording_passes() as passes:
        by_pixels = _run(model, images)
    assert passes == [2, 2, 2, 1]
    # Same numbers however the call was chunked (float32 forward, batch-size independent
    # up to kernel round-off).
    np.testing.assert_allclose(by_three, whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_pixels, whole, rtol=1e-4, atol=1e-5)


def test_chunking_is_observed_in_the_forward_pass(tiny_zoo: TinyZoo) -> None:
    # A counting hook on the vision tower sees exactly the recorded pass sizes.
    model = load_model("pickscore", tiny_zoo.options("pickscore"))
    seen: list[int] = []
    tower = model.bundle.model.vision_model  # type: ignore[attr-defined]
    handle = tower.register_forward_hook(
        lambda _m, _args, kwargs, _out: seen.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    try:
        model.set_batch_limits(4, DEFAULT_MAX_PIXELS)
        with recording_passes() as passes:
            model.score(make_images(7, seed=1), PROMPTS)
    finally:
        handle.remove()
    assert seen == passes == [4, 3]


def test_defaults_and_bad_limits(tiny_zoo: TinyZoo) -> None:
    model = load_model("dreamsim", tiny_zoo.options("dreamsim"))
    assert (model.max_batch, model.max_batch_pixels) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS)
    with pytest.raises(ValueError, match="max_batch must be an int >= 1, got 0"):
        model.set_batch_limits(0, 10)
    with pytest.raises(ValueError, match=r"max_batch_pixels must be an int >= 1, got 2\.5"):
        model.set_batch_limits(4, 2.5)  # type: ignore[arg-type]
    assert model.max_batch == DEFAULT_MAX_BATCH
