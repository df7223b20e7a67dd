"""The pure reward math of divreward: plain functions on numpy arrays, no I/O.

Group-relative advantages (Eq. 3), DiverseGRPO's spectral-clustering creativity bonus
(Sec. 3.2), DRIFT's intra-group diversity reward, decoupled advantages, reward-based
subsets and noise-conditioned prompting (Sec. 5, App. E-F), and the evaluation metrics
of both papers. ``docs/algorithms.md`` gives every equation and pinned choice.

Importing this package loads numpy and pydantic only (no torch, ray, fastapi or
scikit-learn); scipy.linalg / scipy.sparse are loaded by the solvers that use them
(exact above 128 images, approximate) when they run.
"""

from divreward.core.advantages import group_advantages
from divreward.core.config import (
    AdvantageConfig,
    CoreConfig,
    DiverseGRPOConfig,
    DRIFTConfig,
    NoisePromptConfig,
    SubsetConfig,
)
from divreward.core.diversegrpo import DiverseGRPOResult, diversegrpo_bonus, diversegrpo_rewards
from divreward.core.drift import (
    DriftResult,
    decoupled_advantages,
    drift_rewards,
    intra_group_diversity,
    intrinsic_reward,
    reward_concentrated_subset,
    reward_contrast_subset,
    select_subset,
)
from divreward.core.metrics import (
    drift_diversity,
    evaluate_groups,
    generalized_precision,
    generalized_recall,
    mean_pairwise_distance,
    vendi_score,
)
from divreward.core.prompt_noise import annealing_gamma, noisy_prompt_embedding
from divreward.core.spectral import (
    ClusterResult,
    canonical_labels,
    cosine_distances,
    eigengap_k,
    gaussian_affinity,
    kmeans,
    normalized_affinity,
    select_sigma,
    silhouette_score_precomputed,
    spectral_cluster,
)

__all__ = [
    "AdvantageConfig",
    "ClusterResult",
    "CoreConfig",
    "DRIFTConfig",
    "DiverseGRPOConfig",
    "DiverseGRPOResult",
    "DriftResult",
    "NoisePromptConfig",
    "SubsetConfig",
    "annealing_gamma",
    "canonical_labels",
    "cosine_distances",
    "decoupled_advantages",
    "diversegrpo_bonus",
    "diversegrpo_rewards",
    "drift_diversity",
    "drift_rewards",
    "eigengap_k",
    "evaluate_groups",
    "gaussian_affinity",
    "generalized_precision",
    "generalized_recall",
    "group_advantages",
    "intra_group_diversity",
    "intrinsic_reward",
    "kmeans",
    "mean_pairwise_distance",
    "noisy_prompt_embedding",
    "normalized_affinity",
    "reward_concentrated_subset",
    "reward_contrast_subset",
    "select_sigma",
    "select_subset",
    "silhouette_score_precomputed",
    "spectral_cluster",
    "vendi_score",
]
