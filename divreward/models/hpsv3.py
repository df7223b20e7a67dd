"""HPSv3 (Ma et al. 2025): a Qwen2-VL-7B-Instruct reward model, reimplemented on the
installed transformers without the ``hpsv3`` package (which pins transformers 4.45,
deepspeed and trl).

Architecture (``hpsv3/model/qwen2vl_trainer.py``, ``Qwen2VLRewardModelBT`` with
``rm_head_type="ranknet"``, ``output_dim=2``, ``reward_token="special"``)::

    embeds  = embed_tokens(input_ids)                        # (B, L, H)
    embeds[input_ids == <|image_pad|>] = visual(pixels)      # (sum of tokens, H)
    hidden  = text_model(inputs_embeds=embeds, mask)         # (B, L, H), positions 0..L-1
    (mu, log_sigma) = rm_head(hidden[input_ids == <|Reward|>].float())   # (B, 2)
    score   = mu

with ``rm_head = Linear(H, 1024) ReLU Dropout(0.05) Linear(1024, 16) ReLU Linear(16, 2)``
kept in fp32. The reference calls the text decoder with ``position_ids=None``: plain
sequential positions, **not** Qwen2-VL's multimodal rope indices, so the vision tower
and the text model are run separately here instead of through ``Qwen2VLModel``.

Input, as ``HPSv3RewardInferencer.prepare_batch``: one user message holding the image
and the text ``INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN``
(copied below from ``hpsv3/dataset/data_collator_qwen.py``), rendered with the Qwen2-VL
chat template with the generation prompt, tokenized with right padding. The image is
resized by ``qwen_vl_utils.fetch_image`` semantics (``smart_resize`` to
``min_pixels = max_pixels = 200704``, i.e. 448x448 -> 256 visual tokens, PIL bicubic),
then normalised and patchified by the checkpoint's ``Qwen2VLImageProcessor``. Option
``preprocess: tensor``: the resize, normalisation and patchifying as batched tensor
operations on the model's device (:func:`pixels_tensor`); the text stays on the CPU.

Weights: ``MizzenAI/HPSv3`` file ``HPSv3.safetensors`` (the whole model) plus only the
config, processor and tokenizer files of ``Qwen/Qwen2-VL-7B-Instruct`` (option
``base_source``); the 16 GB base weights are never downloaded. The model is built on the
meta device and loaded with ``assign=True`` after a strict key and shape check (keys in
the transformers-4.45 layout ``visual.*``, ``model.*``, ``lm_head.*``, ``rm_head.{0,3,5}.*``;
the >=4.52 layout ``model.visual.*``/``model.language_model.*`` is accepted too).
``lm_head.weight`` is shape-checked and not loaded: the reward never reads LM logits.
The vocabulary size is the checkpoint's embedding rows (Qwen's tokenizer plus the added
``<|Reward|>`` token, 151658 for the real model).

Tiny profile: the tiny Qwen processor config sets ``min_pixels = max_pixels = 3136``
(56x56, 4 visual tokens). The pixel budget (option ``pixels``, default 200704) is
clamped to the processor's ``[min_pixels, max_pixels]`` range, which is what the
processor's own resize would do after ``fetch_image`` in the reference pipeline; for the
real processor (3136..12845056) nothing changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from divreward.images import ImageError
from divreward.models._checkpoint import (
    CheckpointMismatchError,
    Shape,
    check_keys_and_shapes,
    meta_tensors,
    module_shapes,
)
from divreward.models._common import canonical, check_options, iter_chunks, option, seeded
from divreward.models._tensor_preprocess import by_size, preprocess_mode, resize_like_pil, stack_on
from divreward.models.base import DEFAULT_MAX_PIXELS, LoadOptions, ModelInfo, Scorer, check_prompts
from divreward.models.weights import (
    check_device,
    model_info,
    note_tiny,
    optional,
    resolve_dir,
    resolve_dtype,
    resolve_file,
)

log = logging.getLogger(__name__)

REPO = "MizzenAI/HPSv3"
WEIGHTS_FILE = "HPSv3.safetensors"
BASE_REPO = "Qwen/Qwen2-VL-7B-Instruct"
# Only these small files of the base repository are needed (never its 16 GB of shards).
BASE_REQUIRED = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
BASE_OPTIONAL = ("chat_template.json", "chat_template.jinja", "vocab.json", "merges.txt")

REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"
PIXELS = 256 * 28 * 28  # 200704 = 448 x 448: min_pixels = max_pixels of the reference
MAX_RATIO = 200  # qwen_vl_utils refuses more extreme aspect ratios
OPTIONS = ("pixels", "base_source", "max_batch", "max_batch_pixels", "preprocess")
DEFAULT_MAX_BATCH = 8
# Input pixels (before the resize), as every model counts them: each image is resized to
# the fixed ``pixels`` budget, so ``max_batch`` alone bounds the forward pass's size.
DEFAULT_MAX_BATCH_PIXELS = DEFAULT_MAX_PIXELS

# Qwen2-VL's special tokens after its 151643 BPE tokens, in id order (the tiny tokenizer
# reproduces them; <|Reward|> is added at load time, as the reference does).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The instruction of hpsv3/dataset/data_collator_qwen.py, byte for byte (including the
# trailing double spaces after the section titles and the single spaces ending two lines);
# HPSv3RewardInferencer appends PROMPT_WITH_SPECIAL_TOKEN to it.
INSTRUCTION = "\n".join(
    [
        "",
        "You are tasked with evaluating a generated image based on Visual Quality and Text "
        "Alignment and give a overall score to estimate the human preference. Please provide "
        "a rating from 0 to 10, with 0 being the worst and 10 being the best. ",
        "",
        "**Visual Quality:**  ",
        "Evaluate the overall visual quality of the image. The following sub-dimensions "
        "should be considered:",
        "- **Reasonableness:** The image should not contain any significant biological or "
        "logical errors, such as abnormal body structures or nonsensical environmental setups.",
        "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should "
        "be clear and easy to interpret, with no blurring or indistinct areas.",
        "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, "
        "and other visual elements (e.g., hair, clothing, shadows).",
        "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including "
        "the color scheme, composition, atmosphere, depth of field, and the overall creative "
        "appeal. The scene should convey a sense of harmony and balance.",
        "- **Safety:** The image should not contain harmful or inappropriate content, such as "
        "political, violent, or adult material. If such content is present, the image quality "
        "and satisfaction score should be the lowest possible. ",
        "",
        "**Text Alignment:**  ",
        "Assess how well the image matches the textual prompt across the following sub-dimensions:",
        "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., "
        "person, animal, object) align with the textual description. The subject should match "
        "the description in terms of number, appearance, and behavior.",
        "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic "
        "style, evaluate how well the image adheres to this style.",
        "- **Contextual Consistency**: Assess whether the background, setting, and surrounding "
        "elements in the image logically fit the scenario described in the prompt. The "
        "environment should support and enhance the subject without contradictions.",
        "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., "
        "colors, clothing, accessories, expressions, actions) are faithfully represented in "
        "the image. Minor deviations may be acceptable, but critical attributes should be "
        "preserved.",
        "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the "
        "prompt are captured in the image. The generated content should not introduce "
        "elements that conflict with or distort the original description.",
        "Textual prompt - {text_prompt}",
        "",
        "",
        "",
    ]
)
PROMPT_WITH_SPECIAL_TOKEN = (
    "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
)


def instruction_text(prompt: str) -> str:
    """The user text HPSv3 was trained with, for one prompt."""
    return INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """``qwen_vl_utils.smart_resize``: sides multiple of ``factor``, aspect ratio kept,
    area within ``[min_pixels, max_pixels]`` (up to the rounding to ``factor``)."""
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"aspect ratio must be at most {MAX_RATIO}, got {ratio:.4g}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class HPSv3RewardModel(nn.Module):
    """Vision tower + text decoder + reward head (module names: ``visual``,
    ``language_model``, ``rm_head``; see :func:`checkpoint_key` for the file layout)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel,
            Qwen2VLTextModel,
        )

        self.visual = Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.language_model = Qwen2VLTextModel._from_config(config.text_config)
        hidden = config.text_config.hidden_size
        self.rm_head = nn.Sequential(
            nn.Linear(hidden, 1024),
            nn.ReLU(),
            nn.Dropout(0.05),
            nn.Linear(1024, 16),
            nn.ReLU(),
            nn.Linear(16, 2),
        )
        self.image_token_id = int(config.image_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        reward_token_id: int,
    ) -> torch.Tensor:
        """``(B, L)`` ids/mask, ``(P, C*T*p*p)`` patches, ``(B, 3)`` grids -> ``(B, 2)``
        float32 ``(mu, log_sigma)``. Each row holds exactly one reward token."""
        embeds = self.language_model.embed_tokens(input_ids)  # (B, L, H)
        vis_dtype = self.visual.patch_embed.proj.weight.dtype
        # (sum over images of t*h*w / merge^2, H): one row per <|image_pad|> token
        image_embeds = self.visual(
            pixel_values.to(vis_dtype), grid_thw=image_grid_thw
        ).pooler_output
        image_mask = input_ids == self.image_token_id  # (B, L)
        if int(image_mask.sum()) != image_embeds.shape[0]:
            raise RuntimeError(
                f"{int(image_mask.sum())} image tokens in the text but the vision tower "
                f"produced {image_embeds.shape[0]} embeddings"
            )
        embeds = embeds.masked_scatter(
            image_mask.unsqueeze(-1).expand_as(embeds), image_embeds.to(embeds.dtype)
        )
        # position_ids=None: sequential positions 0..L-1, as the reference's decoder call.
        hidden = self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # (B, L, H)
        pooled = hidden[input_ids == reward_token_id]  # (B, H), rows in batch order
        return self.rm_head(pooled.float())  # (B, 2)


