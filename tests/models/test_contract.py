"""The contract every registered model keeps, run on its tiny twin through the real
loader: a test fails if a registered model has no tiny builder or no entry here.

Scorers: ``score(images, prompts) -> float64 (N,)``, finite, deterministic, batch-size
invariant, each score paired with its own prompt. Embedders: ``embed(images) ->
float32 (N, dim)`` with unit rows. Both report a ``ModelInfo`` that round-trips
through JSON and reloads the same model.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images, make_text_images
from PIL import Image

from divreward.images import ImageError
from divreward.models.base import Embedder, LoadOptions, MetadataError, ModelInfo, Scorer
from divreward.models.registry import REGISTRY, get_spec, load_model

PROMPTS = [
    "a red bicycle leaning on a wall",
    "two cats asleep on a sofa",
    "a lighthouse at dusk, oil painting",
    "a bowl of ramen, top view",
    "an astronaut riding a horse",
    "a watercolor of a fox in snow",
    "a city street in the rain at night",
    "a close-up photo of a bee on a flower",
]


@dataclass(frozen=True)
class Contract:
    """Per-model expectations of the contract test."""

    # Options different from the registry defaults: the round-trip test loads with
    # them, checks they are reported in ModelInfo.options, and reloads from the report.
    alt_options: dict[str, Any] = field(default_factory=dict)
    # Tolerance of "a batch of 8 = eight batches of 1" (fp32 CPU matmuls reassociate).
    batch_rtol: float = 1e-4
    batch_atol: float = 1e-5
    # The model runs its real weights in the tiny profile too (ocr: the ONNX models in
    # the rapidocr wheel, small and fast on CPU; its build_tiny writes nothing): it
    # reports profile "real" and its registry source.
    real_weights: bool = False
    # Whether scores depend on the prompt (the aesthetic predictor scores images only).
    uses_prompts: bool = True
    # Test inputs (images, prompts) for n images and a seed; default: random images and
    # PROMPTS. The OCR scorer needs rendered text and prompts quoting it.
    inputs: Callable[[int, int], tuple[list[np.ndarray], list[str]]] | None = None

    # Per-prompt metadata for a scorer that needs it (GenEval): prompt -> metadata.
    metadata: dict[str, dict[str, Any]] | None = None
    # A judge whose score is parsed from generated text: its random tiny twin never
    # writes a score, so every tiny score is 0 (the parsing is tested on its own).
    constant_on_tiny: bool = False


def _ocr_inputs(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Rendered words; every other prompt asks for one letter more than its image shows,
    so that the scores differ (read right: 1; one letter short: 1 - 1/len)."""
    images, prompts = make_text_images(n, seed)
    return images, [p[:-1] + ('X"' if i % 2 else '"') for i, p in enumerate(prompts)]


def _geneval_metadata() -> dict[str, dict[str, Any]]:
    """A GenEval spec per contract prompt, with different counts so that re-pairing
    prompts changes the tiny detector's rewards."""
    counts = [1, 2, 3, 4, 1, 2, 3, 4]
    return {
        p: {"tag": "counting" if i == 7 else "two_object",
            "include": [{"class": "car", "count": c}, {"class": "person", "count": 1}]}
        for i, (p, c) in enumerate(zip(PROMPTS, counts, strict=True))
    }  # fmt: skip


CONTRACT: dict[str, Contract] = {
    "pickscore": Contract(alt_options={"scale_divisor": 26.0}),
    "clipscore": Contract(alt_options={"form": "torchmetrics"}),
    "hpsv2": Contract(),
    "hpsv21": Contract(),
    "hpsv3": Contract(),
    "imagereward": Contract(),
    "vqascore": Contract(alt_options={"question": 'Is "{prompt}" what this image shows?'}),
    "unifiedreward": Contract(alt_options={"max_new_tokens": 4}, constant_on_tiny=True),
    "geneval": Contract(alt_options={"score": "geneval"}, metadata=_geneval_metadata()),
    "dreamsim": Contract(alt_options={"dreamsim_type": "dino_vitb16"}),
    "clip_embedder": Contract(),
    "ocr": Contract(
        alt_options={"missing_quote": "whole_prompt"}, real_weights=True, inputs=_ocr_inputs
    ),
    "aesthetic": Contract(uses_prompts=False),
}


