"""VLM judges on Qwen2.5-VL: VQAScore (logits of "Yes") and UnifiedReward (a generated
"Final Score"), one module, two registry entries (option ``mode``).

**vqascore** (t2v_metrics v3.1 ``qwen2vl_model.py``, Lin et al. 2024): one user message
holding the image and the question ``'Does this image show "{prompt}"? Please answer
Yes or No.'`` (option ``question``, ``{prompt}`` is replaced), rendered with the chat
template and the generation prompt; one forward pass; score = softmax over the **full
vocabulary** of the logits at the last position, read at the first token of ``"Yes"``
(option ``answer``; ``tokenizer.encode(answer)[0]`` as the reference). No generation:
the reference's ``generate(max_new_tokens=1, do_sample=False, output_scores=True)``
returns the same first-step logits after the checkpoint's logits processors, of which
only ``repetition_penalty`` (1.05 in Qwen2.5-VL-Instruct's ``generation_config.json``)
acts in greedy mode: it divides the positive logits (multiplies the negative ones) of
every token already in the input. It is applied here too (option
``repetition_penalty``; default: the checkpoint's ``generation_config.json``, else 1.0),
so that the number is the reference's. Calls are batched with left padding (the last
position is every row's last real token).

**unifiedreward** (Flow-GRPO's ``unifiedreward_score_sglang``, same in GARDO and UniRL):
the image resized to 512x512, then the prompt constant :data:`UNIFIED_PROMPT` (its
leading ``<image>\\n`` placeholder is where Qwen's chat template puts the image, so it is
dropped from the text), greedy generation (``max_new_tokens``, default: the checkpoint's
``generation_config.json`` value, else 512), the first
match of ``Final Score:\\s*([1-5](?:\\.\\d+)?)`` in the answer, score = value / 5 (no
match -> 0; the regex also reads "5.5" as 1.1 and "10" as 0.2, as the reference).
Flow-GRPO's model is ``CodeGoat24/UnifiedReward-7b-v1.5`` (LLaVA-OneVision-7B on Qwen2,
served by sglang's ``chatml-llava`` template), which this Qwen2.5-VL loader cannot load;
the default here is the Qwen2.5-VL release ``CodeGoat24/UnifiedReward-qwen-7b`` with
Flow-GRPO's prompt and parsing (its own pointwise script asks a longer prompt).

Image preprocessing, both modes: ``qwen_vl_utils.fetch_image`` (``smart_resize`` to
multiples of 28 within ``[min_pixels, max_pixels]`` = [3136, 12845056] by default,
options; PIL bicubic), then the checkpoint's image processor without its own resize.
The pixel range is clamped to the processor's (the tiny twin's is 56x56).

Weights: the whole Qwen2.5-VL checkpoint (``model*.safetensors``) with its config,
processor, tokenizer and chat-template files, through
``Qwen2_5_VLForConditionalGeneration.from_pretrained``; bf16 on CUDA by default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from divreward.models import hpsv3
from divreward.models._common import canonical, check_options, iter_chunks, option, seeded
from divreward.models.base import DEFAULT_MAX_PIXELS, LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import (
    WeightsNotFoundError,
    check_device,
    model_info,
    optional,
    resolve_dir,
    resolve_dtype,
)

VQA_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
UNIFIED_REPO = "CodeGoat24/UnifiedReward-qwen-7b"
REQUIRED = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
OPTIONAL = (
    *WEIGHTS,
    "model-*.safetensors",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
MODES = ("vqascore", "unifiedreward")
QUESTION = 'Does this image show "{prompt}"? Please answer Yes or No.'
ANSWER = "Yes"
# Flow-GRPO's flow_grpo/rewards.py (unifiedreward_score_sglang), byte for byte, after its
# leading "<image>\n" (the image goes where Qwen's chat template puts it).
UNIFIED_PROMPT = (
    "You are given a text caption and a generated image based on that caption. Your task is "
    "to evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess "
    "how well this image aligns with the provided caption. Consider the accuracy of depicted "
    "objects, their relationships, and attributes as described in the caption.\n2. Overall "
    "Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nBased on the above "
    "criteria, assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as "
    "follows:\nText Caption: [{prompt}]"
)
UNIFIED_REGEX = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
UNIFIED_SIDE = 512  # Flow-GRPO resizes every image to 512x512 before sending it
MIN_PIXELS = 4 * 28 * 28  # qwen_vl_utils' defaults
MAX_PIXELS = 16384 * 28 * 28
OPTIONS = (
    "mode",
    "question",
    "answer",
    "repetition_penalty",
    "max_new_tokens",
    "min_pixels",
    "max_pixels",
    "max_batch",
    "max_batch_pixels",
)
DEFAULT_MAX_BATCH = 8


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """(repo id, allow patterns) of everything :func:`load` reads from the hub."""
    mode = option(opts.options, "mode", str, "vqascore")
    default = UNIFIED_REPO if mode == "unifiedreward" else VQA_REPO
    # the weights are one file or shards with an index (which, is the repository's
    # choice), the chat template and the slow tokenizer's files only in some: all read
    # when present
    return [(opts.source or default, [*REQUIRED, *(optional(f) for f in OPTIONAL)])]


def unified_score(text: str) -> float:
    """Flow-GRPO's parsing: the first ``Final Score: x`` (x in 1-5, decimals allowed) / 5,
    0 when there is none."""
    match = UNIFIED_REGEX.search(text)
    return float(match.group(1)) / 5 if match else 0.0


def penalise(logits: Any, input_ids: Any, penalty: float) -> Any:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` on ``(B, V)`` float logits:
    each row's logits of the tokens in its input (padding excluded by the caller) are
    divided by ``penalty`` when positive, multiplied when negative."""
    import torch

    if penalty == 1.0:
        return logits
    score = logits.gather(1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, input_ids, score)


