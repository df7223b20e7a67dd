"""The one registry of models. Importing it loads no weights and touches no GPU.

Adding a model is one module in ``divreward/models/`` that defines

    def load(opts: LoadOptions) -> Scorer | Embedder        # the real loader
    def build_tiny(out_dir: pathlib.Path, seed: int) -> None  # tiny random twin, same layout
    def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]

plus one line in ``REGISTRY`` below. ``hub_files`` returns the ``(repo_id,
allow_patterns)`` pairs that ``load(opts)`` reads from the Hugging Face hub, for ``opts``
merged as :func:`load_model` merges them; the loader takes its file names from the same
module constants, so the two cannot drift (``divreward weights pull`` downloads exactly
these; a model whose weights ship inside a pip package returns ``[]``). Plain names are
required files; globs (:func:`divreward.models.weights.optional`) are read when present.
A test fails if a registered model has no tiny builder, no ``hub_files`` whose patterns
cover what its tiny twin's loader reads, or no contract-test entry. (``ocr`` has no
tiny twin: its real weights ship in the rapidocr wheel and run in the tests; its
``build_tiny`` writes nothing and its ``hub_files`` is ``[]``.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from divreward.models.base import Embedder, LoadOptions, ModelKind, Scorer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    module: str  # module under divreward.models implementing load/build_tiny
    default_source: str  # hub id (or a dreamsim type / open_clip name, as the module says)
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # per-model default options
    # The module defines ``check_prompt(prompt, options)`` (ValueError when it cannot score
    # the prompt); the services call it on every prompt before any model runs.
    checks_prompts: bool = False


# name -> spec. Keep one line per model (wrapped only for length).
REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown model {name!r}; registered models: {valid}") from None


def _module(spec: ModelSpec) -> Any:
    return importlib.import_module(f"divreward.models.{spec.module}")


def merged_options(name: str, opts: LoadOptions | None = None) -> LoadOptions:
    """``opts`` as the loader of ``name`` gets them: the registry's default source and
    options filled in."""
    spec = get_spec(name)
    opts = opts or LoadOptions()
    merged = {**spec.defaults, **opts.options}
    return replace(opts, source=opts.source or spec.default_source, options=merged)


def load_model(name: str, opts: LoadOptions | None = None) -> Scorer | Embedder:
    """Load a registered model with the real loader (hub id or local weights). Missing
    weights raise one WeightsNotFoundError naming every place looked in and the exact
    ``divreward weights pull NAME`` command that fetches them."""
    from divreward.models.weights import WeightsNotFoundError, pull_command, weights_root

    merged = merged_options(name, opts)
    try:
        return _module(get_spec(name)).load(merged)
    except WeightsNotFoundError as exc:
        if not exc.remedy:
            raise
        what = name + "".join(
            f" --option {k}={v}"
            for k, v in sorted((opts.options if opts else {}).items())
            if k in _PULL_OPTIONS
        )
        if opts is not None and opts.source and opts.source != get_spec(name).default_source:
            what += f" --source {opts.source}"
        raise exc.with_remedy(
            f"Fetch them with `{pull_command(what, weights_root(merged))}`"
        ) from exc


#: Options that change which files a model reads (and so what the pull fetches).
_PULL_OPTIONS = ("version", "processor_source", "base_source", "tokenizer_source", "dreamsim_type")


def hub_files(name: str, opts: LoadOptions | None = None) -> list[tuple[str, list[str]]]:
    """The ``(repo_id, allow_patterns)`` pairs that loading ``name`` with ``opts`` reads
    from the Hugging Face hub (its module's ``hub_files`` on the merged options); sources
    that are local directories are left out (nothing to fetch)."""
    from divreward.models.weights import is_hub_id

    pairs = _module(get_spec(name)).hub_files(merged_options(name, opts))
    return [(repo, list(patterns)) for repo, patterns in pairs if is_hub_id(repo)]


def build_tiny(name: str, out_dir: str | Path, seed: int = 0) -> None:
    """Write the tiny random twin of ``name`` under ``out_dir`` (same layout as real)."""
    _module(get_spec(name)).build_tiny(Path(out_dir), seed)


# --- the zoo: one line per model -------------------------------------------------------
# fmt: off
register(ModelSpec("pickscore", "scorer", "pickscore", "yuvalkirstain/PickScore_v1", "PickScore (CLIP ViT-H/14): logit_scale.exp()*cos / scale_divisor", {"scale_divisor": 1.0, "processor_source": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}))  # noqa: E501
register(ModelSpec("clipscore", "scorer", "clipscore", "openai/clip-vit-base-patch32", "CLIPScore: Hessel 2.5*max(cos,0) with 'A photo depicts ' prefix, or torchmetrics max(100*cos,0)", {"form": "hessel"}))  # noqa: E501
register(ModelSpec("hpsv2", "scorer", "hpsv2", "xswu/HPSv2", "HPSv2 (open_clip ViT-H-14, HPS_v2_compressed.pt): cosine", {"version": "v2.0"}))  # noqa: E501
register(ModelSpec("hpsv21", "scorer", "hpsv2", "xswu/HPSv2", "HPSv2.1 (open_clip ViT-H-14, HPS_v2.1_compressed.pt): cosine", {"version": "v2.1"}))  # noqa: E501
register(ModelSpec("hpsv3", "scorer", "hpsv3", "MizzenAI/HPSv3", "HPSv3 (Qwen2-VL-7B + reward head): mu of the predicted (mu, log_sigma)"))  # noqa: E501
register(ModelSpec("imagereward", "scorer", "imagereward", "THUDM/ImageReward", "ImageReward (BLIP ViT-L + BERT cross-attention + MLP), standardised"))  # noqa: E501
register(ModelSpec("geneval", "scorer", "geneval", "facebook/mask2former-swin-small-coco-instance", "GenEval rules on Mask2Former detections + CLIP colours; needs per-prompt metadata; Flow-GRPO's partial reward", {"score": "reward"}))  # noqa: E501
register(ModelSpec("vqascore", "scorer", "vqascore", "Qwen/Qwen2.5-VL-7B-Instruct", "VQAScore: P('Yes') to 'Does this image show \"{prompt}\"?' from Qwen2.5-VL logits", {"mode": "vqascore"}))  # noqa: E501
register(ModelSpec("unifiedreward", "scorer", "vqascore", "CodeGoat24/UnifiedReward-qwen-7b", "UnifiedReward (Qwen2.5-VL): Flow-GRPO's prompt, greedy answer, 'Final Score' / 5", {"mode": "unifiedreward"}))  # noqa: E501
register(ModelSpec("dreamsim", "embedder", "dreamsim_embedder", "dreamsim", "DreamSim perceptual embedding (unit rows; distance = 1 - cos)", {"dreamsim_type": "ensemble"}))  # noqa: E501
register(ModelSpec("clip_embedder", "embedder", "clip_embedder", "openai/clip-vit-base-patch32", "CLIP image embedding (unit rows) for the CLIP-diversity metric"))  # noqa: E501
register(ModelSpec("ocr", "scorer", "ocr", "rapidocr", "OCR accuracy (RapidOCR PP-OCRv6 from its wheel): Flow-GRPO's 1 - edit distance / len(quoted target)", {"missing_quote": "error"}, checks_prompts=True))  # noqa: E501
register(ModelSpec("aesthetic", "scorer", "aesthetic", "trl-lib/ddpo-aesthetic-predictor", "LAION improved aesthetic predictor: MLP(unit CLIP ViT-L/14 image features), raw (~1-10)", {"clip_source": "openai/clip-vit-large-patch14"}))  # noqa: E501
# fmt: on