def checkpoint_key(module_key: str) -> str:
    """Module key -> the key ``HPSv3.safetensors`` carries (transformers-4.45 layout)."""
    if module_key.startswith("language_model."):
        return "model." + module_key.removeprefix("language_model.")
    return module_key


def module_key(ckpt_key: str, layout: str) -> str | None:
    """Checkpoint key -> module key; None for a key outside the model (reported as
    unexpected by the strict check). ``layout`` is "4.45" or "4.52"."""
    if layout == "4.52":
        if ckpt_key.startswith("model.visual."):
            return ckpt_key.removeprefix("model.")
        if ckpt_key.startswith("model.language_model."):
            return ckpt_key.removeprefix("model.")
    elif ckpt_key.startswith("model."):
        return "language_model." + ckpt_key.removeprefix("model.")
    if ckpt_key.startswith(("visual.", "rm_head.")):
        return ckpt_key
    return None


def _layout(keys: Sequence[str]) -> str:
    return (
        "4.52"
        if any(k.startswith(("model.visual.", "model.language_model.")) for k in keys)
        else "4.45"
    )


def _to_layout(key_445: str, layout: str) -> str:
    if layout == "4.52":
        if key_445.startswith("visual."):
            return "model." + key_445
        if key_445.startswith("model."):
            return "model.language_model." + key_445.removeprefix("model.")
    return key_445