NAMES = list(REGISTRY)


def test_every_registered_model_has_a_tiny_builder_and_a_contract_entry() -> None:
    assert sorted(CONTRACT) == sorted(REGISTRY), (
        "every registered model needs a Contract entry in tests/models/test_contract.py"
    )
    for name, spec in REGISTRY.items():
        module = importlib.import_module(f"divreward.models.{spec.module}")
        assert callable(getattr(module, "load", None)), f"{name}: module lacks load(opts)"
        assert callable(getattr(module, "build_tiny", None)), f"{name}: lacks build_tiny"


def test_importing_the_registry_loads_no_framework() -> None:
    code = (
        "import sys, divreward.models.registry, divreward.models.tiny, "
        "divreward.models.weights\n"
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'dreamsim') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def _inputs(name: str, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """The contract's test inputs for ``name``: ``n`` images and one prompt each."""
    make = CONTRACT[name].inputs
    if make is not None:
        return make(n, seed)
    return make_images(n, seed), PROMPTS[:n]


def _metadata(model: Scorer, prompts: list[str]) -> list[dict[str, Any]] | None:
    if not model.needs_metadata:
        return None
    table = CONTRACT[model.info.name].metadata
    assert table is not None, f"{model.info.name} needs metadata: give Contract.metadata"
    return [table[p] for p in prompts]


def _score(model: Scorer, images: Any, prompts: list[str]) -> np.ndarray:
    return model.score_with_metadata(images, prompts, _metadata(model, prompts))


def _run(model: Scorer | Embedder, images: Any, prompts: list[str]) -> np.ndarray:
    if isinstance(model, Scorer):
        return _score(model, images, prompts)
    return model.embed(images)


@pytest.mark.parametrize("name", NAMES)
class TestContract:
    def test_loads_as_its_kind_with_info(self, tiny_zoo: TinyZoo, name: str) -> None:
        spec = get_spec(name)
        model = tiny_zoo.load(name)
        assert isinstance(model, Scorer if spec.kind == "scorer" else Embedder)
        info = model.info
        real = CONTRACT[name].real_weights
        assert (info.name, info.kind, info.profile) == (name, spec.kind, "real" if real else "tiny")
        assert (info.device, info.dtype) == ("cpu", "float32")
        assert info.weights_hash is not None and len(info.weights_hash) == 16
        int(info.weights_hash, 16)
        assert info.source == spec.default_source if real else str(tiny_zoo.root) in info.source
        for key, value in spec.defaults.items():
            assert info.options[key] == value
        assert isinstance(model.max_resolution, int) and model.max_resolution > 0

    def test_shapes_dtypes_finite(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        images, prompts = _inputs(name, 8)
        out = _run(model, images, prompts)
        if isinstance(model, Scorer):
            assert out.dtype == np.float64 and out.shape == (8,)
        else:
            assert out.dtype == np.float32 and out.shape == (8, model.dim)
            np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        assert np.all(np.isfinite(out))
        if CONTRACT[name].constant_on_tiny:
            np.testing.assert_array_equal(out, 0.0)
            return
        # A random tiny model must still tell images apart, or the tests below are void.
        assert np.ptp(out, axis=0).max() > 1e-6

    def test_empty_batch(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        out = _run(model, [], [])
        expected = (0,) if isinstance(model, Scorer) else (0, model.dim)  # type: ignore[union-attr]
        assert out.shape == expected

    def test_deterministic(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        images, prompts = _inputs(name, 4, seed=1)
        a = _run(model, images, prompts)
        b = _run(model, images, prompts)
        np.testing.assert_array_equal(a, b)

    def test_batch_of_8_equals_8_batches_of_1(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        images, prompts = _inputs(name, 8, seed=2)
        whole = _run(model, images, prompts)
        single = np.concatenate(
            [_run(model, [img], [p]) for img, p in zip(images, prompts, strict=True)]
        )
        c = CONTRACT[name]
        np.testing.assert_allclose(whole, single, rtol=c.batch_rtol, atol=c.batch_atol)

    def test_outputs_follow_their_inputs(self, tiny_zoo: TinyZoo, name: str) -> None:
        """Permuting (image, prompt) pairs permutes the outputs; for scorers, each score
        depends on its own prompt (re-pairing prompts changes the scores)."""
        model = tiny_zoo.load(name)
        images, prompts = _inputs(name, 8, seed=3)
        base = _run(model, images, prompts)
        perm = [5, 2, 7, 0, 3, 1, 6, 4]
        permuted = _run(model, [images[i] for i in perm], [prompts[i] for i in perm])
        np.testing.assert_allclose(permuted, base[perm], rtol=1e-4, atol=1e-5)
        if isinstance(model, Scorer):
            # Same images, prompts rotated by one: image i now gets prompt i+1; its
            # score must equal scoring that pair alone.
            rotated = prompts[1:] + prompts[:1]
            shifted = _score(model, images, rotated)
            if not CONTRACT[name].uses_prompts:
                np.testing.assert_allclose(shifted, base, rtol=1e-5, atol=1e-6)
            elif not CONTRACT[name].constant_on_tiny:
                assert not np.allclose(shifted, base), "scores ignore the prompts"
            alone = _score(model, [images[0]], [rotated[0]])
            np.testing.assert_allclose(shifted[0], alone[0], rtol=1e-4, atol=1e-5)

    def test_accepts_every_image_form(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        full, prompts = _inputs(name, 3, seed=4)
        images = [img[:40, :40] for img in full]  # same size: stackable
        ref = _run(model, images, prompts)
        pil = [Image.fromarray(img) for img in images]
        nhwc = np.stack(images)
        nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255.0
        for form in (pil, nhwc, nchw):
            np.testing.assert_allclose(_run(model, form, prompts), ref, rtol=1e-5, atol=1e-6)

    def test_bad_image_names_its_index(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        good, prompts = _inputs(name, 2)
        images = [good[0], np.zeros((0, 5, 3), np.uint8)]
        with pytest.raises(ImageError, match=r"image 1: has zero pixels"):
            _run(model, images, prompts)

    def test_prompt_count_must_match(self, tiny_zoo: TinyZoo, name: str) -> None:
        model = tiny_zoo.load(name)
        if not isinstance(model, Scorer):
            pytest.skip("embedders take no prompts")
        with pytest.raises(ValueError, match="prompts has 2 entries but images has 3"):
            model.score_with_metadata(make_images(3), PROMPTS[:2], _metadata(model, PROMPTS[:3]))
        with pytest.raises(ValueError, match="not a single str"):
            model.score_with_metadata(make_images(1), "a cat", _metadata(model, PROMPTS[:1]))  # type: ignore[arg-type]
        if model.needs_metadata:
            with pytest.raises(MetadataError, match="got none"):
                model.score(make_images(1), PROMPTS[:1])
            assert model.probe_metadata is not None
            model.check_metadata([model.probe_metadata])
        else:
            with pytest.raises(ValueError, match="metadata has 1 entries but images has 2"):
                model.score_with_metadata(make_images(2), PROMPTS[:2], [{}])

    def test_config_round_trip(self, tiny_zoo: TinyZoo, name: str) -> None:
        """Load with non-default options; the reported info carries them, survives JSON,
        and reloading from it (source + options) gives the same model and numbers."""
        spec = get_spec(name)
        alt = CONTRACT[name].alt_options
        opts = tiny_zoo.options(name, options=alt)
        model = load_model(name, opts)
        info = model.info
        assert info.options == {**spec.defaults, **alt}
        again = ModelInfo(**json.loads(json.dumps(info.to_dict())))
        assert again == info
        reloaded = load_model(
            name,
            LoadOptions(
                source=again.source,
                weights_dir=opts.weights_dir,
                device=again.device,
                dtype=again.dtype,
                options=again.options,
            ),
        )
        assert reloaded.info.weights_hash == info.weights_hash
        assert reloaded.info.options == info.options
        images, prompts = _inputs(name, 3, seed=5)
        np.testing.assert_array_equal(_run(reloaded, images, prompts), _run(model, images, prompts))
