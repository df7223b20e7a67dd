"""Every default of the reward math in one typed, frozen object.

Each field carries the paper's value (or, where the papers leave a choice open, the
value pinned in ``docs/algorithms.md``) and says where it comes from. The models are
frozen and forbid unknown keys, so a misspelt option is an error, not a silent
default; a :class:`pydantic.ValidationError` (a ``ValueError``) names the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AdvantageConfig",
    "CoreConfig",
    "DRIFTConfig",
    "DiverseGRPOConfig",
    "GARDOConfig",
    "NoisePromptConfig",
    "SubsetConfig",
]

SigmaMode = Literal["nn_median", "fixed", "all_pairs_median", "local_scaling"]
KMode = Literal["eigengap", "eigengap_literal", "fixed", "silhouette"]
Solver = Literal["auto", "exact", "approximate"]
SubsetStrategy = Literal["concentrated", "contrast", "none"]
GARDOVariant = Literal["code", "paper"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DocumentedModel(BaseModel):
    """A model whose fields are documented by the docstring under each (pydantic's
    ``use_attribute_docstrings``): that docstring, folded to one line, is the field's
    description (JSON schema, OpenAPI, ``divreward train --help-config``)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        folded = False
        for field in cls.model_fields.values():
            if field.description and "\n" in field.description:
                field.description = " ".join(field.description.split())
                folded = True
        if folded:
            cls.model_rebuild(force=True)


class AdvantageConfig(DocumentedModel):
    """Group-relative advantage, Eq. 3 of both papers."""

    model_config = _FROZEN

    eps: float = Field(default=1e-6, ge=0.0)
    """Added to the population std of the group's rewards in Eq. 3 (A = (R - mean) / (std + eps)).
    Flow-GRPO's value: 1e-6."""


class DiverseGRPOConfig(DocumentedModel):
    """DiverseGRPO's distributional creativity bonus (Sec. 3.2, Eqs. 7-12).

    The upper bounds on k_max, the k-means effort and approx_neighbors keep a request
    that sets them (the services accept these fields per request) from buying
    unbounded CPU time.
    """

    model_config = _FROZEN

    beta: float = Field(default=0.7, ge=0.0)
    """Weight of the creativity bonus in R = Q + beta*E (Eq. 12). Paper: 0.7."""
    sigma_mode: SigmaMode = "nn_median"
    """Width of the Gaussian kernel of Eq. 8 (the paper leaves it open). 'nn_median': median over
    images of the distance to the nearest other image (default, the within-mode scale); 'fixed':
    the value of `sigma`; 'all_pairs_median': median of all pairwise distances; 'local_scaling':
    Zelnik-Manor & Perona, A_ij = exp(-d_ij^2 / (2 sigma_i sigma_j)) with sigma_i the distance to
    the floor(sqrt(N))-th neighbour."""
    sigma: float | None = Field(default=None, gt=0.0)
    """Kernel width when sigma_mode='fixed' (required then, ignored otherwise)."""
    sigma_floor: float = Field(default=1e-6, gt=0.0)
    """Lower bound on sigma so that duplicate images do not divide by zero."""
    k_mode: KMode = "eigengap"
    """How the number of clusters is chosen (the paper's open question 2). 'eigengap': k =
    argmax_{i=1..k_max} (lambda_i - lambda_{i+1}) over the eigenvalues of M sorted decreasing,
    searched over i = 1..2*k_max and capped at k_max so that more separated modes than k_max give
    k_max (default); 'eigengap_literal': ALGORITHMS.md's rule as written, argmax over i =
    1..k_max only (measured: 12 separated modes of 4 with k_max 8 give k = 1 or 2 under it);
    'fixed': the value of `k`; 'silhouette': the k in 2..k_max with the best mean silhouette on
    the cosine distances, or 1 when that is below `silhouette_min`."""
    k: int | None = Field(default=None, ge=1)
    """Number of clusters when k_mode='fixed' (required then; capped at the group size)."""
    k_max: int = Field(default=8, ge=1, le=64)
    """Largest k the eigengap / silhouette choice considers; the effective bound is
    min(N, k_max)."""
    silhouette_min: float = Field(default=0.25, ge=-1.0, le=1.0)
    """k_mode='silhouette' only: below this best mean silhouette the group is one cluster (Kaufman &
    Rousseeuw: < 0.25 means no substantial structure)."""
    kmeans_n_init: int = Field(default=10, ge=1, le=100)
    """k-means restarts on the spectral embedding (best inertia kept)."""
    kmeans_max_iter: int = Field(default=100, ge=1, le=1000)
    """Lloyd iterations per k-means restart at most."""
    seed: int = Field(default=0, ge=0)
    """Seed of the k-means initialisation (and of the approximate solver's start vector): the same
    input and seed give the same labels."""
    solver: Solver = "auto"
    """'exact': dense affinity and full eigendecomposition (O(N^2 D + N^3)); 'approximate': sparse
    k-nearest-neighbour affinity and a partial eigensolver (for N in the thousands); 'auto':
    approximate when N >= approx_min_n."""
    approx_min_n: int = Field(default=512, ge=2)
    """solver='auto' switches to the approximate solver at this group size."""
    approx_neighbors: int = Field(default=15, ge=1, le=256)
    """Approximate solver: neighbours per image in the sparse affinity graph (the graph is
    symmetrised by union)."""

    @model_validator(mode="after")
    def _required_by_mode(self) -> DiverseGRPOConfig:
        if self.sigma_mode == "fixed" and self.sigma is None:
            raise ValueError("sigma: required (a positive float) when sigma_mode='fixed'")
        if self.k_mode == "fixed" and self.k is None:
            raise ValueError("k: required (an int >= 1) when k_mode='fixed'")
        return self