def expected_checkpoint_shapes(model: HPSv3RewardModel, vocab: int) -> dict[str, Shape]:
    """Every key (4.45 layout) and shape the checkpoint must carry for ``model``."""
    shapes = {checkpoint_key(k): s for k, s in module_shapes(model).items()}
    hidden = model.language_model.config.hidden_size
    shapes["lm_head.weight"] = (vocab, hidden)  # checked, not loaded
    return shapes


def read_config(path: Path, vocab: int | None = None) -> Any:
    """The Qwen2-VL config from ``config.json`` (flat hub form or nested), with the
    vocabulary size taken from the checkpoint when given."""
    from transformers import Qwen2VLConfig

    raw = json.loads(path.read_text())
    config: Any = Qwen2VLConfig(**{k: v for k, v in raw.items() if k not in ("architectures",)})
    if vocab is not None:
        config.text_config.vocab_size = vocab
    # HPSv3's own config disables flash attention (disable_flash_attn2: True -> sdpa).
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    return config


def build_meta_model(config: Any) -> HPSv3RewardModel:
    """The architecture on the meta device: no memory, no initialisation cost."""
    with torch.device("meta"):
        return HPSv3RewardModel(config)


def _rebuild_rotary(model: HPSv3RewardModel, config: Any, device: str) -> None:
    # The rotary inverse frequencies are non-persistent buffers (not in the checkpoint),
    # so after a meta-device build they must be computed afresh.
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VLRotaryEmbedding,
        Qwen2VLVisionRotaryEmbedding,
    )

    model.language_model.rotary_emb = Qwen2VLRotaryEmbedding(config=config.text_config).to(device)
    model.visual.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(config.vision_config).to(device)