class QwenJudge(Scorer):
    """VQAScore or UnifiedReward on a Qwen2.5-VL checkpoint (``mode``)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        mode: str,
        options: dict[str, Any],
        info: ModelInfo,
        device: str,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.mode = mode
        self.question = str(options["question"])
        self.answer_id = int(self.tokenizer.encode(str(options["answer"]))[0])
        self.penalty = float(options["repetition_penalty"])
        self.max_new_tokens = int(options["max_new_tokens"])
        self.min_pixels = int(options["min_pixels"])
        self.max_pixels = int(options["max_pixels"])
        self.max_batch = int(options["max_batch"])
        self.max_batch_pixels = int(options["max_batch_pixels"])
        self.info = info
        self.device = device
        self.factor = int(self.image_processor.patch_size * self.image_processor.merge_size)
        self.max_resolution = UNIFIED_SIDE if mode == "unifiedreward" else 1024
        self._special = sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)

    # -- input ---------------------------------------------------------------------
    def text(self, prompt: str) -> str:
        """The user text for one prompt."""
        if self.mode == "unifiedreward":
            return UNIFIED_PROMPT.replace("{prompt}", prompt)
        return self.question.replace("{prompt}", prompt)

    def render(self, prompt: str) -> str:
        """The chat-templated input of one prompt (one image, generation prompt)."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.text(prompt)}],
            }
        ]
        return str(
            self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def resize(self, image: np.ndarray, index: int) -> np.ndarray:
        """``fetch_image`` (after Flow-GRPO's 512x512 for UnifiedReward): smart_resize to
        multiples of the patch factor within the pixel range, PIL bicubic."""
        from PIL import Image

        from divreward.images import ImageError

        pil = Image.fromarray(image)
        if self.mode == "unifiedreward":
            pil = pil.resize((UNIFIED_SIDE, UNIFIED_SIDE), Image.Resampling.BICUBIC)
        try:
            rh, rw = hpsv3.smart_resize(
                pil.height, pil.width, self.factor, self.min_pixels, self.max_pixels
            )
        except ValueError as exc:
            raise ImageError(str(exc), index) from exc
        if (rh, rw) != (pil.height, pil.width):
            pil = pil.resize((rw, rh), Image.Resampling.BICUBIC)
        return np.array(pil)

    def encode(self, resized: Sequence[np.ndarray], prompts: Sequence[str]) -> Any:
        """Processor inputs of a chunk (left padding), on the model's device."""
        for i, p in enumerate(prompts):
            for tok in self._special:
                if tok in p:
                    raise ValueError(
                        f"prompts[{i}] contains the special token {tok!r}, which would break "
                        "the model's input structure; remove it"
                    )
        inputs = self.processor(
            text=[self.render(p) for p in prompts],
            images=list(resized),
            do_resize=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return inputs.to(self.device)

    # -- the two modes -------------------------------------------------------------
    def yes_probability(self, inputs: Any) -> np.ndarray:
        """P(answer token) at the last position, softmax over the full vocabulary."""
        import torch

        with torch.inference_mode():
            logits = self.model(**inputs).logits[:, -1, :].float()  # (B, V)
        ids = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 0)
        # padding's id must not be penalised: point it at a row's own first real token
        first = inputs["input_ids"].gather(1, inputs["attention_mask"].argmax(dim=1, keepdim=True))
        ids = torch.where(inputs["attention_mask"] == 0, first, ids)
        logits = penalise(logits, ids, self.penalty)
        probs = torch.softmax(logits, dim=-1)
        return probs[:, self.answer_id].double().cpu().numpy()

    def generate(self, inputs: Any) -> list[str]:
        """Greedy answers (new tokens only, special tokens skipped)."""
        import torch

        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return list(self.tokenizer.batch_decode(new, skip_special_tokens=True))

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        check_prompts(images, prompts)
        arrays = canonical(images)
        resized = [self.resize(img, i) for i, img in enumerate(arrays)]
        out = np.empty(len(arrays), dtype=np.float64)
        for sl in iter_chunks(arrays, self.max_batch, self.max_batch_pixels):
            inputs = self.encode(resized[sl], prompts[sl])
            if self.mode == "unifiedreward":
                out[sl] = [unified_score(t) for t in self.generate(inputs)]
            else:
                out[sl] = self.yes_probability(inputs)
        return out


def _generation_value(directory: Path, key: str, default: Any) -> Any:
    """``key`` of the checkpoint's ``generation_config.json`` (``default`` without one)."""
    import json

    path = directory / "generation_config.json"
    if not path.is_file():
        return default
    return json.loads(path.read_text()).get(key, default)


def load(opts: LoadOptions) -> QwenJudge:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    check_options("vqascore", opts.options, OPTIONS)
    mode = option(opts.options, "mode", str, "vqascore")
    if mode not in MODES:
        raise ValueError(f"vqascore: option 'mode' must be one of {list(MODES)}, got {mode!r}")
    device = check_device(opts.device)
    dtype = resolve_dtype(opts, prefer_bf16=True)
    source = opts.source or (UNIFIED_REPO if mode == "unifiedreward" else VQA_REPO)
    found = resolve_dir(source, opts, REQUIRED, OPTIONAL)
    weights = next((found.path / f for f in WEIGHTS if (found.path / f).is_file()), None)
    if weights is None:
        raise WeightsNotFoundError(
            f"weights for {source!r} not found in {found.path}: need {' or '.join(WEIGHTS)} "
            "(with its model-*.safetensors shards)"
        )
    processor = Qwen2_5_VLProcessor.from_pretrained(str(found.path), padding_side="left")
    if not processor.chat_template:
        raise ValueError(f"no chat template in {found.path} (chat_template.json/.jinja)")
    options = {
        "question": option(opts.options, "question", str, QUESTION),
        "answer": option(opts.options, "answer", str, ANSWER),
        "repetition_penalty": option(
            opts.options,
            "repetition_penalty",
            float,
            float(_generation_value(found.path, "repetition_penalty", 1.0)),
        ),
        "max_new_tokens": option(
            opts.options,
            "max_new_tokens",
            int,
            _generation_value(found.path, "max_new_tokens", 512),
        ),
        "min_pixels": option(opts.options, "min_pixels", int, MIN_PIXELS),
        "max_pixels": option(opts.options, "max_pixels", int, MAX_PIXELS),
        "max_batch": option(opts.options, "max_batch", int, DEFAULT_MAX_BATCH),
        "max_batch_pixels": option(opts.options, "max_batch_pixels", int, DEFAULT_MAX_PIXELS),
    }
    if "{prompt}" not in options["question"]:
        raise ValueError("vqascore: option 'question' must contain '{prompt}'")
    for key in ("max_new_tokens", "min_pixels", "max_pixels", "max_batch", "max_batch_pixels"):
        if options[key] < 1:
            raise ValueError(f"vqascore: option {key!r} must be >= 1, got {options[key]}")
    if options["repetition_penalty"] <= 0:
        raise ValueError("vqascore: option 'repetition_penalty' must be > 0")
    size = processor.image_processor.size
    lo, hi = int(size.shortest_edge), int(size.longest_edge)
    options["min_pixels"] = min(max(options["min_pixels"], lo), hi)
    options["max_pixels"] = min(max(options["max_pixels"], options["min_pixels"]), hi)
    model: Any = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(found.path), dtype=dtype)
    model = model.to(device).eval()
    main = replace(found, path=weights)
    info = model_info(mode, "scorer", opts, [main, found], device, dtype)
    return QwenJudge(model, processor, mode, options, info, device)


