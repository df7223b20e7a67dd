"""Typed arguments of the two Serve applications (the builders' ``args``).

The same models are used from Python (``build_reward_app(RewardAppArgs(...))``) and from
a Serve config file (``import_path: divreward.services.reward_server.app:build_app`` with
``args:``). Every model forbids unknown keys, so a misspelt option in a config file is a
start-up error instead of a silently ignored key (Serve itself ignores them).

Defaults are the papers' values (through :class:`divreward.core.config.CoreConfig`) and
settings that schedule on a small CPU machine; ``deploy/serve-gpu.yaml`` shows GPU ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from divreward.core.config import CoreConfig, DocumentedModel
from divreward.methods import embedding_methods, method_names
from divreward.models.registry import REGISTRY

__all__ = [
    "DEFAULT_TINY_DIR",
    "AssemblyArgs",
    "AuthArgs",
    "BatchArgs",
    "DiversityAppArgs",
    "EmbedderArgs",
    "IngressArgs",
    "LimitsArgs",
    "ModelDeploymentArgs",
    "RewardAppArgs",
    "ScorerArgs",
    "ServiceArgs",
    "default_tiny_dir",
]

Profile = Literal["real", "tiny"]
#: The diversity methods of the method table (divreward.methods), as config literals.
MethodName = Literal[method_names()]  # type: ignore[valid-type]
EmbeddingMethodName = Literal[tuple(m.name for m in embedding_methods())]  # type: ignore[valid-type]

#: Where ``--profile tiny`` keeps its tiny random models unless told otherwise.
DEFAULT_TINY_DIR = "~/.cache/divreward/tiny-models"


def default_tiny_dir() -> Path:
    return Path(os.environ.get("DIVREWARD_TINY_DIR", DEFAULT_TINY_DIR)).expanduser()


class _Args(DocumentedModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchArgs(_Args):
    """Dynamic batching of one model deployment (``@serve.batch``), retunable at run time
    through the deployment's ``user_config`` (same keys)."""

    max_batch_images: int = Field(default=32, ge=1)
    """Most images in one forward pass (across requests)."""
    max_batch_pixels: int = Field(default=64 * 1024 * 1024, ge=1)
    """Most input pixels (H*W summed) in one forward pass. The models resize to 224-448 px
    themselves, so this bounds the decoded inputs a batch holds (64 Mpx = 192 MB of uint8, 256
    images of 512^2), not the forward pass. A single larger image still runs, alone."""
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0)
    """How long a batch waits for more requests to join it. A lone request pays all of it; under
    load batches fill before it expires."""


class ModelDeploymentArgs(_Args):
    """Resources and scaling of one model deployment."""

    num_replicas: int | Literal["auto"] = 1
    """Replicas, or 'auto' to autoscale with `autoscaling`."""
    autoscaling: dict[str, Any] | None = None
    """Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...); used
    with num_replicas='auto'."""
    num_cpus: float = Field(default=0.25, ge=0.0)
    """Logical CPUs per replica."""
    torch_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads of each replica. None = the CPUs it is given, max(1, floor(num_cpus)):
    a replica with a fraction of a CPU runs its model on one thread, so give a CPU-only model
    whole cores (num_cpus) or set this."""
    num_gpus: float = Field(default=0.0, ge=0.0)
    """Logical GPU fraction per replica (0.5 = two replicas share a GPU, with no memory isolation).
    > 0 loads the model on cuda."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per replica, e.g. {'divreward_scorer': 0.01} to pin replicas to the
    worker group that advertises that resource (deploy/k8s)."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Calls one replica accepts at once; must be >= the number of groups that should share
    a batch."""
    max_queued_requests: int = Field(default=512, ge=-1)
    """Calls waiting for a replica (-1 = unbounded)."""
    max_constructor_retry_count: int = Field(default=2, ge=1)
    """Start-up attempts before the deployment fails (Serve requires >= 1)."""
    device: str | None = None
    """Override the device (default: cuda when num_gpus > 0)."""
    dtype: str | None = None
    """Override the model dtype."""
    source: str | None = None
    """Hub id or local directory overriding the registry default."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Model options (e.g. pickscore scale_divisor)."""
    plugin: str | None = None
    """Import path 'package.module:factory' of a model outside the registry (docs/plugins.md): the
    factory gets LoadOptions with these options and must return a Scorer/Embedder, checked
    against the built-in models' contract at start-up."""
    batch: BatchArgs = Field(default_factory=BatchArgs)

    @model_validator(mode="after")
    def _auto(self) -> ModelDeploymentArgs:
        if self.num_replicas == "auto" and not self.autoscaling:
            raise ValueError("autoscaling: required when num_replicas is 'auto'")
        if self.autoscaling is not None:
            from ray.serve.config import AutoscalingConfig

            unknown = sorted(set(self.autoscaling) - set(AutoscalingConfig.model_fields))
            if unknown:
                raise ValueError(
                    f"autoscaling: unknown keys {unknown}; valid: "
                    f"{sorted(AutoscalingConfig.model_fields)}"
                )
            AutoscalingConfig.model_validate(self.autoscaling)
        return self


