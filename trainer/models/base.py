"""The model-adapter contract: a diffusers pipeline seen as a policy for GRPO.

An adapter does three things for the trainer (TRAINER.md): encode prompts once (cached per
text), run a rollout that records every latent, transition mean and log-probability, and
take the single denoising step the loss needs, with gradients into a peft LoRA. The
reference policy is the same network with the LoRA disabled (:meth:`reference`), never a
second copy.

A family implements six small methods (prompt encoding, the empty prompt for CFG, initial
noise, the sigma schedule, the denoiser's velocity, decoding); loading a diffusers
pipeline, classifier-free guidance, the rollout, the training step, LoRA handling and
saving are written once here, so that the rollout and the step share one
numeric path: same latents (stored float32), same sigmas, same dtype, same batch layout.
That is what makes the PPO ratio exactly 1 on the first inner epoch.

Latents are float32 wherever the adapter hands them out; the denoiser runs in the model
dtype (optionally under autocast), and the step math (:mod:`divreward.trainer.sde`) runs
in float32.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

import torch
from torch import Tensor

from divreward.trainer.sde import StepOut, sde_step_with_logprob

__all__ = [
    "ATTENTION_LORA_TARGETS",
    "DiffusionAdapter",
    "LatentDiffusionAdapter",
    "PromptCache",
    "PromptEmbeds",
    "Rollout",
    "check_autocast",
    "dtype_kwarg",
    "load_vae",
]

Index = Tensor | list[int] | slice


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword for the weights' dtype: ``dtype`` where diffusers
    has it (``torch_dtype`` is deprecated there), ``torch_dtype`` on older releases."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def check_autocast(
    device: str | torch.device, dtype: torch.dtype, autocast_dtype: torch.dtype | None
) -> None:
    """Autocast is a CUDA option (CPU runs in the model dtype); checked before loading."""
    if autocast_dtype is not None and torch.device(device).type != "cuda":
        raise ValueError(
            f"autocast_dtype={autocast_dtype} is for CUDA; device {device} runs in the "
            f"model dtype ({dtype})"
        )


def load_vae(model: str, dtype: torch.dtype) -> Any:
    """The pipeline's ``AutoencoderKL`` (subfolder ``vae``) in ``dtype``."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(model, subfolder="vae", **dtype_kwarg(dtype))


#: Flow-GRPO's LoRA targets in the joint-attention blocks of SD3 and Flux (TRAINER.md).
ATTENTION_LORA_TARGETS: tuple[str, ...] = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)


@dataclass
class PromptEmbeds:
    """Encoded prompts, one row per image: ``tensors`` are batch-first ``(B, ...)`` with
    family-specific keys (SD3: ``prompt_embeds``, ``pooled_prompt_embeds``)."""

    prompts: list[str]
    tensors: dict[str, Tensor]

    def __post_init__(self) -> None:
        for key, t in self.tensors.items():
            if t.ndim == 0 or t.shape[0] != len(self.prompts):
                raise ValueError(
                    f"PromptEmbeds.tensors[{key!r}] has shape {tuple(t.shape)}; "
                    f"expected a batch-first tensor with {len(self.prompts)} rows (one per prompt)"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, idx: Index) -> PromptEmbeds:
        """Rows ``idx`` (a slice, a list of ints or an integer tensor)."""
        if isinstance(idx, slice):
            return PromptEmbeds(self.prompts[idx], {k: v[idx] for k, v in self.tensors.items()})
        rows = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        prompts = [self.prompts[int(i)] for i in rows.tolist()]
        return PromptEmbeds(
            prompts, {k: v.index_select(0, rows.to(v.device)) for k, v in self.tensors.items()}
        )

    def repeat(self, n: int) -> PromptEmbeds:
        """Each prompt ``n`` times, consecutively (a group of ``n`` images per prompt)."""
        if n < 1:
            raise ValueError(f"repeat: n must be >= 1, got {n}")
        return PromptEmbeds(
            [p for p in self.prompts for _ in range(n)],
            {k: v.repeat_interleave(n, dim=0) for k, v in self.tensors.items()},
        )

    def map(self, fn: Callable[[str, Tensor], Tensor]) -> PromptEmbeds:
        """``fn(key, tensor)`` applied to every tensor (e.g. DRIFT's prompt noise)."""
        return PromptEmbeds(list(self.prompts), {k: fn(k, v) for k, v in self.tensors.items()})

    def to(self, device: str | torch.device) -> PromptEmbeds:
        return PromptEmbeds(list(self.prompts), {k: v.to(device) for k, v in self.tensors.items()})

    @classmethod
    def cat(cls, parts: Sequence[PromptEmbeds]) -> PromptEmbeds:
        """Rows of ``parts`` one after the other (same keys required)."""
        if not parts:
            raise ValueError("PromptEmbeds.cat: nothing to concatenate")
        keys = set(parts[0].tensors)
        for p in parts[1:]:
            if set(p.tensors) != keys:
                raise ValueError(
                    f"PromptEmbeds.cat: keys differ ({sorted(keys)} vs {sorted(p.tensors)})"
                )
        return cls(
            [s for p in parts for s in p.prompts],
            {k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors},
        )


