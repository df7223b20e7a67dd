"""A group's diversity term, computed in one way for both applications and the trainer:
the functions live in :mod:`divreward.rewards` (pure, service-free); re-exported here
for the services' modules that import them from this place."""

from divreward.rewards import group_diversity, resolve_advantage, resolve_diversity

__all__ = ["group_diversity", "resolve_advantage", "resolve_diversity"]
