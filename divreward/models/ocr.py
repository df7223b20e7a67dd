"""OCR accuracy, Flow-GRPO's reward (``flow_grpo/ocr.py``), read with RapidOCR.

For a prompt and an image:

- **target** = the text between the prompt's first two double quotes
  (``prompt.split('"')[1]``, as Flow-GRPO, GARDO and UniRL do);
- **recognised** = RapidOCR's line texts joined with ``''`` in its reading order
  (lines under its ``text_score`` 0.5 are dropped, as PaddleOCR 2.x drops lines under
  its ``drop_score``); nothing detected -> ``''``;
- both strings: every ``' '`` deleted, lowercased (punctuation kept);
- ``dist = 0`` if the target is a substring of the recognised text, else the Levenshtein
  distance between them; ``dist = min(dist, len(target))``;
- **score = 1 - dist / len(target)**, in [0, 1].

Engine: ``rapidocr`` on ``onnxruntime`` with the PP-OCRv6 small detection and
recognition ONNX models **that ship inside the rapidocr wheel** (the registry source
``"rapidocr"``); no hub download ever. One engine per loaded scorer (one per Serve
replica), reused for every image; images go in as PIL RGB images (RapidOCR converts
them to the BGR its models expect), ``use_cls=False`` as Flow-GRPO's
``ocr(img, cls=False)``, and PaddleOCR 2.x's detection size (:data:`DET_LIMIT`).
Flow-GRPO ran PaddleOCR 2.9.1 (PP-OCRv4), so absolute scores
differ from its numbers; the formula is the same.

Prompts without a quoted span (Flow-GRPO raises an ``IndexError`` and the batch
crashes) or whose target is empty after deleting spaces (a ``ZeroDivisionError`` in
Flow-GRPO): with the default option ``missing_quote="error"`` that is a ``ValueError``
naming the prompt (the services check prompts before scoring, :func:`check_prompt`, and
answer a 4xx naming the group); with ``missing_quote="whole_prompt"`` the whole prompt
is the target (Flow-Factory's fallback). An empty target is an error in both modes.

Tiny profile: there is no tiny twin. The real weights are small (30 MB, in the wheel)
and run on CPU in well under a second per image, so the tests and the tiny profile use
them; ``build_tiny`` writes nothing and this model always reports ``profile="real"``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models._common import canonical, check_options, iter_chunks, option
from divreward.models.base import LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import Resolved, WeightsNotFoundError, model_info, resolve_dtype

#: The registry source meaning "the models inside the installed rapidocr wheel".
WHEEL_SOURCE = "rapidocr"
#: The ONNX files the engine runs (RapidOCR 3.x's defaults), main (recognition) first.
MODEL_FILES = {"Rec": "PP-OCRv6_rec_small.onnx", "Det": "PP-OCRv6_det_small.onnx"}
MISSING_QUOTE = ("error", "whole_prompt")
OPTIONS = ("missing_quote", "text_score", "det_limit_side_len", "det_limit_type", "threads")
#: Detection input size: PaddleOCR 2.x's defaults (what Flow-GRPO ran): the longest side
#: brought down to 960 when larger, smaller images kept. RapidOCR's own default (shortest
#: side brought UP to 736) reads 320x96 text slower (12x here) and no better.
DET_LIMIT = (960, "max")
#: Longest side RapidOCR looks at (its ``Global.max_side_len``; larger images are shrunk).
MAX_SIDE = 2000


def normalise(text: str) -> str:
    """Flow-GRPO's normalisation: delete every ``' '``, lowercase."""
    return text.replace(" ", "").lower()


def target_text(prompt: str, missing_quote: str = "error") -> str:
    """The normalised text a prompt asks to render (ValueError if there is none)."""
    parts = prompt.split('"')
    if len(parts) >= 2:
        target = normalise(parts[1])
        where = "the text between its first two double quotes"
    elif missing_quote == "whole_prompt":
        target = normalise(prompt)
        where = "the prompt"
    else:
        raise ValueError(
            "the ocr scorer needs the text to render in double quotes (e.g. a sign that "
            f'says "OPEN"), and prompt {prompt[:200]!r} has none (or load ocr with option '
            "missing_quote='whole_prompt' to read the whole prompt)"
        )
    if not target:
        raise ValueError(
            f"the ocr scorer has nothing to read in prompt {prompt[:200]!r}: {where} is empty "
            "once spaces are deleted"
        )
    return target


