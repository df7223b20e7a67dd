"""Tiny random SD3 and Flux pipelines, written as diffusers pipeline directories.

For tests, ``make demo`` and the ``tiny-cpu`` preset: no weights can be downloaded, so the
models are built from configs (sizes from diffusers' own tests, TRAINER.md) and saved with
``save_pretrained``; the adapters then load them with ``from_pretrained(<dir>)``, the same
loader a hub id or a real weights directory goes through.

Tokenizers are built offline: the CLIP tokenizer is the real 49,408-token BPE rebuilt from
the vocabulary inside open_clip's wheel (:func:`divreward.models._clip_common.clip_bpe`);
Flux's T5 tokenizer is a small unigram vocabulary built in memory (transformers 5 needs
no sentencepiece file). A marker file records a finished build, so building again into
the same directory is a cheap no-op.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MARKER",
    "TINY_BUILDERS",
    "TINY_MODELS",
    "build_tiny_flux",
    "build_tiny_sd3",
    "build_tiny_toy",
    "ensure_tiny_model",
]

MARKER = "divreward-tiny-pipeline.json"
_VERSION = 1  # bump when the tiny architectures change (stale builds are rebuilt)

# CLIP's special tokens in the real BPE (clip_bpe puts them last).
_CLIP_BOS, _CLIP_EOS, _CLIP_VOCAB = 49406, 49407, 49408


@functools.cache
def _clip_tokenizer() -> Any:  # ~1.5 s to build from the BPE; shared by both builders
    from transformers import CLIPTokenizer

    from divreward.models._clip_common import CONTEXT_LENGTH, clip_bpe

    vocab, merges = clip_bpe()
    merge_pairs: Any = list(merges)
    return CLIPTokenizer(vocab=dict(vocab), merges=merge_pairs, model_max_length=CONTEXT_LENGTH)


def _clip_config(**overrides: Any) -> Any:
    from transformers import CLIPTextConfig

    cfg: dict[str, Any] = {
        "bos_token_id": _CLIP_BOS,
        "eos_token_id": _CLIP_EOS,
        "pad_token_id": _CLIP_EOS,
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "vocab_size": _CLIP_VOCAB,
        "hidden_act": "gelu",
        "projection_dim": 32,
        "max_position_embeddings": 77,
    }
    cfg.update(overrides)
    return CLIPTextConfig(**cfg)


def _tiny_vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def _t5_tokenizer() -> Any:
    """A character-level unigram T5 tokenizer, built in memory (no sentencepiece)."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _build_sd3(seed: int) -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(_clip_config())
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config())
    torch.manual_seed(seed + 3)
    vae = _tiny_vae(latent_channels=4)
    tokenizer = _clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3.5's schedule
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _build_flux(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,  # Flux.1-dev's embedded guidance
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(_clip_config())  # pooled output = hidden 32
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(seed + 3)
    vae = _tiny_vae(latent_channels=1)  # 2x2 packing gives the transformer's 4 channels
    # Flux.1-dev's scheduler: resolution-dependent shift (mu from the image sequence length).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
    )


def _build(kind: str, builder: Callable[[int], Any], out_dir: str | Path, seed: int) -> Path:
    out = Path(out_dir)
    want = {"kind": kind, "seed": seed, "version": _VERSION}
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"{out} exists and is not a tiny {kind} pipeline directory (no {MARKER}); "
            "refusing to overwrite it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a reader never sees a half-written directory
    # (two processes building at once both finish; the second rename is skipped).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe = builder(seed)
        pipe.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps(want))
        if out.exists():
            shutil.rmtree(out)  # a stale tiny build (marker of another seed or version)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_sd3(out_dir: str | Path, seed: int = 0) -> Path:
    """A random tiny ``StableDiffusion3Pipeline`` (no T5) in ``out_dir``; returns it."""
    return _build("sd3", _build_sd3, out_dir, seed)


def build_tiny_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """A random tiny ``FluxPipeline`` (guidance-embedded, like Flux.1-dev) in ``out_dir``."""
    return _build("flux", _build_flux, out_dir, seed)


def build_tiny_toy(out_dir: str | Path, seed: int = 0) -> Path:
    """An untrained toy flow model (:mod:`divreward.trainer.models.toy`) in ``out_dir``."""
    from divreward.trainer.models.toy import build_tiny_toy as build

    return build(out_dir, seed=seed)


# family -> builder; a test checks every registered family has one.
TINY_BUILDERS: dict[str, Callable[..., Path]] = {
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "toy": build_tiny_toy,
}

# The model names a config may give instead of a hub id or directory.
TINY_MODELS: dict[str, str] = {"tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-toy": "toy"}


def ensure_tiny_model(
    name: str, cache_dir: str | Path = ".cache/tiny-models", seed: int = 0
) -> tuple[str, Path]:
    """``"tiny-sd3"`` / ``"tiny-flux"`` -> (family, pipeline directory), built into
    ``cache_dir/<family>`` if missing."""
    family = TINY_MODELS.get(name)
    if family is None:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_MODELS)}")
    return family, TINY_BUILDERS[family](Path(cache_dir) / family, seed=seed)
