"""Pre-train the toy world from a seed, cached on disk.

``ensure_toy(root, k=8, seed=0)`` returns a directory holding

- ``flow/``: the :class:`~experiments.collapse.nets.FlowNet` (diffusers ``save_pretrained``),
  trained by conditional flow matching (x0-parametrised: the loss is the MSE of the
  predicted clean image, which fixes the velocity) on the K modes, with the generic prompt
  (``GENERIC_PROMPT``) standing for the whole mixture 30% of the time;
- ``classifier.safetensors``: a :class:`~experiments.collapse.nets.ModeCNN` trained on the mode
  labels (the experiment's mode labeller and the quality scorer's backbone);
- ``embedder.safetensors``: another ModeCNN (other seed, other data) whose unit-normalised
  penultimate features are the diversity embedding;
- ``meta.json``: the world's name, K, the mode names, the prompts, the held-out
  accuracies, the base model's mode histogram on ODE samples of the generic prompt, the
  timings, and what the world's ``build_extra`` adds.

The data come from the settings: :class:`ToySettings` renders the K-modes world; another
world subclasses it (``world`` names it, ``sample`` draws its labelled images per split,
``mode_names``, ``build_extra`` writes its extra artefacts, e.g. the within-mode worlds'
quality regressors) and goes through the same training.

A directory is keyed by every setting that changes its contents (and the world's name),
and written through a temporary directory then renamed, so an interrupted build is never
used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from experiments.collapse.data import modes, sample_dataset
from experiments.collapse.nets import FlowNet, ModeCNN

__all__ = [
    "GENERIC_PROMPT",
    "ToySettings",
    "ensure_toy",
    "fit_cnn",
    "load_cnn",
    "load_meta",
    "ode_sample",
    "toy_prompts",
]

GENERIC_PROMPT = "a toy image"


@dataclass(frozen=True)
class ToySettings:
    k: int = 8
    seed: int = 0
    flow_steps: int = 2000
    flow_batch: int = 128
    flow_width: int = 256
    flow_depth: int = 2
    flow_lr: float = 2e-3
    uncond_prob: float = 0.3
    n_data: int = 8192
    cnn_epochs: int = 3
    cnn_data: int = 4096

    #: a world's name, prefixed to its cache key (the K-modes world has none). A world
    #: subclasses these settings and overrides the methods below.
    world: ClassVar[str] = ""

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        prefix = f"{self.world}-" if self.world else ""
        return f"{prefix}k{self.k}-s{self.seed}-{hashlib.sha256(blob).hexdigest()[:10]}"

    def sample(self, n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (n, 3, 16, 16) in [0, 1] and their mode labels (n,). ``split``
        ("flow", "classifier", "embedder" or "test") names the data the images come
        from, for worlds with a fixed data set; rendered worlds need only the seed."""
        return sample_dataset(self.k, n, seed)

    def mode_names(self) -> list[str]:
        return [m.name for m in modes(self.k)]

    def prompts(self) -> tuple[str, ...]:
        """Row 0: the generic prompt (the mixture); row m + 1: mode m's name."""
        return (GENERIC_PROMPT, *self.mode_names())

    def build_extra(self, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        """Extra artefacts a world writes into ``out`` (its meta.json entries)."""
        return {}


def toy_prompts(k: int) -> tuple[str, ...]:
    """Row 0: the generic prompt (the mixture); row m + 1: mode m's name."""
    return (GENERIC_PROMPT, *(m.name for m in modes(k)))


def fit_cnn(
    net: ModeCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> ModeCNN:
    """Adam (lr 2e-3), batches of 128, ``epochs`` passes over (x, y); returns it in eval."""
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net


def _train_cnn(s: ToySettings, split: str, seed: int) -> tuple[ModeCNN, float]:
    torch.manual_seed(seed)
    x, y = s.sample(s.cnn_data, seed, split)
    xt, yt = s.sample(2048, seed + 10_000, "test")
    net = fit_cnn(ModeCNN(s.k), x, y, s.cnn_epochs, seed, torch.nn.functional.cross_entropy)
    with torch.no_grad():
        acc = float((net(xt).argmax(1) == yt).float().mean())
    return net, acc


def _train_flow(s: ToySettings, log: Callable[[str], None]) -> FlowNet:
    torch.manual_seed(s.seed)
    x0, y = s.sample(s.n_data, s.seed + 1, "flow")
    x0 = x0 * 2 - 1
    net = FlowNet(prompts=s.prompts(), width=s.flow_width, depth=s.flow_depth, size=x0.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=s.flow_lr, weight_decay=0.0)
    warm = max(1, s.flow_steps // 20)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / s.flow_steps)),
    )
    g = torch.Generator().manual_seed(s.seed + 2)
    t0 = time.perf_counter()
    for step in range(s.flow_steps):
        idx = torch.randint(s.n_data, (s.flow_batch,), generator=g)
        x, lab = x0[idx], y[idx] + 1
        lab = torch.where(torch.rand(s.flow_batch, generator=g) < s.uncond_prob, 0, lab)
        noise = torch.randn(x.shape, generator=g)
        # sigma: half uniform, half logit-normal (more weight mid-trajectory)
        u = torch.rand(s.flow_batch, generator=g)
        ln = torch.sigmoid(torch.randn(s.flow_batch, generator=g))
        sigma = torch.where(torch.rand(s.flow_batch, generator=g) < 0.5, u, ln)
        xs = (1 - sigma)[:, None, None, None] * x + sigma[:, None, None, None] * noise
        x0_hat = net.denoise(xs, sigma, net.prompt_table(lab))
        loss = torch.nn.functional.mse_loss(x0_hat, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == s.flow_steps - 1:
            log(
                f"flow step {step}/{s.flow_steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
    net.eval()
    return net


@torch.no_grad()
def ode_sample(net: FlowNet, prompt_index: int, n: int, steps: int, seed: int) -> torch.Tensor:
    """(n, 3, 16, 16) images in [0, 1] by Euler steps from sigma 1 to 0."""
    g = torch.Generator().manual_seed(seed)
    size = int(net.config.size)  # type: ignore[attr-defined]
    x = torch.randn((n, 3, size, size), generator=g)
    cond = net.prompt_table(torch.full((n,), prompt_index, dtype=torch.long))
    sig = torch.linspace(1, 0, steps + 1)
    for i in range(steps):
        v = net(x, sig[i].expand(n), cond)
        x = x + (sig[i + 1] - sig[i]) * v
    return ((x + 1) / 2).clamp(0, 1)


def load_cnn(path: Path, k: int) -> ModeCNN:
    net = ModeCNN(k)
    net.load_state_dict(load_file(str(path)))
    net.eval()
    return net


def load_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise ValueError(
            f"{directory}: not a toy model directory (no meta.json); build it "
            "with experiments.collapse.pretrain.ensure_toy"
        )
    return dict(json.loads(path.read_text()))


def ensure_toy(
    root: str | Path, settings: ToySettings | None = None, log: Callable[[str], None] = print
) -> Path:
    """The toy directory of ``settings`` under ``root``, built when missing."""
    s = settings or ToySettings()
    out = Path(root) / s.key()
    if (out / "meta.json").is_file():
        return out
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        t0 = time.perf_counter()
        log(f"pre-training the toy world {s.key()} (K={s.k}, seed {s.seed})")
        clf, clf_acc = _train_cnn(s, "classifier", s.seed + 100)
        emb, emb_acc = _train_cnn(s, "embedder", s.seed + 200)
        save_file(clf.state_dict(), str(tmp / "classifier.safetensors"))
        save_file(emb.state_dict(), str(tmp / "embedder.safetensors"))
        t_cnn = time.perf_counter() - t0
        log(f"classifier accuracy {clf_acc:.4f}, embedder-as-classifier {emb_acc:.4f}")
        flow = _train_flow(s, log)
        flow.save_pretrained(str(tmp / "flow"))
        extra = s.build_extra(tmp, log)
        base = ode_sample(flow, 0, 1024, 20, s.seed + 3)
        with torch.no_grad():
            labels = clf(base).argmax(1).numpy()
        hist = np.bincount(labels, minlength=s.k) / len(labels)
        meta = {
            "settings": asdict(s),
            "world": s.world or "modes",
            "k": s.k,
            "modes": s.mode_names(),
            "prompts": list(s.prompts()),
            "classifier_accuracy": clf_acc,
            "embedder_classifier_accuracy": emb_acc,
            "base_histogram_ode20": hist.tolist(),
            "cnn_seconds": t_cnn,
            **extra,
            "total_seconds": time.perf_counter() - t0,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        log(f"base histogram (1024 ODE samples): {np.round(hist, 3).tolist()}")
        try:
            os.replace(tmp, out)
        except OSError:  # another process built it meanwhile
            if not (out / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