def check_prompt(prompt: str, options: dict[str, Any]) -> None:
    """What the services call on each prompt before scoring: ValueError if this scorer
    (with these options) cannot score it."""
    target_text(prompt, option(options, "missing_quote", str, "error"))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_reward(recognised: str, target: str) -> float:
    """Flow-GRPO's reward of a recognised string against a normalised, non-empty target."""
    text = normalise(recognised)
    dist = 0 if target in text else levenshtein(text, target)
    return 1.0 - min(dist, len(target)) / len(target)


def recognise(engine: Any, image: np.ndarray) -> str:
    """RapidOCR's text of one canonical RGB image: its lines joined with ``''``."""
    from PIL import Image

    result = engine(Image.fromarray(image), use_cls=False)
    return "".join(result.txts or ())


class OCRScorer(Scorer):
    max_resolution = MAX_SIDE

    def __init__(self, engine: Any, missing_quote: str, info: ModelInfo) -> None:
        self.engine = engine
        self.missing_quote = missing_quote
        self.info = info
        self._lock = threading.Lock()  # one engine, one image at a time

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        targets = []
        for i, p in enumerate(prompts):
            try:
                targets.append(target_text(p, self.missing_quote))
            except ValueError as exc:
                raise ValueError(f"prompts[{i}]: {exc}") from None
        arrays = canonical(images)
        out = np.empty(len(targets), dtype=np.float64)
        with self._lock:  # RapidOCR reads one image per call; a chunk is a run of calls
            for sl in iter_chunks(arrays, self.max_batch, self.max_batch_pixels):
                for i in range(sl.start, sl.stop):
                    out[i] = ocr_reward(recognise(self.engine, arrays[i]), targets[i])
        return out


def model_files(source: str) -> dict[str, Path]:
    """The ONNX files of ``source``: the wheel's (``"rapidocr"``) or a local directory
    holding files of the same names."""
    if source == WHEEL_SOURCE:
        import rapidocr

        directory = Path(rapidocr.__file__).parent / "models"
    else:
        directory = Path(source).expanduser()
    files = {k: directory / name for k, name in MODEL_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"ocr: model files not found for source {source!r}: missing {', '.join(missing)}",
            f"use source {WHEEL_SOURCE!r} (the models inside the rapidocr wheel: "
            "`pip install rapidocr onnxruntime`) or a directory holding "
            + ", ".join(MODEL_FILES.values()),
        )
    return files


def load(opts: LoadOptions) -> OCRScorer:
    from importlib import metadata

    from rapidocr import RapidOCR

    check_options("ocr", opts.options, OPTIONS)
    missing_quote = option(opts.options, "missing_quote", str, "error")
    if missing_quote not in MISSING_QUOTE:
        raise ValueError(f"ocr: option 'missing_quote' must be one of {MISSING_QUOTE}")
    text_score = option(opts.options, "text_score", float, 0.5)
    threads = option(opts.options, "threads", int, None)
    limit_side = option(opts.options, "det_limit_side_len", int, DET_LIMIT[0])
    limit_type = option(opts.options, "det_limit_type", str, DET_LIMIT[1])
    if limit_type not in ("max", "min") or limit_side < 32:
        raise ValueError(
            "ocr: option 'det_limit_type' must be 'max' or 'min' and 'det_limit_side_len' "
            f">= 32, got {limit_type!r} and {limit_side}"
        )
    if opts.device != "cpu":
        raise ValueError(f"ocr runs on CPU (onnxruntime's CPU provider), not {opts.device!r}")
    import torch

    if resolve_dtype(opts) != torch.float32:
        raise ValueError(f"ocr runs its float32 ONNX models as they are, not as {opts.dtype!r}")
    source = opts.source or WHEEL_SOURCE
    files = model_files(source)
    if threads is None:  # a Serve replica has set torch's threads to the CPUs it is given
        threads = torch.get_num_threads()
    params: dict[str, Any] = {
        "Global.log_level": "error",
        "Global.text_score": text_score,
        "Det.limit_side_len": limit_side,
        "Det.limit_type": limit_type,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        **{f"{k}.model_path": str(p) for k, p in files.items()},
    }
    engine = RapidOCR(params=params)
    revision = f"rapidocr=={metadata.version('rapidocr')}"
    resolved = [Resolved(p, source, revision, False) for p in files.values()]
    info = model_info("ocr", "scorer", opts, resolved, "cpu", torch.float32, profile="real")
    return OCRScorer(engine, missing_quote, info)


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """Nothing to pull from the hub: the models ship in the rapidocr wheel."""
    return []


def build_tiny(out_dir: Path, seed: int) -> None:
    """No tiny twin: the tiny profile runs the wheel's real models (module docstring)."""
