"""Drop-in reward functions for existing trainers, backed by a divreward service:
:mod:`.flow_grpo` (Flow-GRPO / ddpo-pytorch), :mod:`.trl` (TRL-style reward functions)
and :mod:`.verl` (verl-style ``compute_score``). See docs/client.md."""
