"""The trainer's one typed configuration, its presets and ``--set`` overrides.

:class:`TrainConfig` documents every field with the paper's value (Flow-GRPO's SD3.5-M
PickScore setting unless said otherwise; TRAINER.md, ALGORITHMS.md §3-4). It forbids
unknown keys, so a misspelt option fails at start-up naming the field.
:meth:`TrainConfig.derived` computes every derived number in one place.

Presets are YAML files in ``trainer/presets/`` (``NAME.yaml``): a preset sets only what
differs from these defaults. ``load_config("tiny-cpu", ["group_size=8",
"diversity_params.beta=1.0"])`` applies ``--set`` overrides on top (values parsed as
YAML; dotted keys reach into dict fields).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from divreward.core.aggregate import Aggregation
from divreward.core.config import DocumentedModel, NoisePromptConfig
from divreward.methods import method_names
from divreward.rewards import diversity_params
from divreward.trainer.losses import KLForm

PRESETS_DIR = Path(__file__).parent / "presets"
PROMPTS_DIR = Path(__file__).parent / "prompts"

Regulariser = Literal["none", "kl", "sa_reg"]
# The methods table's names (divreward/methods.py): a method added there is a valid value.
if TYPE_CHECKING:  # to mypy, any name
    DiversityMethod: TypeAlias = str
else:
    DiversityMethod = Literal[method_names()]
RewardBackend = Literal["service", "inprocess"]
Subset = Literal["none", "concentrated", "contrast"]
Precision = Literal["auto", "bf16", "fp16", "no"]
PromptsFormat = Literal["lines", "flow_grpo_txt"]

log = logging.getLogger(__name__)

__all__ = [
    "Derived",
    "GARDOTrainConfig",
    "TrainConfig",
    "list_presets",
    "load_config",
    "read_prompts",
]


class GARDOTrainConfig(DocumentedModel):
    """GARDO's trainer-side parts (arXiv 2512.24138 Sec. 4.1-4.2, Eq. 7, Alg. 1, and its code
    tinnerhrhe/GARDO ``train_sd3_grpo_gardo.py``): a KL penalty on the high-uncertainty samples
    only, and a reference policy reset to the current one from time to time. Its third part, the
    diversity-aware advantage shaping, is the diversity method 'gardo' (set ``diversity: gardo``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(default=0.0, ge=0.0)
    """Weight of the gated KL; 0 turns the gate and the reset off. Paper: 0.04; code: 0.04 (OCR),
    0.07 (GenEval), 0.01 (Flux)."""
    aux_scorers: list[str] = Field(default_factory=list)
    """Auxiliary scorers whose per-image scores estimate the uncertainty (paper: Aesthetic and
    ImageReward). They are requested with weight 0, so they never enter Q, the rewards or the
    advantages; they must not be in `quality`. Required when beta > 0."""
    uncertainty_sign: Literal["paper", "code"] = "paper"
    """'paper' (Eq. 7): U_i = w(Q_i) - mean_n w(aux_n,i), w the win rate within the step's batch
    ((1/B) sum_{j != i} 1[y_i > y_j]): high where the proxy Q ranks a sample far above the
    auxiliary scorers. 'code': -U, the sign the public code's ranks (1 = best) give, which gates
    samples the proxy ranks below the auxiliaries."""
    k0: float = Field(default=0.1, gt=0.0, le=1.0)
    """Initial fraction k of the non-negative-U samples that are gated. Code and paper: 0.1."""
    k_rate: float = Field(default=0.1, ge=0.0, lt=1.0)
    """k <- k (1 + k_rate) when the batch's mean non-negative U exceeds every value in the
    window, k <- k (1 - k_rate) when it is below every one. Code: 0.1."""
    window: int = Field(default=20, ge=1)
    """Past batch means of U kept for the k update. Code and paper: 20."""
    k_min: float = Field(default=0.02, gt=0.0, le=1.0)
    """Lower clip of k. Code: 0.02."""
    k_max: float = Field(default=0.2, gt=0.0, le=1.0)
    """Upper clip of k. Code: 0.2 (the paper's Alg. 1 caps k at 1)."""
    kl_form: KLForm = "reference"
    """The KL of a gated sample: 'reference' (Flow-GRPO's closed form, GARDO's code): mean((mu -
    mu_ref)^2) / (2 sigma_t^2); 'eq6': divided by |dt| too (see kl_form)."""
    kl_threshold: float = Field(default=3e-4, ge=0.0)
    """An optimiser step whose mean gated KL (averaged over processes) exceeds this resets the
    reference to the current policy after the training step. Code: 3e-4 ('set per task'); paper:
    1e-4."""
    reset_every: int = Field(default=30, ge=0)
    """Reset the reference after this many optimiser steps since the last reset anyway (0:
    never). Code: every 15 epochs, about 30 optimiser steps in its 8-GPU OCR setting (2 per
    epoch); paper: 100 gradient steps."""

    @model_validator(mode="after")
    def _ordered(self) -> GARDOTrainConfig:
        if not self.k_min <= self.k0 <= self.k_max:
            raise ValueError(
                f"k0: must be within [k_min, k_max], got k_min={self.k_min}, k0={self.k0}, "
                f"k_max={self.k_max}"
            )
        if len(set(self.aux_scorers)) != len(self.aux_scorers):
            raise ValueError(f"aux_scorers: a scorer is named twice in {self.aux_scorers}")
        return self


class TrainConfig(DocumentedModel):
    """Everything a training run needs. Paper values in each description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ------------------------------------------------------------------ model
    model: str = "stabilityai/stable-diffusion-3.5-medium"
    """Hub id or local diffusers pipeline directory; 'tiny-sd3' / 'tiny-flux' build a tiny random
    pipeline into tiny_models_dir (tests, demo). Paper: SD3.5-M."""
    family: str = "sd3"
    """Adapter family in divreward.trainer.models' registry ('sd3', 'flux')."""
    tiny_models_dir: str = ".cache/tiny-models"
    """Where model 'tiny-<family>' is built (<dir>/<family>) when missing."""
    model_options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments of the adapter's from_pretrained (e.g. SD3's text_encoder_3: false,
    gradient_checkpointing: true)."""
    height: int = Field(default=512, ge=8)
    """Image height. Paper: 512."""
    width: int = Field(default=512, ge=8)
    """Image width. Paper: 512."""
    num_steps: int = Field(default=10, ge=2)
    """Denoising steps of training rollouts. Flow-GRPO SD3.5: 10; Flux: 6."""
    eval_num_steps: int = Field(default=40, ge=1)
    """ODE steps at evaluation. SD3.5: 40; Flux: 28."""
    guidance: float = Field(default=4.5, ge=0.0)
    """CFG scale (SD3) or embedded guidance (Flux). SD3.5: 4.5; Flux: 3.5; DRIFT: 5."""
    noise_level: float = Field(default=0.7, ge=0.0)
    """SDE noise level a. Flow-GRPO SD3.5: 0.7; Flux: 0.9."""
    timestep_fraction: float = Field(default=0.99, gt=0.0, le=1.0)
    """Trained timesteps = int(num_steps * fraction), in order, from the first (never the last, an
    ODE step). Flow-GRPO: 0.99 (10 -> 9)."""
    lora_rank: int = Field(default=32, ge=1)
    """LoRA r. DiverseGRPO: 32; DRIFT: 8."""
    lora_alpha: int = Field(default=64, ge=1)
    """LoRA alpha. DiverseGRPO: 64; DRIFT: 16."""
    lora_targets: list[str] | None = None
    """Module names given the LoRA; None: the adapter's reference targets (attention projections for
    SD3, plus feed-forwards for Flux)."""
    mixed_precision: Precision = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on CPU. The SDE step is fp32 always."""

    # ------------------------------------------------------------------ data
    prompts_file: str | None = None
    """Training prompts, one per line ('#' comments and blank lines skipped), or a '.jsonl' of
    one JSON object per line with a 'prompt' (Flow-GRPO's GenEval metadata files): the whole
    object is the prompt's metadata, sent with each of its groups; None: the shipped
    trainer/prompts/train.txt."""
    prompts_format: PromptsFormat = "lines"
    """How prompts_file / eval_prompts_file are read: 'lines' (above) or 'flow_grpo_txt',
    Flow-GRPO's text datasets (dataset/ocr/{train,test}.txt, dataset/pickscore): every line
    stripped is a prompt, '#' included; a blank line is an error naming it."""
    eval_prompts_file: str | None = None
    """Held-out evaluation prompts; None: the shipped trainer/prompts/eval.txt."""
    group_size: int = Field(default=24, ge=1)
    """G, images per prompt that are trained on. Flow-GRPO: 24; DRIFT: 8."""
    prompts_per_step: int = Field(default=2, ge=1)
    """Prompts (groups) each process generates per training step."""
    sample_batch_size: int = Field(default=8, ge=1)
    """Images generated in one forward batch (memory knob; no effect on results other than
    round-off)."""

    # ------------------------------------------------------------------ optimisation
    learning_rate: float = Field(default=3e-4, gt=0.0)
    """AdamW lr. Flow-GRPO / DiverseGRPO: 3e-4; DRIFT: 1e-4."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_weight_decay: float = Field(default=1e-4, ge=0.0)
    """Flow-GRPO: 1e-4."""
    adam_eps: float = Field(default=1e-8, gt=0.0)
    """AdamW epsilon."""
    train_batch_size: int = Field(default=2, ge=1)
    """Samples per loss minibatch (per GPU). DiverseGRPO: 2; Flow-GRPO: 9."""
    gradient_accumulation_steps: int = Field(default=12, ge=1)
    """Minibatches per optimiser step; each minibatch backpropagates once per trained timestep.
    DiverseGRPO: 12; Flow-GRPO SD3.5: 2. A step's last optimiser step takes what is left."""
    num_inner_epochs: int = Field(default=1, ge=1)
    """PPO epochs per batch. 1."""
    clip_range: float = Field(default=1e-4, gt=0.0)
    """PPO clip eps. Paper: 1e-4."""
    adv_clip_max: float = Field(default=5.0, gt=0.0)
    """Advantages clamped to ±5."""
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Grad-norm clip. 1.0."""
    regulariser: Regulariser = "none"
    """'kl': Eq. 6 at every trained step (Flow-GRPO's baseline); 'sa_reg': DiverseGRPO's W2 on the
    first sa_reg_k steps (Eqs. 13-14); 'none'."""
    reg_weight: float = Field(default=0.0, ge=0.0)
    """Weight of the regulariser (beta). Flow-GRPO SD3.5 KL: 0.01; DRIFT's GRPO-KL baseline: 0.001.
    DiverseGRPO does not state SA-Reg's weight: its presets use Flow-GRPO's 0.01."""
    kl_form: Literal["eq6", "reference"] = "eq6"
    """'eq6': ||mu - mu_ref||^2 / (2 sigma_t^2 |dt|); 'reference': Flow-GRPO's code, mean(...) / (2
    sigma_t^2)."""
    sa_reg_k: int = Field(default=4, ge=0)
    """SA-Reg's K (steps from noise). Paper: 4."""

    # ------------------------------------------------------------------ rewards
    reward_backend: RewardBackend = "service"
    """'service': divreward.client to reward_url; 'inprocess': the registry's models in this process
    (one GPU, no service)."""
    reward_url: str = "http://127.0.0.1:8000"
    """The reward service: http://host:8000 or grpc://host:9000."""
    reward_token_env: str | None = "DIVREWARD_API_TOKEN"
    """Environment variable holding the service's bearer token (sent as 'authorization: Bearer ...'
    when set; the token itself never enters a config). A service listening beyond loopback
    requires one."""
    reward_timeout_s: float = Field(default=300.0, gt=0.0)
    """Per attempt."""
    reward_retries: int = Field(default=5, ge=1)
    """Attempts per group before the run stops with an error (the client retries connection errors,
    429 and 5xx with backoff)."""
    quality: dict[str, float] = Field(default_factory=lambda: {"pickscore": 1.0})
    """Scorer -> weight; Q = sum(weight * score). Papers: PickScore or HPSv3."""
    aggregation: Aggregation = "sum"
    """How the weighted scorers make Q, sent per request: 'sum' or 'gdpo' (each score normalised
    within its group first, as Flow-Factory's GDPO; docs/api.md)."""
    diversity: DiversityMethod = "none"
    """A method of divreward/methods.py's table: 'diversegrpo' (R = Q + beta E, Eq. 12), 'drift'
    (Eq. 14 decoupled advantages), 'gardo' (positive advantages scaled by the nearest-neighbour
    distance, GARDO Eq. 8) or 'none' (Flow-GRPO), sent per request."""
    diversity_params: dict[str, Any] = Field(default_factory=dict)
    """The method's parameters (its params model in the table: divreward.core's DiverseGRPOConfig /
    DRIFTConfig / GARDOConfig fields); unset ones take the service's defaults (beta 0.7; lam 0.5;
    GARDO's code variant without std)."""
    advantage_eps: float = Field(default=1e-6, ge=0.0)
    """Eq. 3's eps. 1e-6."""
    inprocess_profile: Literal["real", "tiny"] = "real"
    """In-process rewards: 'real' weights (hub / DIVREWARD_WEIGHTS_DIR) or 'tiny' random models
    built into tiny_models_dir."""
    inprocess_embedder: str = "dreamsim"
    """Registry embedder."""
    inprocess_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-model load options for in-process rewards."""

    # ------------------------------------------------------------------ DRIFT, trainer side
    subset: Subset = "none"
    """DRIFT's reward-based selection: generate pool_factor*G, train on the G that divreward.core
    selects ('concentrated', the paper's; 'contrast', its ablation)."""
    pool_factor: int = Field(default=2, ge=1)
    """Candidates per kept image. DRIFT: 2."""
    prompt_noise: bool = False
    """DRIFT's noise-conditioned prompting in training rollouts."""
    prompt_noise_params: dict[str, float] = Field(default_factory=dict)
    """NoisePromptConfig fields (s 0.05, tau1 0.4, tau2 1.0, psi 1.0)."""

    # ------------------------------------------------------------------ GARDO, trainer side
    gardo: GARDOTrainConfig = Field(default_factory=lambda: GARDOTrainConfig())
    """GARDO's gated KL and adaptive reference reset (its advantage shaping is the diversity
    method 'gardo'); off while gardo.beta is 0."""

    # ------------------------------------------------------------------ EMA
    ema: bool = True
    """EMA of the LoRA, for evaluation and saving."""
    ema_decay: float = Field(default=0.9, ge=0.0, le=1.0)
    """Flow-GRPO: 0.9."""
    ema_every: int = Field(default=8, ge=1)
    """EMA update period. Flow-GRPO: 8."""

    # ------------------------------------------------------------------ run
    seed: int = Field(default=0, ge=0)
    """Seeds everything (per process rank)."""
    max_steps: int = Field(default=1000, ge=1)
    """Training steps (sample+update)."""
    output_dir: str = "runs/divreward"
    """Logs, checkpoints, samples."""
    save_every: int = Field(default=50, ge=0)
    """Checkpoint period (0: never)."""
    eval_every: int = Field(default=50, ge=0)
    """Evaluation period (0: never)."""
    eval_prompts: int = Field(default=8, ge=1)
    """Held-out prompts per evaluation."""
    eval_images_per_prompt: int = Field(default=4, ge=1)
    """Grid size per prompt."""
    eval_seed: int = Field(default=1234, ge=0)
    """Same noise at every evaluation."""
    eval_metrics: bool = True
    """Ask the service's /v1/metrics for diversity at evaluation."""
    tensorboard: bool = True
    """Write TensorBoard events (scalars and evaluation grids) under <output_dir>/tb. Metrics go to
    <output_dir>/metrics.jsonl always."""
    log_with: list[Literal["wandb", "mlflow"]] = Field(default_factory=list)
    """More of accelerate's trackers: 'wandb' (W&B) and/or 'mlflow' (their packages installed and
    configured as they document, e.g. WANDB_API_KEY, MLFLOW_TRACKING_URI)."""
    tracker_project: str = "divreward"
    """The project (W&B) or experiment (MLflow) the run is logged to."""
    progress: bool = True
    """Show the tqdm progress bar."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        NoisePromptConfig.model_validate(self.prompt_noise_params)  # names the bad field if any
        try:
            diversity_params(self.diversity, self.diversity_params)
        except ValidationError as exc:
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"diversity_params of {self.diversity!r}: {bad}") from None
        if self.regulariser != "none" and self.reg_weight == 0.0:
            raise ValueError(f"reg_weight: regulariser {self.regulariser!r} needs reg_weight > 0")
        if self.gardo.beta > 0:
            if not self.gardo.aux_scorers:
                raise ValueError(
                    "gardo.aux_scorers: the gated KL (gardo.beta > 0) needs at least one "
                    "auxiliary scorer to estimate the uncertainty (GARDO: aesthetic, "
                    "imagereward); or set gardo.beta: 0"
                )
            if self.regulariser != "none":
                raise ValueError(
                    f"regulariser: {self.regulariser!r} and GARDO's gated KL (gardo.beta > 0) "
                    "are both a KL to the reference; use one (regulariser: none)"
                )
        both = sorted(set(self.gardo.aux_scorers) & set(self.quality))
        if both:
            raise ValueError(
                f"gardo.aux_scorers: {both} also in quality; an auxiliary scorer must stay out "
                "of the proxy reward Q"
            )
        if self.subset != "none" and self.pool_factor < 2:
            raise ValueError(f"pool_factor: subset {self.subset!r} needs a pool of >= 2G")
        for name in self.log_with:
            if importlib.util.find_spec(name) is None:
                raise ValueError(f"log_with: {name!r} needs its package: pip install {name}")
        if not self.quality:
            raise ValueError("quality: name at least one scorer, e.g. {pickscore: 1.0}")
        if self.reward_backend == "service" and not self.reward_url.startswith(
            ("http://", "https://", "grpc://", "grpcs://")
        ):
            raise ValueError(f"reward_url: {self.reward_url!r} must start with http:// or grpc://")
        if self.derived().num_train_timesteps < 1:
            raise ValueError("timestep_fraction: trains no timestep; raise it or num_steps")
        return self

    def derived(self) -> Derived:
        """Every derived value, computed here only."""
        n_train = min(int(self.num_steps * self.timestep_fraction), self.num_steps - 1)
        if self.mixed_precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        else:
            precision = self.mixed_precision
        pool = self.group_size * (self.pool_factor if self.subset != "none" else 1)
        return Derived(
            num_train_timesteps=n_train,
            train_timesteps=tuple(range(n_train)),
            pool_size=pool,
            images_generated_per_step=pool * self.prompts_per_step,
            images_trained_per_step=self.group_size * self.prompts_per_step,
            backward_per_optimizer_step=self.gradient_accumulation_steps * n_train,
            precision=precision,
            autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision),
            noise_prompt=NoisePromptConfig.model_validate(self.prompt_noise_params),
        )

    def request_quality(self) -> dict[str, float]:
        """The scorers asked for per group: ``quality`` with its weights, then GARDO's
        auxiliary scorers with weight 0 (their scores come back per scorer; Q is unchanged)."""
        return {**self.quality, **dict.fromkeys(self.gardo.aux_scorers, 0.0)}

    def diversity_request(self) -> dict[str, Any] | None:
        """The per-run diversity parameters as the service's request field."""
        return {"method": self.diversity, **self.diversity_params}

    def prompts_path(self) -> Path:
        return Path(self.prompts_file) if self.prompts_file else PROMPTS_DIR / "train.txt"

    def eval_prompts_path(self) -> Path:
        return Path(self.eval_prompts_file) if self.eval_prompts_file else PROMPTS_DIR / "eval.txt"


@dataclass(frozen=True)
class Derived:
    """Values computed from a :class:`TrainConfig` (see ``TrainConfig.derived``)."""

    num_train_timesteps: int  # int(num_steps * timestep_fraction), < num_steps
    train_timesteps: tuple[int, ...]  # the step indices trained, from pure noise
    pool_size: int  # images generated per prompt (pool_factor * G with a DRIFT subset)
    images_generated_per_step: int
    images_trained_per_step: int
    backward_per_optimizer_step: int  # gradient_accumulation_steps x trained timesteps
    precision: str  # 'bf16' / 'fp16' / 'no'
    autocast_dtype: torch.dtype | None
    noise_prompt: NoisePromptConfig


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. --set group_size=8")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ValueError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {item!r}: cannot parse the value: {exc}") from None
    return key.split("."), value


