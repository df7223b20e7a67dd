"""A group's images share one prompt: the text scorers encode each distinct prompt once,
and score exactly as if every image brought its own copy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from divreward.models._common import unique_texts
from tests.fixtures_models import make_images


def test_unique_texts_keeps_first_seen_order_and_maps_every_row() -> None:
    distinct, index = unique_texts(["b", "a", "b", "c", "a"])
    assert distinct == ["b", "a", "c"]
    assert index == [0, 1, 0, 2, 1]
    assert [distinct[i] for i in index] == ["b", "a", "b", "c", "a"]
    assert unique_texts([]) == ([], [])


def _count_text_rows(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the model's text encoder to record how many texts each call encodes."""
    rows: list[int] = []
    if hasattr(model, "bundle"):  # transformers CLIP (PickScore, CLIPScore)
        target, attr = model.bundle.model, "get_text_features"
    else:  # open_clip (HPSv2)
        target, attr = model.model, "encode_text"
    original = getattr(target, attr)

    def counting(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows.append(int(ids.shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attr, counting)
    return rows


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "hpsv2"])
def test_one_prompt_is_encoded_once_and_scores_match_per_image_calls(
    name: str, tiny_zoo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_zoo.load(name)
    images = make_images(6, seed=3)
    prompts = ["a red bicycle"] * 4 + ["a blue boat"] * 2
    alone = np.array([model.score([img], [p])[0] for img, p in zip(images, prompts, strict=True)])
    rows = _count_text_rows(model, monkeypatch)
    together = model.score(images, prompts)
    assert sum(rows) == 2  # two distinct prompts, not six
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