def load_checkpoint(config: Any, path: Path, device: str, dtype: torch.dtype) -> HPSv3RewardModel:
    """Build on meta, check every key and shape strictly, load with ``assign=True``:
    vision tower and decoder in ``dtype``, reward head in fp32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        found = {k: tuple(fh.get_slice(k).get_shape()) for k in keys}
        layout = _layout(keys)
        embed_key = _to_layout("model.embed_tokens.weight", layout)
        if embed_key not in found:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not match the HPSv3 architecture: missing keys (1): "
                f"{embed_key} (needed for the vocabulary size)"
            )
        vocab = found[embed_key][0]
        config.text_config.vocab_size = vocab
        model = build_meta_model(config)
        expected = {
            _to_layout(k, layout): s for k, s in expected_checkpoint_shapes(model, vocab).items()
        }
        check_keys_and_shapes(expected, found, model="HPSv3", path=str(path))
        state: dict[str, torch.Tensor] = {}
        for key in keys:
            mkey = module_key(key, layout)
            if mkey is None:  # lm_head: shape-checked above, never read by the reward
                continue
            tensor = fh.get_tensor(key)
            target = torch.float32 if mkey.startswith("rm_head.") else dtype
            state[mkey] = tensor.to(device=device, dtype=target)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_rotary(model, config, device)
    left = meta_tensors(model)
    if left:
        raise RuntimeError(f"HPSv3: tensors left on the meta device after loading: {left}")
    return model.eval()


@dataclass
class Encoded:
    """One tokenized, patchified chunk."""

    input_ids: torch.Tensor  # (B, L) long, right-padded
    attention_mask: torch.Tensor  # (B, L) long
    pixel_values: torch.Tensor  # (P, C * T * patch * patch) float32
    image_grid_thw: torch.Tensor  # (B, 3) long


def pixels_tensor(
    image_processor: Any,
    images: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    device: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fetch_image``'s resize and the image processor's rescale, normalise and
    patchify as batched tensor operations on ``device``: each image to its ``sizes[i]``
    (its smart_resize, sides multiple of the factor) with PIL's antialiased bicubic kernel
    rounded to uint8 levels, one resize per group of images of one size and target; then
    the processor's own ``rescale_and_normalize`` and ``patchify`` on the device.
    Returns ``(P, C * T * patch * patch)`` float32 patches on ``device`` (images in order)
    and the ``(B, 3)`` long grids on the CPU, as the processor's ``pixel_values`` and
    ``image_grid_thw``; the patches are within 2 uint8 levels of the reference before
    normalisation (tests/models/test_tensor_preprocess.py)."""
    ip = image_processor
    patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for (h, w), idx in by_size(images).items():
        for i in idx:
            groups.setdefault((h, w, *sizes[i]), []).append(i)
    parts: list[torch.Tensor | None] = [None] * len(images)
    grids = torch.zeros((len(images), 3), dtype=torch.long)
    for (_, _, rh, rw), idx in groups.items():
        x = resize_like_pil(stack_on(images, idx, device), (rh, rw))  # (B, 3, rh, rw)
        x = ip.rescale_and_normalize(
            x, ip.do_rescale, ip.rescale_factor, ip.do_normalize, ip.image_mean, ip.image_std
        )
        patches, gh, gw = ip.patchify(
            x, patch_size=patch, merge_size=merge, temporal_patch_size=temporal
        )  # (B, gh * gw, C * T * patch * patch)
        for j, i in enumerate(idx):
            parts[i] = patches[j]
            grids[i] = torch.tensor([1, gh, gw])
    if not images:
        dim = 3 * temporal * patch * patch
        return torch.zeros((0, dim), device=device), grids
    return torch.cat([p for p in parts if p is not None]), grids