class ScorerArgs(ModelDeploymentArgs):
    weight: float = 1.0
    """Default weight in Q = sum(weight * score). A scorer with weight 0 is deployed but runs only
    when a request names it."""


class EmbedderArgs(ModelDeploymentArgs):
    name: str = "dreamsim"
    """Registry name of the embedder."""

    @model_validator(mode="after")
    def _embedder(self) -> EmbedderArgs:
        _check_entry(self.name, self.plugin, "embedder", "embedder.name")
        return self


def _check_entry(name: str, plugin: str | None, kind: str, field: str) -> None:
    """A registry model of the right kind, or a plugin whose import path resolves (the
    contract is checked where the model loads, in its replica)."""
    if plugin is None:
        _check_kind(name, kind, field)
        return
    if name in REGISTRY:
        raise ValueError(
            f"{field}: {name!r} names a registered model; give the plugin another name"
        )
    from divreward.models.plugins import check_import_path

    check_import_path(plugin, field.removesuffix(".name"))


def _check_kind(name: str, kind: str, field: str) -> None:
    """A configured model must be registered and of the right kind (the registry is
    data: importing it loads no weights)."""
    spec = REGISTRY.get(name)
    valid = sorted(n for n, s in REGISTRY.items() if s.kind == kind)
    if spec is None or spec.kind != kind:
        raise ValueError(f"{field}: {name!r} is not a registered {kind}; valid: {valid}")


class LimitsArgs(_Args):
    """Request limits; each violation is a 4xx that says which limit and where."""

    max_images_per_request: int = Field(default=512, ge=1)
    max_images_per_group: int = Field(default=256, ge=1)
    max_groups_per_request: int = Field(default=64, ge=1)
    max_pixels_per_image: int = Field(default=4096 * 4096, ge=1)
    """Width * height of one decoded image."""
    max_request_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Body size; larger bodies get 413."""
    max_prompt_chars: int = Field(default=4096, ge=1)


class AuthArgs(_Args):
    """Bearer-token auth and tenants. Tokens never live in a config file: they come from a
    tenants file (``tenants_file`` or the file named by ``$DIVREWARD_TENANTS_FILE``), an
    environment variable (comma-separated) and/or a token file (one token per line); each
    token of the last two is a tenant of weight 1 (``token-1``, ``token-2``, ...)."""

    enabled: bool = False
    """Require 'Authorization: Bearer <token>' on every route except /healthz and /readyz."""
    tokens_env: str = Field(default="DIVREWARD_API_TOKENS")
    token_file: str | None = None
    tenants_file: str | None = None
    """YAML file of tenants (name, token or token_sha256, weight, max_queued_images); default:
    the file named by $DIVREWARD_TENANTS_FILE."""
    tenants_file_env: str = Field(default="DIVREWARD_TENANTS_FILE")

    def tenants_path(self) -> str | None:
        """The tenants file in use: ``tenants_file``, else ``$DIVREWARD_TENANTS_FILE``."""
        return self.tenants_file or os.environ.get(self.tenants_file_env, "").strip() or None

    def load_tokens(self) -> list[str]:
        """The tokens of the older settings (env list, then token file), in order."""
        tokens: list[str] = []
        raw = os.environ.get(self.tokens_env, "")
        tokens.extend(t.strip() for t in raw.split(",") if t.strip())
        if self.token_file:
            path = Path(self.token_file).expanduser()
            try:
                text = path.read_text()
            except OSError as exc:
                raise ValueError(f"auth.token_file: cannot read {path} ({exc})") from exc
            tokens.extend(
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.startswith("#")
            )
        return list(dict.fromkeys(tokens))

    def load_tenants(self) -> list[Any]:
        """Every tenant (:class:`~divreward.services.common.tenants.Tenant`): the tenants
        file's, then one per token of the older settings. Read now; an enabled auth with no
        tenant, or a token given twice, is a start-up error."""
        from divreward.services.common.tenants import load_tenants_file, token_tenants

        path = self.tenants_path()
        tenants = load_tenants_file(path) if path else []
        extra = token_tenants(self.load_tokens())
        names = {t.name for t in tenants}
        digests = {t.digest: t.name for t in tenants}
        for t in extra:
            if t.digest in digests:
                raise ValueError(
                    f"a token of {self.tokens_env} or auth.token_file is also the token of "
                    f"tenant {digests[t.digest]!r} of the tenants file; list it once"
                )
            if t.name in names:
                raise ValueError(
                    f"tenant name {t.name!r} is used by the tenants file and by the tokens of "
                    f"{self.tokens_env}/auth.token_file (named token-1, token-2, ...); rename it"
                )
        tenants.extend(extra)
        if self.enabled and not tenants:
            raise ValueError(
                f"auth is enabled but no token was found: give a tenants file (--tenants or "
                f"{self.tenants_file_env}), set {self.tokens_env} (comma-separated) or "
                "auth.token_file (one token per line)"
            )
        return tenants


class IngressArgs(_Args):
    """The FastAPI ingress deployment of an application."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.25, ge=0.0)
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per replica, e.g. {'divreward_head': 0.01} to keep the ingress on the
    head node."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests waiting beyond that get backpressure_status."""
    blas_threads: int | None = Field(default=1, ge=1)
    """BLAS threads in the ingress process, where the clustering runs (None: the library default).
    Groups are small and run concurrently in threads: several BLAS threads each oversubscribe the
    cores (measured on 2 loaded cores: a 64x64 eigendecomposition 100 ms with 2 OpenBLAS threads,
    0.4 ms with 1)."""
    backpressure_status: Literal[429, 503] = 503
    retry_after_s: float = Field(default=1.0, ge=0.0)
    """Retry-After on 429/503."""
    call_timeout_s: float = Field(default=120.0, gt=0.0)
    """Most time a model call may take before a 504."""
    idempotency_cache_size: int = Field(default=256, ge=0)
    """Recent responses kept per replica for request_id."""
    max_inflight_images: int | None = Field(default=None, ge=1)
    """Images one ingress replica has at the models at once; more wait in its fair queue (per
    tenant, by weight). None: 2 x max_batch_images x replicas of the scorer with the least of it,
    divided among the ingress replicas (a batch computing and the next one filling)."""
    max_chunk_images: int | None = Field(default=None, ge=1)
    """The fair queue's unit: a group of more images is split into chunks of at most this many,
    each waiting for its own turn and sent to the models on its own, so a light tenant waits
    behind a chunk instead of a whole group of a flooding one (see docs/operations.md). None:
    whole groups (one turn and one call per model per group)."""


