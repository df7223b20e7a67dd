"""CLIPScore on any transformers CLIP checkpoint, in its two published forms.

- ``form="hessel"`` (Hessel et al. 2021, the paper's reference code): captions get the
  prefix ``"A photo depicts "``; score = ``2.5 * max(cos, 0)`` (reference model
  ViT-B/32, ``openai/clip-vit-base-patch32``, the registry default).
- ``form="torchmetrics"`` (``torchmetrics.multimodal.CLIPScore``): no prefix; score =
  ``max(100 * cos, 0)`` (torchmetrics' default model is ``openai/clip-vit-large-patch14``:
  pass it as the source for parity).

  Prompts longer than 77 tokens: this form differs from torchmetrics on purpose. Both
  forms truncate a prompt as CLIP was trained (OpenAI's and open_clip's tokenize): the
  first 75 word tokens, then the end-of-text token, where the text model pools.
  torchmetrics tokenises without truncation and then cuts the token ids at 77, which
  drops the end-of-text token, so the text model pools a token that is not the end of
  any text (with transformers 5, position 0 or the largest id, depending on the
  checkpoint's ``eos_token_id``). Up to 77 tokens (with the start and end tokens) the
  two agree. torchmetrics also averages a batch before clamping at 0; this form clamps
  each image (one image per torchmetrics call gives the same number).

Options ``weight`` and ``prefix`` override the form's values; ``processor_source``
takes the processor/tokenizer from another repository (default: the model's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models import _clip_common as clip
from divreward.models._common import check_options, option
from divreward.models.base import LoadOptions, ModelInfo
from divreward.models.weights import model_info

FORMS: dict[str, tuple[float, str]] = {  # form -> (weight, caption prefix)
    "hessel": (2.5, "A photo depicts "),
    "torchmetrics": (100.0, ""),
}
OPTIONS = ("form", "weight", "prefix", "processor_source", "preprocess")
DEFAULT_SOURCE = "openai/clip-vit-base-patch32"


class CLIPScore(clip.ClipScorer):
    def __init__(
        self, bundle: clip.ClipBundle, weight: float, prefix: str, info: ModelInfo
    ) -> None:
        super().__init__(bundle, info)
        self.weight = weight
        self.prefix = prefix

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        return self.weight * np.maximum(self.cosine(images, prompts, self.prefix), 0.0)


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    return clip.hub_files(opts, option(opts.options, "processor_source", str, None))


def load(opts: LoadOptions) -> CLIPScore:
    check_options("clipscore", opts.options, OPTIONS)
    form = option(opts.options, "form", str, "hessel")
    if form not in FORMS:
        raise ValueError(f"clipscore: option 'form' must be one of {sorted(FORMS)}, got {form!r}")
    weight = option(opts.options, "weight", float, FORMS[form][0])
    prefix = option(opts.options, "prefix", str, FORMS[form][1])
    bundle = clip.load_clip(opts, option(opts.options, "processor_source", str, None), "clipscore")
    info = model_info("clipscore", "scorer", opts, bundle.resolved, bundle.device, bundle.dtype)
    return CLIPScore(bundle, weight, prefix, info)


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/openai/clip-vit-base-patch32/``: random tiny CLIP (logit scale 100)
    with the real tokenizer and a 32 px processor, in one directory like the real repo."""
    target = out_dir / DEFAULT_SOURCE
    clip.write_tiny_clip(target, seed, float(np.log(100.0)))
    clip.write_processor(target, side=32)