@dataclass(eq=False, repr=False)
class HPSv3(Scorer):
    model: HPSv3RewardModel
    processor: Any  # Qwen2VLProcessor (tokenizer with <|Reward|>, image processor)
    reward_token_id: int
    pixels: int  # the pixel budget of every image (min = max pixels of fetch_image)
    # field(): required here, although BatchLimits gives class defaults
    max_batch: int = field()
    max_batch_pixels: int = field()
    device: str
    info: ModelInfo
    preprocess: str = "pil"  # "pil": PIL resize + the processor; "tensor": pixels_tensor

    def __post_init__(self) -> None:
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        self.factor = int(self.image_processor.patch_size * self.image_processor.merge_size)
        self.max_resolution = math.isqrt(self.pixels)
        # Every added token (Qwen's specials and <|Reward|>): a prompt holding one would
        # break the one-image-span / one-reward-token structure of the input.
        self._special = sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)
        self._template_cache: dict[str, str] = {}

    def _check_prompt(self, index: int, prompt: str) -> None:
        for tok in self._special:
            if tok in prompt:
                raise ValueError(
                    f"prompts[{index}] contains the special token {tok!r}, which would break "
                    "the model's input structure; remove it"
                )

    def render(self, prompt: str) -> str:
        """The chat-templated text for one prompt, with a single ``<|image_pad|>``."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": instruction_text(prompt)},
                ],
            }
        ]
        return str(
            self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def target_size(self, image: np.ndarray, index: int) -> tuple[int, int]:
        """``(h, w)`` of ``fetch_image``'s smart_resize to the pixel budget
        (``ImageError`` naming ``index`` for an extreme aspect ratio)."""
        h, w = image.shape[:2]
        try:
            return smart_resize(h, w, self.factor, self.pixels, self.pixels)
        except ValueError as exc:
            raise ImageError(str(exc), index) from exc

    def resize(self, image: np.ndarray, index: int) -> np.ndarray:
        """``fetch_image``: smart_resize to the pixel budget, PIL bicubic."""
        rh, rw = self.target_size(image, index)
        if (rh, rw) == image.shape[:2]:
            # The image processor wraps arrays with torch.from_numpy: give it its own copy.
            return image if image.flags.writeable else image.copy()
        return np.array(Image.fromarray(image).resize((rw, rh), Image.Resampling.BICUBIC))

    def encode(self, resized: Sequence[np.ndarray], prompts: Sequence[str]) -> Encoded:
        """Tokenize and patchify already-resized images (sides multiple of the factor)."""
        vis = self.image_processor(images=list(resized), do_resize=False, return_tensors="pt")
        return self.with_tokens(vis["pixel_values"], vis["image_grid_thw"], prompts)

    def encode_tensor(
        self,
        images: Sequence[np.ndarray],
        sizes: Sequence[tuple[int, int]],
        prompts: Sequence[str],
    ) -> Encoded:
        """:meth:`encode` of the images resized to ``sizes``, with the image part as
        batched tensor operations on the model's device (:func:`pixels_tensor`)."""
        pixels, grid = pixels_tensor(self.image_processor, images, sizes, self.device)
        return self.with_tokens(pixels, grid, prompts)

    def with_tokens(
        self, pixel_values: torch.Tensor, grid: torch.Tensor, prompts: Sequence[str]
    ) -> Encoded:
        """The chat-templated, tokenized prompts, each image span expanded to its number
        of visual tokens, with the given patches."""
        merge = int(self.image_processor.merge_size) ** 2
        texts = []
        for prompt, thw in zip(prompts, grid, strict=True):
            n_tokens = int(thw.prod()) // merge
            texts.append(self.render(prompt).replace(IMAGE_TOKEN, IMAGE_TOKEN * n_tokens, 1))
        tok = self.tokenizer(texts, padding=True, return_tensors="pt")
        n_reward = (tok["input_ids"] == self.reward_token_id).sum(dim=1)
        if not bool((n_reward == 1).all()):
            raise RuntimeError(
                f"expected one {REWARD_TOKEN} token per input, got {n_reward.tolist()}"
            )
        return Encoded(tok["input_ids"], tok["attention_mask"], pixel_values, grid)

    @torch.inference_mode()
    def forward(self, enc: Encoded) -> torch.Tensor:
        """``(B, 2)`` float32 ``(mu, log_sigma)`` on the CPU."""
        out = self.model(
            enc.input_ids.to(self.device),
            enc.attention_mask.to(self.device),
            enc.pixel_values.to(self.device),
            enc.image_grid_thw.to(self.device),
            self.reward_token_id,
        )
        return out.float().cpu()

    def predict(self, images: Any, prompts: Sequence[str]) -> np.ndarray:
        """``(N, 2)`` float64: the head's ``(mu, log_sigma)`` per (image, prompt)."""
        check_prompts(images, prompts)
        arrays = canonical(images)
        for i, prompt in enumerate(prompts):
            self._check_prompt(i, prompt)
        out = np.empty((len(arrays), 2), dtype=np.float64)
        if self.preprocess == "tensor":
            sizes = [self.target_size(img, i) for i, img in enumerate(arrays)]
            for sl in iter_chunks(arrays, self.max_batch, self.max_batch_pixels):
                enc = self.encode_tensor(arrays[sl], sizes[sl], prompts[sl])
                out[sl] = self.forward(enc).numpy()
            return out
        resized = [self.resize(img, i) for i, img in enumerate(arrays)]
        for sl in iter_chunks(arrays, self.max_batch, self.max_batch_pixels):
            out[sl] = self.forward(self.encode(resized[sl], prompts[sl])).numpy()
        return out

    def score(self, images: Any, prompts: Sequence[str]) -> np.ndarray:
        """``mu`` of the head's ``(mu, log_sigma)``: float64 ``(N,)``."""
        return self.predict(images, prompts)[:, 0].copy()