class ServiceArgs(_Args):
    """What both applications share."""

    profile: Profile = "real"
    """'real' loads real weights (hub cache or weights_dir); 'tiny' loads the tiny random test
    models and marks every response."""
    weights_dir: str | None = None
    """Root of local real weights (else DIVREWARD_WEIGHTS_DIR)."""
    tiny_models_dir: str | None = None
    """profile 'tiny': where the tiny models are; built there when missing. Default:
    $DIVREWARD_TINY_DIR or ~/.cache/divreward/tiny-models."""
    core: CoreConfig = Field(default_factory=CoreConfig)
    """Reward-math defaults."""
    limits: LimitsArgs = Field(default_factory=LimitsArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    ingress: IngressArgs = Field(default_factory=IngressArgs)
    diversity_app: str = "diversity"
    """Serve application name of the diversity service."""

    def resolved_tiny_dir(self) -> Path:
        return (
            Path(self.tiny_models_dir).expanduser() if self.tiny_models_dir else default_tiny_dir()
        )


class DiversityAppArgs(ServiceArgs):
    embedder: EmbedderArgs = Field(default_factory=EmbedderArgs)
    default_method: EmbeddingMethodName = "diversegrpo"  # type: ignore[valid-type]


class AssemblyArgs(_Args):
    """Settings of group assembly."""

    default_timeout_s: float = Field(default=60.0, gt=0)
    """How long an incomplete group waits for its remaining parts after its first part arrived,
    unless a part asks for less (assembly_timeout_s)."""
    max_timeout_s: float = Field(default=110.0, gt=0)
    """Upper bound on a part's assembly_timeout_s; keep it below the ingress call_timeout_s (default
    120 s) so parts fail with the assembly error."""
    compute_timeout_s: float = Field(default=120.0, gt=0)
    """How long waiting parts wait for the rewards of a completed group."""
    keep_resolved_s: float = Field(default=300.0, ge=0)
    """How long a resolved group is kept for retried parts to find it."""
    max_pending_images: int = Field(default=100_000, ge=1)
    """Images held in incomplete groups at most; beyond it parts get a 503."""


class RewardAppArgs(ServiceArgs):
    scorers: dict[str, ScorerArgs] = Field(default_factory=lambda: {"pickscore": ScorerArgs()})
    """Quality scorers, one deployment each: registry name (or a plugin's name, with its import path
    in `plugin`) -> settings."""
    default_diversity: MethodName = "diversegrpo"  # type: ignore[valid-type]
    assembly: AssemblyArgs = Field(default_factory=AssemblyArgs)
    """Group assembly: parts of a group (tagged with group_id and group_size) held until the group
    is complete."""

    @model_validator(mode="after")
    def _scorers(self) -> RewardAppArgs:
        if not self.scorers:
            raise ValueError("scorers: configure at least one quality scorer")
        for name, s in self.scorers.items():
            _check_entry(name, s.plugin, "scorer", f"scorers.{name}")
        if all(s.weight == 0 for s in self.scorers.values()):
            raise ValueError("scorers: at least one scorer needs a non-zero default weight")
        return self

    def default_quality(self) -> dict[str, float]:
        return {name: s.weight for name, s in self.scorers.items() if s.weight != 0}
