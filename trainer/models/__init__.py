"""Model adapters: diffusers pipelines as GRPO policies (one file per family)."""

from divreward.trainer.models.base import DiffusionAdapter, PromptEmbeds, Rollout
from divreward.trainer.models.registry import ADAPTERS, get_adapter, register_family

__all__ = [
    "ADAPTERS",
    "DiffusionAdapter",
    "PromptEmbeds",
    "Rollout",
    "get_adapter",
    "register_family",
]
