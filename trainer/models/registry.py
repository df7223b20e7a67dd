"""Model families by name, imported lazily: importing this module loads no model code.

Adding a family (Qwen-Image, an SD3 variant, ...) is one file and one line:

1. ``trainer/models/<family>.py``: a :class:`~divreward.trainer.models.base.DiffusionAdapter`
   subclass with ``family``, ``default_lora_targets`` and eight methods —
   ``from_pretrained`` (the diffusers loader; ``from_diffusers`` does the loading),
   ``build_tiny`` (a tiny random model of the architecture, for tests and
   ``model: tiny-<family>``; :mod:`divreward.trainer.models.tiny` has the shared parts),
   ``_encode_uncached`` (the pipeline's ``encode_prompt``; caching is the base class's),
   ``negative_embeds`` (CFG's empty prompt or None), ``initial_latents`` (noise drawn as
   the pipeline draws it), ``sigmas`` (the pipeline's schedule), ``_denoise`` (one
   denoiser forward; CFG is the base class's) and ``_decode_latents``. A pipeline with a
   VAE subclasses :class:`~divreward.trainer.models.base.LatentDiffusionAdapter`, which
   draws the noise and decodes given the latent channels and patch. The rollout, the
   training step, LoRA, the reference policy and saving come from the base class.
2. One line in :data:`ADAPTERS` below.
3. Its tests: an entry in ``tests/trainer/trainer_tiny.py`` (guidance, load options), and
   the contract tests run on the new family (a test fails while a registered family has
   no entry).

A dotted ``"package.module:Class"`` is accepted as well, for adapters outside this package,
and :func:`register_family` names one at runtime (``family: <name>`` in a TrainConfig then
loads it; the collapse experiment registers its toy family so).
"""

from __future__ import annotations

import importlib

from divreward.trainer.models.base import DiffusionAdapter

__all__ = ["ADAPTERS", "get_adapter", "register_family"]

ADAPTERS: dict[str, str] = {
    "sd3": "divreward.trainer.models.sd3:SD3Adapter",
    "flux": "divreward.trainer.models.flux:FluxAdapter",
}


def register_family(name: str, target: str) -> None:
    """Register family ``name`` as ``target`` (``"package.module:Class"``, imported when the
    family is first used). Registering the same target again is a no-op; another target
    under a taken name is a ValueError."""
    module_name, sep, attr = target.partition(":")
    if not name or ":" in name:
        raise ValueError(f"register_family: bad family name {name!r}")
    if not sep or not module_name or not attr:
        raise ValueError(f"register_family({name!r}): target {target!r} is not 'module:Class'")
    current = ADAPTERS.get(name)
    if current is not None and current != target:
        raise ValueError(f"register_family: family {name!r} is already {current!r}")
    ADAPTERS[name] = target


def get_adapter(name: str) -> type[DiffusionAdapter]:
    """The adapter class of family ``name`` (or of a ``"module:Class"`` path)."""
    target = ADAPTERS.get(name)
    if target is None:
        if ":" not in name:
            raise KeyError(
                f"unknown model family {name!r}; known: {sorted(ADAPTERS)} "
                "(or give a 'package.module:Class' path)"
            )
        target = name
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"model family {name!r}: cannot import {target!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, DiffusionAdapter)):
        raise TypeError(f"model family {name!r}: {target!r} is not a DiffusionAdapter subclass")
    return cls
