"""A toy world small enough for two CPU cores: K labelled image modes, a flow-matching
generator of 16x16 RGB images, and the rewards of the mode-collapse experiment.

- :mod:`divreward.toy.data`: the K modes (shape x colour) and their renderer;
- :mod:`divreward.toy.nets`: the flow-matching net (a diffusers model, so peft's LoRA
  attaches as on SD3) and the small CNN used for the classifier and the embedder;
- :mod:`divreward.toy.pretrain`: pre-training from a seed, cached on disk;
- :mod:`divreward.toy.plugins`: the quality scorer and the embedder as plugins
  (``divreward.toy.plugins:quality_scorer``, ``divreward.toy.plugins:embedder``),
  served by the reward service exactly like the built-in models;
- :mod:`divreward.toy.collapse`: the experiment (``make bench-collapse``).

It lives in the installed package (not under ``bench/``) because the service's model
replicas are separate Ray processes that import the plugins by path, whatever their
working directory.
"""