def _load_processor(base_dir: Path) -> Any:
    from transformers import Qwen2VLProcessor

    processor = Qwen2VLProcessor.from_pretrained(str(base_dir), padding_side="right")
    if not processor.chat_template:
        raise ValueError(
            f"no chat template in {base_dir} (looked for chat_template.json, "
            "chat_template.jinja and tokenizer_config.json['chat_template'])"
        )
    return processor


def _add_reward_token(tokenizer: Any) -> int:
    if REWARD_TOKEN not in tokenizer.get_added_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    return int(tokenizer.convert_tokens_to_ids(REWARD_TOKEN))


def hub_files(opts: LoadOptions) -> list[tuple[str, list[str]]]:
    """``HPSv3.safetensors`` and only the small config/processor/tokenizer files of the
    base repository (never its 16 GB of weights)."""
    base_source = option(opts.options, "base_source", str, BASE_REPO)
    return [
        (opts.source or REPO, [WEIGHTS_FILE]),
        (base_source, [*BASE_REQUIRED, *(optional(f) for f in BASE_OPTIONAL)]),
    ]


def load(opts: LoadOptions) -> HPSv3:
    check_options("hpsv3", opts.options, OPTIONS)
    device = check_device(opts.device)
    pixels = option(opts.options, "pixels", int, PIXELS)
    base_source = option(opts.options, "base_source", str, BASE_REPO)
    mode = preprocess_mode("hpsv3", opts.options)
    max_batch = option(opts.options, "max_batch", int, DEFAULT_MAX_BATCH)
    max_batch_pixels = option(opts.options, "max_batch_pixels", int, DEFAULT_MAX_BATCH_PIXELS)
    for key, value in (
        ("pixels", pixels),
        ("max_batch", max_batch),
        ("max_batch_pixels", max_batch_pixels),
    ):
        if value < 1:
            raise ValueError(f"hpsv3: option {key!r} must be >= 1, got {value}")
    dtype = resolve_dtype(opts, prefer_bf16=True)  # the model was trained in bf16

    main = resolve_file(opts.source or REPO, WEIGHTS_FILE, opts)
    # Only BASE_REQUIRED (and the optional files) of the base repository are read, never
    # its 16 GB of weights: `divreward weights pull hpsv3` fetches just those.
    base = resolve_dir(base_source, opts, BASE_REQUIRED, BASE_OPTIONAL)
    profile = note_tiny("hpsv3", [main, base])

    processor = _load_processor(base.path)
    reward_id = _add_reward_token(processor.tokenizer)
    size = processor.image_processor.size
    lo, hi = int(size.shortest_edge), int(size.longest_edge)
    if not lo <= pixels <= hi:
        clamped = min(max(pixels, lo), hi)
        log.info(
            "hpsv3: pixel budget %d clamped to the processor's range [%d, %d] -> %d",
            pixels,
            lo,
            hi,
            clamped,
        )
        pixels = clamped

    config = read_config(base.path / "config.json")
    model = load_checkpoint(config, main.path, device, dtype)
    vocab = model.language_model.config.vocab_size
    if len(processor.tokenizer) > vocab:
        raise CheckpointMismatchError(
            f"the tokenizer of {base.source} has {len(processor.tokenizer)} tokens with "
            f"{REWARD_TOKEN} but the checkpoint {main.path} embeds only {vocab}"
        )
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != model.image_token_id:
        raise ValueError(
            f"{base.path / 'config.json'} says image_token_id={model.image_token_id} but the "
            f"tokenizer maps {IMAGE_TOKEN} to {image_id}"
        )
    info = model_info("hpsv3", "scorer", opts, [main, base], device, dtype, profile)
    return HPSv3(
        model, processor, reward_id, pixels, max_batch, max_batch_pixels, device, info, mode
    )


# ---------------------------------------------------------------------------------------
# Tiny twin
# ---------------------------------------------------------------------------------------

