"""The GRPO trainer (Flow-GRPO / DiverseGRPO / DRIFT on diffusers + peft), imported as
``divreward.trainer``: ``divreward train --preset NAME`` runs :func:`loop.train` on a
:class:`config.TrainConfig`; docs/trainer.md says how to train."""
