"""The toy family: a small flow-matching MLP over 16x16 RGB images (the collapse experiment's).

Small enough to train with GRPO on two CPU cores, so the mode-collapse experiment
(``make bench-collapse``) runs the trainer's own loop, SDE step and losses on it. It is not
part of the installed trainer: :func:`register` adds it to the trainer's family registry
(:func:`divreward.trainer.models.register_family`) as ``family: toy``.

- Model: a directory holding ``flow/``, a :class:`experiments.collapse.nets.FlowNet` saved with
  diffusers' ``save_pretrained`` (``experiments.collapse.pretrain.ensure_toy`` builds one;
  :func:`build_tiny_toy` writes an untrained one for tests).
- Prompts: the net's own prompt table (the generic prompt, then one per mode); an unknown
  prompt is an error that lists the known ones (test models built with ``open_prompts``
  embed any text). No CFG: ``guidance`` is ignored.
- Latents are the images themselves, ``(B, 3, 16, 16)`` in [-1, 1]; decoding is the
  identity. The schedule is linear in sigma from 1 to 0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from divreward.trainer.models import DiffusionAdapter, PromptEmbeds, register_family
from divreward.trainer.models.base import dtype_kwarg

__all__ = ["FAMILY", "ToyAdapter", "build_tiny_toy", "register"]

#: The family's name in the trainer's registry (``TrainConfig.family``).
FAMILY = "toy"


def register() -> None:
    """Make ``family: toy`` load :class:`ToyAdapter` (idempotent)."""
    register_family(FAMILY, f"{__name__}:ToyAdapter")


class ToyAdapter(DiffusionAdapter):
    family: ClassVar[str] = FAMILY
    default_lora_targets: ClassVar[tuple[str, ...]] = ("fc_in", "fc1", "fc2", "fc_out")

    @classmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device, dtype: torch.dtype, **options: Any
    ) -> ToyAdapter:
        """``model``: a toy directory (with ``flow/``) or the ``flow/`` directory itself.
        ``options``: the adapter's (``autocast_dtype``; ``prompt_cache_size``, default 1024
        here)."""
        from experiments.collapse.nets import FlowNet

        path = Path(model)
        flow_dir = path / "flow" if (path / "flow").is_dir() else path
        if not (flow_dir / "config.json").is_file():
            raise ValueError(
                f"toy model {model!r}: no FlowNet there (expected {flow_dir}/config.json); "
                "build one with experiments.collapse.pretrain.ensure_toy"
            )
        net = FlowNet.from_pretrained(str(flow_dir), **dtype_kwarg(dtype)).to(device)
        options.setdefault("prompt_cache_size", 1024)
        return cls(SimpleNamespace(transformer=net), device=device, dtype=dtype, **options)

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int = 0) -> Path:
        """An untrained toy model directory (:func:`build_tiny_toy`)."""
        return build_tiny_toy(out_dir, seed=seed)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(self.transformer_config.prompts)

    def _encode_uncached(self, prompts: list[str]) -> dict[str, Tensor]:
        known = {p: i for i, p in enumerate(self.prompts)}
        table = cast(Any, self.transformer).prompt_table
        open_prompts = bool(self.transformer_config.get("open_prompts", False))
        rows = []
        for p in prompts:
            if p in known:
                idx = torch.tensor([known[p]], device=table.weight.device)
                rows.append(table(idx)[0].detach().float())
            elif open_prompts:  # test models: a fixed embedding per text
                seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
                g = torch.Generator().manual_seed(seed)
                rows.append(torch.randn(table.embedding_dim, generator=g).to(self.device))
            else:
                raise ValueError(f"toy model: unknown prompt {p!r}; known: {list(known)}")
        return {"prompt_embeds": torch.stack(rows).to(self.device)}

    def negative_embeds(self) -> PromptEmbeds | None:
        return None

    def _size(self, height: int, width: int) -> int:
        size = int(self.transformer_config.size)
        if (height, width) != (size, size):
            raise ValueError(f"toy model: images are {size}x{size}; got {height}x{width}")
        return size

    def initial_latents(self, n: int, *, height: int, width: int, generator: Any = None) -> Tensor:
        size = self._size(height, width)
        shape = (3, size, size)
        if isinstance(generator, list | tuple):
            if len(generator) != n:
                raise ValueError(f"initial_latents: {len(generator)} generators for {n} rows")
            rows = [torch.randn(shape, generator=g) for g in generator]
            return torch.stack(rows).to(self.device)
        return torch.randn((n, *shape), generator=generator).to(self.device)

    def sigmas(self, num_steps: int, *, height: int, width: int) -> Tensor:
        self._size(height, width)
        return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)

    def _denoise(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, guidance: float) -> Tensor:
        cond = embeds.tensors["prompt_embeds"].to(self.device, self.dtype)
        with self._autocast():
            return self.transformer(x.to(self.device, self.dtype), t, cond)

    def _decode_latents(self, x: Tensor) -> Tensor:
        return x.float()

    def save_lora(self, path: str | Path) -> None:
        """The LoRA as ``adapter_model.safetensors`` (diffusers key names) with its peft
        config in ``adapter_config.json`` (there is no diffusers pipeline class to load
        it into; ``load_lora_state_dict`` reads it back)."""
        from safetensors.torch import save_file

        self._need_lora("save_lora")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.lora_state_dict(), str(out / "adapter_model.safetensors"))
        cfg = cast(Any, self.transformer).peft_config[self._lora_adapter].to_dict()
        cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
        (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=str))


def build_tiny_toy(out_dir: str | Path, seed: int = 0) -> Path:
    """An untrained small toy model directory (tests); cheap, rebuilt only when missing."""
    from experiments.collapse.nets import FlowNet

    out = Path(out_dir)
    if (out / "flow" / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    net = FlowNet(prompts=("a toy image",), width=64, depth=1, open_prompts=True)
    net.save_pretrained(str(out / "flow"))
    return out