class DRIFTConfig(DocumentedModel):
    """DRIFT's diversity reward shaping (Sec. 5.3, Eqs. 8-14)."""

    model_config = _FROZEN

    lam: float = Field(default=0.5, ge=0.0)
    """Shaping ratio lambda in R~ = R + lambda*R_int (Eq. 12) and in the decoupled advantage A~ = A
    + lambda*A_int (Eq. 14)."""
    gamma: float = Field(default=1.0, gt=0.0, le=1.0)
    """Discount of the potential-based shaping (Eqs. 8-9); R_int = gamma^T * d."""
    num_steps: int = Field(default=50, ge=0)
    """T in gamma^T: denoising steps of the trajectory. Paper: 50 DDIM steps."""
    sigma_clip: float = Field(default=1.0, gt=0.0)
    """Upper bound of the intrinsic reward, R_int = clip(R_int, 0, sigma) (Eq. 13)."""
    decoupled: bool = True
    """True: advantages A(Q) + lambda*A(R_int) (Eq. 14, the paper's method); False: A(Q +
    lambda*R_int) (Eq. 12 then Eq. 3)."""


class GARDOConfig(DocumentedModel):
    """GARDO's diversity-aware advantage shaping (arXiv 2512.24138, Sec. 4.3 / Eq. 8, and its
    public code, tinnerhrhe/GARDO ``PerPromptStatTracker.update(type='gardo')``).

    d_i = min_{j != i} (1 - clip(cos(e_i, e_j), -1, 1)) on unit-normalised embeddings (the
    cosine distance to the nearest other image of the group). Only positive advantages are
    scaled, so the sign of an advantage never flips and a novel but bad image gets no bonus.
    The rewards are the combined quality, unchanged: the shaping acts on advantages only.
    """

    model_config = _FROZEN

    variant: GARDOVariant = "code"
    """'code' (default, the public code): A'_i = (r_i - mean_g r) * w_i with w_i = 1 if r_i <
    mean_g r, else d_i / mean_j d_j (mean over the whole group, so the ratio averages 1 over the
    group). 'paper' (Eq. 8): A'_i = A_i * d_i if A_i > 0, else A_i (no group-mean
    normalisation of d)."""
    std_normalize: bool = False
    """Divide the centred rewards by the group's population std + advantage.eps (GRPO's Eq. 3)
    before shaping. GARDO (Sec. 4.4, and its code's 'gardo' branch) does not: default False."""


class SubsetConfig(DocumentedModel):
    """DRIFT's reward-based sample selection (Sec. 5.1, App. E)."""

    model_config = _FROZEN

    strategy: SubsetStrategy = "concentrated"
    """'concentrated': the G samples with the most concentrated rewards (Eq. 32, the paper's
    method); 'contrast': the most spread ones (Eq. 33, its ablation); 'none': no selection."""
    pool_factor: int = Field(default=2, ge=1)
    """Candidates generated per kept sample: the pool is pool_factor*G. Paper: 2."""


class NoisePromptConfig(DocumentedModel):
    """DRIFT's noise-conditioned prompting (Sec. 5.2, App. F, Eqs. 34-37)."""

    model_config = _FROZEN

    s: float = Field(default=0.05, ge=0.0)
    """Noise scale s of Eq. 34. Paper: 0.05."""
    tau1: float = Field(default=0.4, ge=0.0, le=1.0)
    """gamma(t) = 1 for t <= tau1 (Eq. 35; t normalised, 1 = noise). Paper: 0.4."""
    tau2: float = Field(default=1.0, ge=0.0, le=1.0)
    """gamma(t) = 0 for t >= tau2 (Eq. 35). Paper: 1.0."""
    psi: float = Field(default=1.0, ge=0.0, le=1.0)
    """Mix of the rescaled and raw noisy embedding (Eq. 37). Paper: 1.0."""
    training_only: bool = True
    """Apply the noise while generating training groups only (the paper finds test-time noise does
    not help)."""

    @model_validator(mode="after")
    def _ordered(self) -> NoisePromptConfig:
        if not self.tau1 < self.tau2:
            raise ValueError(f"tau1: must be < tau2, got tau1={self.tau1}, tau2={self.tau2}")
        return self


class CoreConfig(DocumentedModel):
    """All the knobs of the reward math, with the papers' defaults."""

    model_config = _FROZEN

    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    diversegrpo: DiverseGRPOConfig = Field(default_factory=DiverseGRPOConfig)
    drift: DRIFTConfig = Field(default_factory=DRIFTConfig)
    gardo: GARDOConfig = Field(default_factory=GARDOConfig)
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    noise_prompt: NoisePromptConfig = Field(default_factory=NoisePromptConfig)
    recall_k: int = Field(default=10, ge=1)
    """Neighbourhood size of the generalized recall metric (DRIFT App. D: 10)."""

    def to_dict(self) -> dict[str, Any]:
        """This configuration as JSON-friendly nested dicts."""
        return self.model_dump(mode="json")

    @classmethod
    def dump_defaults(cls) -> dict[str, Any]:
        """Every default of the reward math, as nested JSON-friendly dicts."""
        return cls().to_dict()
