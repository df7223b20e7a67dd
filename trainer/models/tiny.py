"""Tiny random pipelines of the trainer's model families: the shared parts.

For tests, ``make demo`` and the ``tiny-cpu`` preset: no weights can be downloaded, so the
models are built from configs (sizes from diffusers' own tests, TRAINER.md) and saved with
``save_pretrained``; the adapters then load them with ``from_pretrained(<dir>)``, the same
loader a hub id or a real weights directory goes through. Each family's tiny architecture
is its adapter's ``build_tiny`` (in the family's own file); this module holds what they
share (the tokenizers, the CLIP config, the VAE, the atomic build directory) and
:func:`ensure_tiny_model`, which maps ``tiny-<family>`` to the registry's family.

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

__all__ = [
    "MARKER",
    "build_pipeline_dir",
    "clip_config",
    "clip_tokenizer",
    "ensure_tiny_model",
    "t5_tokenizer",
    "tiny_builder",
    "tiny_vae",
]

MARKER = "divreward-tiny-pipeline.json"
_VERSION = 1  # bump when the tiny architectures change (stale builds are rebuilt)

# CLIP's special tokens in the real BPE (clip_bpe puts them last).
_CLIP_BOS, _CLIP_EOS, _CLIP_VOCAB = 49406, 49407, 49408


@functools.cache
def clip_tokenizer() -> Any:  # ~1.5 s to build from the BPE; shared by both builders
    from transformers import CLIPTokenizer

    from divreward.models._clip_common import CONTEXT_LENGTH, clip_bpe

    vocab, merges = clip_bpe()
    merge_pairs: Any = list(merges)
    return CLIPTokenizer(vocab=dict(vocab), merges=merge_pairs, model_max_length=CONTEXT_LENGTH)


def clip_config(**overrides: Any) -> Any:
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


def tiny_vae(latent_channels: int) -> Any:
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


def t5_tokenizer() -> Any:
    """A character-level unigram T5 tokenizer, built in memory (no sentencepiece)."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_pipeline_dir(
    kind: str, builder: Callable[[int], Any], out_dir: str | Path, seed: int
) -> Path:
    """``builder(seed)``'s pipeline saved into ``out_dir`` (atomically, with a marker);
    a no-op when ``out_dir`` already holds this build."""
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


def tiny_builder(family: str) -> Callable[..., Path]:
    """``build(out_dir, seed=0) -> Path`` of a registered family: its adapter's
    ``build_tiny``."""
    from divreward.trainer.models.registry import get_adapter

    return get_adapter(family).build_tiny


def ensure_tiny_model(
    name: str, cache_dir: str | Path = ".cache/tiny-models", seed: int = 0
) -> tuple[str, Path]:
    """``"tiny-<family>"`` (``"tiny-sd3"``, ``"tiny-flux"``, any registered family) ->
    (family, pipeline directory), built into ``cache_dir/<family>`` if missing."""
    from divreward.trainer.models.registry import ADAPTERS

    family = name.removeprefix("tiny-")
    if not name.startswith("tiny-") or family not in ADAPTERS:
        known = sorted(f"tiny-{f}" for f in ADAPTERS)
        raise KeyError(f"unknown tiny model {name!r}; known: {known}")
    return family, tiny_builder(family)(Path(cache_dir) / family, seed=seed)