@dataclass
class Rollout:
    """A batch of sampled trajectories. T = number of denoising steps."""

    images: Tensor  # (B, 3, H, W) float32 in [0, 1], on CPU
    latents: Tensor  # (B, T+1, *latent) float32: x at each of the T+1 sigmas (0 = noise)
    log_probs: Tensor  # (B, T) float32 (0 where the step is ODE)
    means: Tensor  # (B, T, *latent) float32 transition means
    sigmas: Tensor  # (T+1,) float32 schedule, ending at 0
    sde_mask: Tensor  # (T,) bool: which steps used the SDE (the trainable steps)

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1


class PromptCache:
    """Encoded prompts per text, least recently used first out (``size`` texts)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"prompt cache size must be >= 1, got {size}")
        self.size = size
        self._rows: OrderedDict[str, dict[str, Tensor]] = OrderedDict()

    def __contains__(self, text: str) -> bool:
        return text in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, text: str) -> dict[str, Tensor]:
        self._rows.move_to_end(text)
        return self._rows[text]

    def put(self, text: str, row: dict[str, Tensor]) -> None:
        self._rows[text] = row
        self._rows.move_to_end(text)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)


class DiffusionAdapter(ABC):
    """A diffusers pipeline as a GRPO policy. Subclasses: one file per family, registered
    by one line in :mod:`divreward.trainer.models.registry`."""

    family: ClassVar[str]
    default_lora_targets: ClassVar[tuple[str, ...]]
    transformer: torch.nn.Module  # the denoiser that gets the LoRA
    decode_batch: int = 8  # images per VAE decode call (bounds the decoder's memory)

    @property
    def transformer_config(self) -> Any:
        """The denoiser's diffusers config (a FrozenDict that diffusers annotates as a plain
        dict, though its fields are read as attributes: ``.patch_size``)."""
        return cast(Any, self.transformer).config

    def __init__(
        self,
        pipeline: Any,
        *,
        device: str | torch.device,
        dtype: torch.dtype,
        autocast_dtype: torch.dtype | None = None,
        prompt_cache_size: int = 256,
    ) -> None:
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.device = torch.device(device)
        self.dtype = dtype
        check_autocast(self.device, dtype, autocast_dtype)
        self.autocast_dtype = autocast_dtype
        # Encoded prompts stay on the device: SD3.5 with T5 holds ~2.7 MB per text in bf16
        # (333 tokens x 4096), Flux ~4 MB (512 tokens), hence a bounded LRU.
        self._cache = PromptCache(prompt_cache_size)
        self._lora_adapter: str | None = None
        # Everything frozen; add_lora makes the LoRA parameters (only) trainable.
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(pipeline, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()

    @classmethod
    def from_diffusers(
        cls,
        pipeline_cls: Any,
        model: str,
        *,
        device: str | torch.device,
        dtype: torch.dtype,
        vae_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        prompt_cache_size: int = 256,
        components: dict[str, Any] | None = None,
        **adapter_options: Any,
    ) -> Self:
        """An adapter over a diffusers pipeline (``pipeline_cls``) from a hub id or a local
        directory, on ``device``: the VAE in its own dtype (fp32 decoding by default), no
        progress bars, ``components`` passed to the loader (e.g. ``text_encoder_3=None``)
        and ``adapter_options`` to the family's constructor. The autocast choice is checked
        before any weights load."""
        check_autocast(device, dtype, autocast_dtype)
        components = dict(components or {})
        if vae_dtype != dtype:
            components["vae"] = load_vae(model, vae_dtype)
        pipe = pipeline_cls.from_pretrained(model, **dtype_kwarg(dtype), **components)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        if gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        return cls(
            pipe,
            device=device,
            dtype=dtype,
            autocast_dtype=autocast_dtype,
            prompt_cache_size=prompt_cache_size,
            **adapter_options,
        )

    # --- what a family implements --------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device, dtype: torch.dtype, **options: Any
    ) -> DiffusionAdapter:
        """Load from a hub id or a local pipeline directory through the diffusers loader."""

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int = 0) -> Path:
        """Write a tiny random model of this family's architecture into ``out_dir`` (a
        directory :meth:`from_pretrained` loads; tests, ``make demo``, ``model: tiny-<family>``)
        and return it; a no-op when it is already there. Every registered family has one
        (a test checks); an adapter given by a dotted path may go without."""
        raise NotImplementedError(
            f"model family {getattr(cls, 'family', cls.__name__)!r} has no tiny builder "
            "(its adapter's build_tiny): give a model directory or hub id instead"
        )

    @classmethod
    def skipped_components(cls, model: str, **options: Any) -> dict[str, None]:
        """The pipeline components that ``from_pretrained(model, **options)`` does not load
        (given to diffusers as None); ``divreward weights pull --preset`` leaves them out."""
        return {}

    @abstractmethod
    def _encode_uncached(self, prompts: list[str]) -> dict[str, Tensor]:
        """Encode ``prompts`` (no grad): batch-first tensors, one row per prompt."""

    @abstractmethod
    def negative_embeds(self) -> PromptEmbeds | None:
        """CFG's empty prompt (one row), encoded once; None for families without CFG."""

    @abstractmethod
    def initial_latents(self, n: int, *, height: int, width: int, generator: Any = None) -> Tensor:
        """(n, *latent) float32 standard-normal noise on the device, drawn as the pipeline
        draws it (so that the same generator gives the pipeline's starting point)."""

    @abstractmethod
    def sigmas(self, num_steps: int, *, height: int, width: int) -> Tensor:
        """(T+1,) float32 schedule the pipeline would use, ending at 0."""

    @abstractmethod
    def _denoise(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, guidance: float) -> Tensor:
        """The denoiser's velocity for ``len(embeds)`` rows: ``x`` (B, *latent) float32,
        ``t`` (B,) float32 sigmas, 1 = noise. Runs in the model dtype; any float dtype out
        (:meth:`velocity` casts to float32 and applies CFG around it)."""

    @abstractmethod
    def _decode_latents(self, x: Tensor) -> Tensor:
        """(b, *latent) float32 -> (b, 3, H, W) in [-1, 1] (the VAE's output), no grad."""

    # --- prompts -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """One row per prompt; each distinct text is encoded once and cached."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode_prompts: no prompts")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"encode_prompts: prompt {i} is {type(p).__name__}, not str")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            encoded = self._encode_uncached(missing)
            for i, text in enumerate(missing):
                self._cache.put(text, {k: v[i] for k, v in encoded.items()})
        # Read every row before stacking: a batch larger than the cache still gets all rows.
        rows = [self._cache.get(p) if p in self._cache else None for p in prompts]
        if any(r is None for r in rows):
            raise ValueError(
                f"encode_prompts: {len(set(prompts))} distinct prompts in one call exceed the "
                f"prompt cache ({self._cache.size}); raise prompt_cache_size"
            )
        keys = rows[0].keys()  # type: ignore[union-attr]
        return PromptEmbeds(prompts, {k: torch.stack([r[k] for r in rows]) for k in keys})  # type: ignore[index]

    # --- decoding ------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """(B, *latent) -> (B, 3, H, W) float32 in [0, 1] on CPU."""
        out = []
        for start in range(0, x.shape[0], self.decode_batch):
            img = self._decode_latents(x[start : start + self.decode_batch].float())
            out.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)

    # --- LoRA ----------------------------------------------------------------------------

    def add_lora(
        self,
        *,
        rank: int,
        alpha: int,
        targets: Sequence[str] | None = None,
        init: str = "gaussian",
    ) -> list[torch.nn.Parameter]:
        """Inject a peft LoRA into the transformer (on ``targets``, default the reference
        implementation's modules); return its parameters, the only trainable ones.

        ``init="gaussian"`` (the reference's) draws A from a normal and sets B to zero, so
        the policy starts equal to the base model. LoRA parameters are float32 even on a
        bf16 base model (the optimizer's state must not be bf16).
        """
        from peft import LoraConfig

        if self._lora_adapter is not None:
            raise ValueError(f"add_lora: a LoRA ({self._lora_adapter!r}) is already attached")
        if rank < 1 or alpha <= 0:
            raise ValueError(f"add_lora: need rank >= 1 and alpha > 0, got {rank}, {alpha}")
        if init not in ("gaussian", "default"):
            raise ValueError(f"add_lora: init must be 'gaussian' or 'default', got {init!r}")
        init_arg: Literal["gaussian"] | bool = "gaussian" if init == "gaussian" else True
        target_modules = list(targets if targets is not None else self.default_lora_targets)
        names = [n for n, _ in self.transformer.named_modules()]
        unmatched = [
            t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)
        ]
        # Explicit targets must all exist (a typo must not silently train less); the
        # defaults may miss some on small variants (a one-block SD3 has no to_add_out).
        if (
            not target_modules
            or len(unmatched) == len(target_modules)
            or (targets is not None and unmatched)
        ):
            raise ValueError(
                f"add_lora: no module of {type(self.transformer).__name__} matches the "
                f"targets {unmatched or target_modules}"
            )
        config = LoraConfig(
            r=rank, lora_alpha=alpha, init_lora_weights=init_arg, target_modules=target_modules
        )
        self.transformer.add_adapter(config)  # type: ignore[operator]
        self._lora_adapter = "default"
        params = []
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
                p.requires_grad_(True)
                params.append(p)
            else:
                p.requires_grad_(False)
        if not params:
            raise ValueError(
                f"add_lora: no module of {type(self.transformer).__name__} matches the "
                f"targets {target_modules}"
            )
        return params

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.transformer.named_parameters() if "lora_" in n]

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights under diffusers' key names (``transformer_blocks.0.attn.to_q.
        lora_A.weight``), detached copies on CPU."""
        from peft.utils import get_peft_model_state_dict

        name = self._need_lora("lora_state_dict")
        sd = get_peft_model_state_dict(self.transformer, adapter_name=name)
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def load_lora_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights saved by :meth:`lora_state_dict` into the attached LoRA (resume)."""
        from peft.utils import set_peft_model_state_dict

        name = self._need_lora("load_lora_state_dict")
        own = self.lora_state_dict()
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(
                f"load_lora_state_dict: keys differ from this LoRA's (missing {missing[:3]}, "
                f"unexpected {extra[:3]})"
            )
        set_peft_model_state_dict(self.transformer, state, adapter_name=name)

    def save_lora(self, path: str | Path) -> None:
        """Write the LoRA where ``pipeline.load_lora_weights(path)`` loads it, with its rank
        and alpha as adapter metadata (so the loaded LoRA has the trained scale)."""
        name = self._need_lora("save_lora")
        peft_config: Any = cast(Any, self.transformer).peft_config[name]
        type(self.pipeline).save_lora_weights(
            save_directory=str(path),
            transformer_lora_layers=self.lora_state_dict(),
            transformer_lora_adapter_metadata=peft_config.to_dict(),
        )

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy: the same transformer with the LoRA disabled. Without a
        LoRA the network already is the reference."""
        if self._lora_adapter is None:
            yield
            return
        self.transformer.disable_adapters()  # type: ignore[operator]
        try:
            yield
        finally:
            self.transformer.enable_adapters()  # type: ignore[operator]

    def _need_lora(self, what: str) -> str:
        """The attached adapter's name; a clear error naming ``what`` without one."""
        if self._lora_adapter is None:
            raise ValueError(f"{what}: no LoRA attached (call add_lora first)")
        return self._lora_adapter

    # --- sampling and the training step --------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def velocity(
        self,
        x: Tensor,
        sigma: Tensor,
        embeds: PromptEmbeds,
        *,
        guidance: float,
        detach_uncond: bool = False,
    ) -> Tensor:
        """(B, *latent) float32 velocity at (x, sigma); x is float32, the model runs in its
        dtype. With CFG (a family with a :meth:`negative_embeds` and ``guidance > 1``, the
        pipelines' rule) one batched forward of ``[uncond; text]`` gives
        ``uncond + guidance * (text - uncond)``; with ``detach_uncond`` the unconditional
        branch carries no gradient."""
        n = x.shape[0]
        if len(embeds) != n:
            raise ValueError(f"velocity: {len(embeds)} prompt rows for {n} latents")
        t = torch.as_tensor(sigma, device=self.device, dtype=torch.float32)
        t = t.expand(n) if t.ndim == 0 else t  # (B,) as the scheduler's timesteps
        neg = self.negative_embeds() if guidance > 1.0 else None
        if neg is None:
            return self._denoise(x, t, embeds, guidance).float()
        both = PromptEmbeds.cat([neg.repeat(n), embeds])
        out = self._denoise(torch.cat([x, x]), torch.cat([t, t]), both, guidance).float()
        uncond, text = out.chunk(2)
        if detach_uncond:
            uncond = uncond.detach()
        return uncond + guidance * (text - uncond)

    @torch.no_grad()
    def rollout(
        self,
        embeds: PromptEmbeds,
        *,
        num_steps: int,
        guidance: float,
        noise_level: float,
        height: int,
        width: int,
        generator: Any = None,
        embeds_at: Callable[[int, float], PromptEmbeds] | None = None,
        sde_steps: Sequence[int] | None = None,
    ) -> Rollout:
        """Sample ``len(embeds)`` trajectories, recording every latent, mean and log-prob.

        embeds_at(step_index, t) gives the embeds of step ``step_index`` (t = that step's
        sigma, 1 = noise; DRIFT's prompt noise); the loss step must then get the same
        embeds for that step. sde_steps: the steps that use the SDE (default: all but the
        last); the others are ODE steps with log-prob 0. ``generator``: one, or one per row.
        """
        if num_steps < 1:
            raise ValueError(f"rollout: num_steps must be >= 1, got {num_steps}")
        n = len(embeds)
        sigmas = self.sigmas(num_steps, height=height, width=width).float().cpu()
        mask = torch.zeros(num_steps, dtype=torch.bool)
        steps = range(num_steps - 1) if sde_steps is None else list(sde_steps)
        for j in steps:
            if not 0 <= j < num_steps:
                raise ValueError(f"rollout: sde_steps holds {j}, outside 0..{num_steps - 1}")
            mask[j] = True
        x = self.initial_latents(n, height=height, width=width, generator=generator).float()
        latents, means, log_probs = [x], [], []
        for j in range(num_steps):
            e = embeds if embeds_at is None else embeds_at(j, float(sigmas[j]))
            if len(e) != n:
                raise ValueError(f"rollout: embeds_at({j}) gave {len(e)} rows, expected {n}")
            v = self.velocity(x, sigmas[j], e, guidance=guidance)
            out = sde_step_with_logprob(
                v,
                x,
                sigmas[j],
                sigmas[j + 1],
                noise_level if mask[j] else 0.0,
                sigma_max_next=sigmas[1],
                generator=generator,
            )
            x = out.prev_sample
            latents.append(x)
            means.append(out.mean)
            log_probs.append(out.log_prob)
        return Rollout(
            images=self.decode(x),
            latents=torch.stack(latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            means=torch.stack(means, dim=1),
            sigmas=sigmas,
            sde_mask=mask,
        )

    def step(
        self,
        embeds: PromptEmbeds,
        rollout: Rollout,
        j: int,
        *,
        guidance: float,
        noise_level: float,
        batch: slice | Tensor | None = None,
    ) -> StepOut:
        """Step ``j`` of ``rollout`` again, with gradients: the velocity at
        ``(latents[:, j], sigmas[j])`` (unconditional CFG branch detached), then the
        log-prob of the recorded ``latents[:, j + 1]``.

        ``embeds`` has the rollout's rows (the embeds of step ``j`` when the rollout used
        ``embeds_at``); ``batch`` selects rows of both. Same dtype path and sigmas as the
        rollout, so on the first inner epoch ``step().log_prob == rollout.log_probs[:, j]``.
        """
        total = rollout.latents.shape[0]
        if not 0 <= j < rollout.num_steps:
            raise ValueError(f"step: j={j} outside 0..{rollout.num_steps - 1}")
        if len(embeds) != total:
            raise ValueError(
                f"step: embeds has {len(embeds)} rows; expected the rollout's {total} "
                "(select rows with batch=)"
            )
        if batch is None:
            x, prev, e = rollout.latents[:, j], rollout.latents[:, j + 1], embeds
        elif isinstance(batch, slice):
            x, prev = rollout.latents[batch, j], rollout.latents[batch, j + 1]
            e = embeds.select(batch)
        else:
            rows = torch.as_tensor(batch, dtype=torch.long).reshape(-1)
            sel = rollout.latents.index_select(0, rows.to(rollout.latents.device))
            x, prev = sel[:, j], sel[:, j + 1]
            e = embeds.select(rows)
        v = self.velocity(x, rollout.sigmas[j], e, guidance=guidance, detach_uncond=True)
        return sde_step_with_logprob(
            v,
            x,
            rollout.sigmas[j],
            rollout.sigmas[j + 1],
            noise_level if bool(rollout.sde_mask[j]) else 0.0,
            sigma_max_next=rollout.sigmas[1],
            prev_sample=prev,
        )


class LatentDiffusionAdapter(DiffusionAdapter):
    """A pipeline with a VAE (SD3, Flux): latents ``(B, C, H / f, W / f)`` drawn as the
    pipeline draws them, decoded with the VAE's scaling and shift factors."""

    @abstractmethod
    def _latent_patch(self) -> tuple[int, str]:
        """The transformer's spatial patch on the latent grid, and what it is (errors)."""

    @abstractmethod
    def _latent_channels(self) -> int:
        """C of the unpatched latents."""

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        f = self.pipeline.vae_scale_factor
        p, what = self._latent_patch()
        if height % (f * p) or width % (f * p):
            raise ValueError(
                f"height and width must be multiples of {f * p} (VAE factor {f} x {what}); "
                f"got {height}x{width}"
            )
        return height // f, width // f

    def initial_latents(self, n: int, *, height: int, width: int, generator: Any = None) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self._latent_hw(height, width)
        shape = (n, self._latent_channels(), h, w)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _decode_latents(self, x: Tensor) -> Tensor:
        vae = self.pipeline.vae
        x = x / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(x.to(vae.dtype), return_dict=False)[0]