# --------------------------------------------------------------------------- tiny twin
_TINY_CORPUS = (
    QUESTION,
    UNIFIED_PROMPT,
    "Yes No Yes No Final Score: 1 2 3 4 5",
)


def _tiny_config(tokenizer: Any) -> dict[str, Any]:
    """The tiny twin of Qwen2.5-VL-7B-Instruct's config.json (hpsv3's tiny Qwen2-VL text
    part; a Qwen2.5-VL vision tower: window attention, an out projection)."""
    raw = hpsv3.tiny_base_config(tokenizer)
    raw["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    raw["model_type"] = "qwen2_5_vl"
    raw["vision_config"] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": raw["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "in_chans": 3,
        "tokens_per_second": 2,
    }
    return raw


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/Qwen/Qwen2.5-VL-7B-Instruct/`` and ``out_dir/CodeGoat24/
    UnifiedReward-qwen-7b/``: a tiny random Qwen2.5-VL (hidden 64, 2 layers; vision 32
    wide, 2 blocks; 56x56 images) with the tiny byte-level BPE of hpsv3's twin (trained
    on these prompts too, so "Yes" is one token), Qwen's chat template and a
    generation_config.json with Qwen2.5-VL-Instruct's repetition penalty."""
    import json

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = hpsv3.tiny_tokenizer(_TINY_CORPUS)
    raw = _tiny_config(tokenizer)
    config = Qwen2_5_VLConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    for offset, repo in enumerate((VQA_REPO, UNIFIED_REPO)):
        target = out_dir / repo
        target.mkdir(parents=True, exist_ok=True)
        with seeded(seed + offset):
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
        (target / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        pre = {**hpsv3.tiny_preprocessor_config(), "processor_class": "Qwen2_5_VLProcessor"}
        (target / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        (target / "chat_template.json").write_text(
            json.dumps({"chat_template": hpsv3.QWEN2_VL_CHAT_TEMPLATE}, indent=2) + "\n"
        )
        generation = {
            "bos_token_id": raw["bos_token_id"],
            "eos_token_id": [raw["eos_token_id"], raw["bos_token_id"]],
            "pad_token_id": raw["bos_token_id"],
            "do_sample": True,
            "repetition_penalty": 1.05,
            "temperature": 0.1,
            "top_k": 1,
            "top_p": 0.001,
            # the tiny twin's random answers never stop: keep its generation short
            "max_new_tokens": 12,
        }
        (target / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
