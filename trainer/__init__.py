"""The GRPO trainer (Flow-GRPO / DiverseGRPO / DRIFT on diffusers + peft), imported as
``divreward.trainer``. Not written yet: trainers use :mod:`divreward.client` and
:mod:`divreward.adapters` to call the service today."""
