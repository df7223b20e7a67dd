"""The mode-collapse experiment (``make bench-collapse``, ``python -m experiments.collapse``).

A toy world small enough for two CPU cores: K labelled image modes, a flow-matching
generator of 16x16 RGB images, and the rewards of the mode-collapse experiment.

- :mod:`experiments.collapse.data`: the K modes (shape x colour) and their renderer;
- :mod:`experiments.collapse.nets`: the flow-matching net (a diffusers model, so peft's LoRA
  attaches as on SD3) and the small CNN used for the classifier and the embedder;
- :mod:`experiments.collapse.pretrain`: pre-training from a seed, cached on disk;
- :mod:`experiments.collapse.plugins`: the quality scorer and the embedder as plugins
  (``experiments.collapse.plugins:quality_scorer``, ``experiments.collapse.plugins:embedder``),
  served by the reward service exactly like the built-in models;
- :mod:`experiments.collapse.family`: the toy model family, registered at runtime in the
  trainer's family registry (``family: toy``);
- :mod:`experiments.collapse.config`, :mod:`~experiments.collapse.metrics`,
  :mod:`~experiments.collapse.runner`, :mod:`~experiments.collapse.report`: the settings,
  the mode metrics, the runs and the report.

It is not part of the installed ``divreward`` package and uses the trainer, the client and
the plugin mechanism through their public APIs only. Run it from the repository root: the
service's model replicas are separate Ray processes that import the plugins by path, and
Ray puts the driver's working directory on their ``sys.path`` (a ``PYTHONPATH`` naming the
root works too; the workers inherit it).
"""