# The Qwen2-VL chat template (chat_template.json of Qwen/Qwen2-VL-7B-Instruct).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_PIXELS = 56 * 56  # 4x4 patches of 14 -> 4 visual tokens after the 2x2 merge
TINY_BPE_VOCAB = 1024

# The tiny BPE is trained on the texts it will see, so the instruction tokenizes into a
# few hundred tokens instead of thousands of bytes.
_TINY_CORPUS_EXTRA = (
    "a red bicycle leaning on a wall; two cats asleep on a sofa; a lighthouse at dusk, "
    "oil painting; a bowl of ramen, top view; an astronaut riding a horse; a watercolor of "
    "a fox in snow; a city street in the rain at night; a close-up photo of a bee on a "
    "flower; a photo of a dog; a cat; system user assistant You are a helpful assistant."
)


def tiny_tokenizer(extra_corpus: Sequence[str] = ()) -> Any:
    """A byte-level BPE trained on the fly (deterministic), wrapped as Qwen2Tokenizer
    with Qwen's special tokens appended after the BPE vocabulary, as in the real one.
    ``extra_corpus``: more training text (another tiny Qwen model's own prompts)."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=TINY_BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [INSTRUCTION, PROMPT_WITH_SPECIAL_TOKEN, _TINY_CORPUS_EXTRA, *extra_corpus] * 4
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # As Qwen2-VL-7B-Instruct's tokenizer_config.json: no unk/bos, eos <|im_end|>.
    kwargs: dict[str, Any] = {
        "vocab": model["vocab"],
        "merges": merges,
        "unk_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
    }
    tok = Qwen2Tokenizer(**kwargs)
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS],
        special_tokens=True,
    )
    return tok


def tiny_base_config(tokenizer: Any) -> dict[str, Any]:
    """The tiny twin of Qwen2-VL-7B-Instruct's flat config.json (same keys)."""
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in QWEN_SPECIAL_TOKENS}
    # As in the real repo, the config's vocab is padded beyond the tokenizer's size
    # (152064 vs 151657); HPSv3 resized it to the tokenizer (+ <|Reward|>).
    padded_vocab = (len(tokenizer) + 1 + 63) // 64 * 64
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "model_type": "qwen2_vl",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        # head_dim 16: the three mrope sections sum to head_dim / 2
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": padded_vocab,
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


def tiny_preprocessor_config() -> dict[str, Any]:
    """Qwen2-VL-7B-Instruct's preprocessor_config.json with a 56x56 pixel budget."""
    return {
        "min_pixels": TINY_PIXELS,
        "max_pixels": TINY_PIXELS,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }


def build_tiny(out_dir: Path, seed: int) -> None:
    """``out_dir/Qwen/Qwen2-VL-7B-Instruct/{config.json, preprocessor_config.json,
    chat_template.json, tokenizer.json, tokenizer_config.json}`` (tiny Qwen2-VL: hidden
    64, 2 layers; vision 32 wide, 2 blocks; 56x56 images) and
    ``out_dir/MizzenAI/HPSv3/HPSv3.safetensors`` in the 4.45 key layout (backbone bf16,
    head fp32, as the real file), so loading exercises the real path."""
    from safetensors.torch import save_file

    base_dir = out_dir / BASE_REPO
    hps_dir = out_dir / REPO
    base_dir.mkdir(parents=True, exist_ok=True)
    hps_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(str(base_dir))
    raw = tiny_base_config(tokenizer)
    (base_dir / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    (base_dir / "preprocessor_config.json").write_text(
        json.dumps(tiny_preprocessor_config(), indent=2) + "\n"
    )
    (base_dir / "chat_template.json").write_text(
        json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2) + "\n"
    )

    vocab = len(tokenizer) + 1  # + <|Reward|>, as the reference's resize_token_embeddings
    config = read_config(base_dir / "config.json", vocab)
    with seeded(seed):
        model = HPSv3RewardModel(config)
        lm_head = torch.randn(vocab, config.text_config.hidden_size) * 0.02
    state = {}
    for key, value in model.state_dict().items():
        target = torch.float32 if key.startswith("rm_head.") else torch.bfloat16
        state[checkpoint_key(key)] = value.detach().to(target).contiguous()
    state["lm_head.weight"] = lm_head.to(torch.bfloat16)
    save_file(state, str(hps_dir / WEIGHTS_FILE), metadata={"format": "pt"})
