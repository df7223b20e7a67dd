"""The OCR scorer: Flow-GRPO's formula against hand computations, and the real RapidOCR
models from the rapidocr wheel on PIL-rendered text (no tiny twin: module docstring of
divreward.models.ocr)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_models import WORDS, make_text_images, text_image
from PIL import Image

from divreward.models import ocr
from divreward.models.base import LoadOptions
from divreward.models.registry import get_spec, load_model


@pytest.fixture(scope="module")
def scorer() -> ocr.OCRScorer:
    model = load_model("ocr")
    assert isinstance(model, ocr.OCRScorer)
    return model


# --- the formula ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("flaw", "lawn", 2), ("a", "a", 0)],
)
def test_levenshtein(a: str, b: str, d: int) -> None:
    assert ocr.levenshtein(a, b) == ocr.levenshtein(b, a) == d


def test_target_is_between_the_first_two_quotes_normalised() -> None:
    assert ocr.target_text('a sign "Spring Sale 2024" and "other"') == "springsale2024"
    assert ocr.target_text('an unclosed "Open Late') == "openlate"  # split('"')[1], as FG
    assert ocr.target_text("no quote", "whole_prompt") == "noquote"  # Flow-Factory's fallback
    assert ocr.target_text('"A" then "B"', "whole_prompt") == "a"  # the quote wins


@pytest.mark.parametrize("mode", ["error", "whole_prompt"])
def test_empty_target_is_an_error(mode: str) -> None:
    with pytest.raises(ValueError, match="nothing to read"):
        ocr.target_text('a sign that says " " in red', mode)


def test_missing_quote_is_an_error_by_default() -> None:
    with pytest.raises(ValueError, match="needs the text to render in double quotes"):
        ocr.target_text("a sign that says hello")
    with pytest.raises(ValueError, match="double quotes"):
        ocr.check_prompt("a sign", {})
    ocr.check_prompt("a sign", {"missing_quote": "whole_prompt"})  # no error


def test_reward_by_hand() -> None:
    # substring of the recognised text (after deleting spaces, lowercasing): distance 0
    assert ocr.ocr_reward("Big SPRING sale today", "springsale") == 1.0
    # 'hello' vs 'world': 4 substitutions -> 1 - 4/5
    assert ocr.ocr_reward("Hello", "world") == pytest.approx(0.2)
    # one letter missing: 1 - 1/6
    assert ocr.ocr_reward("Bakery", "bakerys") == pytest.approx(1 - 1 / 7)
    # the distance is capped at len(target): never below 0
    assert ocr.ocr_reward("a very long unrelated sentence", "ab") == 0.0
    assert ocr.ocr_reward("", "open") == 0.0  # nothing read


# --- the real models from the wheel -------------------------------------------------------
def test_reports_the_wheel_models(scorer: ocr.OCRScorer) -> None:
    info = scorer.info
    assert (info.name, info.source, info.profile) == ("ocr", "rapidocr", "real")
    assert info.revision is not None and info.revision.startswith("rapidocr==")
    assert get_spec("ocr").default_source == ocr.WHEEL_SOURCE
    assert ocr.hub_files(LoadOptions()) == []


def test_right_text_scores_near_1_and_wrong_text_low(scorer: ocr.OCRScorer) -> None:
    images, prompts = make_text_images(len(WORDS))
    right = scorer.score(images, prompts)
    assert right.min() >= 0.9, right
    # each image against the next word's prompt: a different text
    wrong = scorer.score(images, prompts[1:] + prompts[:1])
    assert wrong.max() <= 0.5, wrong
    blank = np.full((96, 320, 3), 240, np.uint8)
    assert scorer.score([blank], ['"Hello"']).tolist() == [0.0]  # nothing detected


def test_equals_rapidocr_called_directly(scorer: ocr.OCRScorer) -> None:
    """The scorer is the package's own pipeline (same engine settings, PIL RGB in,
    use_cls=False, lines joined) followed by Flow-GRPO's formula, computed here by hand."""
    from rapidocr import RapidOCR

    engine = RapidOCR(
        params={"Global.log_level": "error", "Det.limit_side_len": 960, "Det.limit_type": "max"}
    )
    images = [text_image("Spring Sale", 3), text_image("OPEN 24", 4), text_image("Zebra", 5)]
    prompts = ['"spring sale"', 'a neon sign "Open 42"', 'the word "Zebras"']
    expected = []
    for img, p in zip(images, prompts, strict=True):
        read = "".join(engine(Image.fromarray(img), use_cls=False).txts or ())
        text = read.replace(" ", "").lower()
        target = p.split('"')[1].replace(" ", "").lower()
        dist = 0 if target in text else ocr.levenshtein(text, target)
        expected.append(1 - min(dist, len(target)) / len(target))
    got = scorer.score(images, prompts)
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 1.0 and 0 < got[1] < 1 and got[2] == pytest.approx(1 - 1 / 6)


def test_bad_prompt_names_its_index(scorer: ocr.OCRScorer) -> None:
    images, _ = make_text_images(2)
    with pytest.raises(ValueError, match=r"prompts\[1\]: .*double quotes"):
        scorer.score(images, ['"Hello"', "no quote here"])


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="missing_quote"):
        load_model("ocr", LoadOptions(options={"missing_quote": "guess"}))
    with pytest.raises(ValueError, match="unknown option"):
        load_model("ocr", LoadOptions(options={"lang": "en"}))
    with pytest.raises(ValueError, match="float32 ONNX models"):
        load_model("ocr", LoadOptions(dtype="float16"))
    with pytest.raises(FileNotFoundError, match=r"PP-OCRv6_rec_small\.onnx"):
        load_model("ocr", LoadOptions(source="/nonexistent/dir"))