def load_config(
    preset: str | None = None,
    overrides: list[str] | None = None,
    file: str | Path | None = None,
) -> TrainConfig:
    """A config from a preset name (or a YAML file), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if preset is not None and file is not None:
        raise ValueError("give a preset or a config file, not both")
    path: Path | None = None
    if preset is not None:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(list_presets())}")
    elif file is not None:
        path = Path(file)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config fields")
        data.update(loaded)
    loaded_method = data.get("diversity")
    for item in overrides or []:
        keys, value = _parse_set(item)
        if keys[0] not in TrainConfig.model_fields:
            raise ValueError(
                f"--set {item!r}: unknown field {keys[0]!r}; see `divreward train --help-config`"
            )
        target = data
        for k in keys[:-1]:
            nested = target.get(k)
            if nested is None:
                default = TrainConfig.model_fields[k].get_default(call_default_factory=True)
                nested = dict(default) if isinstance(default, dict) else {}
            if not isinstance(nested, dict):
                raise ValueError(f"--set {item!r}: {k!r} is not a mapping field")
            target[k] = dict(nested)
            target = target[k]
        target[keys[-1]] = value
    _reset_params_of_a_switched_method(data, loaded_method, overrides or [])
    return TrainConfig.model_validate(data)


def _reset_params_of_a_switched_method(
    data: dict[str, Any], loaded_method: Any, overrides: list[str]
) -> None:
    """``--set diversity=X`` that switches the preset's (or file's) method drops the
    preset's ``diversity_params`` (they belong to the other method) unless the overrides
    set ``diversity_params`` too; the fields a user sets are still validated against X."""
    keys = {_parse_set(item)[0][0] for item in overrides}
    method = data.get("diversity", loaded_method)
    if "diversity" in keys and "diversity_params" not in keys and method != loaded_method:
        dropped = data.pop("diversity_params", None)
        if dropped:
            log.info("diversity=%s: the preset's diversity_params %s are dropped", method, dropped)


class MetaPrompt(str):
    """A prompt that carries its metadata (a JSONL prompt source's object) to the reward
    request of each of its groups; everywhere else it is the plain prompt string."""

    metadata: dict[str, Any]

    def __new__(cls, prompt: str, metadata: dict[str, Any]) -> MetaPrompt:
        self = super().__new__(cls, prompt)
        self.metadata = metadata
        return self

    def __getnewargs__(self) -> tuple[str, dict[str, Any]]:  # type: ignore[override]
        return (str(self), self.metadata)


def prompt_metadata(prompt: str) -> dict[str, Any] | None:
    """The metadata a prompt read from a JSONL source carries (None for a plain one)."""
    return prompt.metadata if isinstance(prompt, MetaPrompt) else None


def _read_jsonl_prompts(p: Path) -> list[str]:
    out: list[str] = []
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{p}:{number}: not a JSON object ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ValueError(f"{p}:{number}: each line must be a JSON object with a 'prompt' str")
        out.append(MetaPrompt(obj["prompt"], obj))
    return out


def read_prompts(path: str | Path, fmt: PromptsFormat = "lines") -> list[str]:
    """Prompts from a text file, one per line, each stripped. ``lines``: blank lines and
    '#' comments skipped. ``flow_grpo_txt``: Flow-GRPO's ``TextPromptDataset`` (every line
    is a prompt, its metadata ``{}``); a blank line, which Flow-GRPO would train on as an
    empty prompt, is an error naming the line. Whatever ``fmt``, a ``.jsonl`` file holds one
    JSON object per line whose 'prompt' is the prompt and the whole object its metadata
    (:class:`MetaPrompt`), as Flow-GRPO's ``dataset/geneval/{train,test}_metadata.jsonl``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompts file {str(p)!r} does not exist")
    if p.suffix == ".jsonl":
        prompts = _read_jsonl_prompts(p)
        if not prompts:
            raise ValueError(f"prompts file {str(p)!r} holds no prompt")
        return prompts
    prompts = [ln.strip() for ln in p.read_text().splitlines()]
    if fmt == "flow_grpo_txt":
        blank = [i + 1 for i, ln in enumerate(prompts) if not ln]
        if blank:
            raise ValueError(f"prompts file {str(p)!r}: line {blank[0]} is blank")
    prompts = [ln for ln in prompts if ln and (fmt == "flow_grpo_txt" or not ln.startswith("#"))]
    if not prompts:
        raise ValueError(f"prompts file {str(p)!r} holds no prompt")
    return prompts
