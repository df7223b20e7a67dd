"""The toy networks.

- :class:`FlowNet`: a conditional flow-matching velocity model of 16x16 RGB images, an MLP
  with residual blocks. It is a diffusers ``ModelMixin`` with ``PeftAdapterMixin``, so the
  trainer attaches, disables and saves its LoRA through the same peft calls as on SD3,
  and it saves/loads with ``save_pretrained`` / ``from_pretrained``. It holds its own
  prompt table: the generic prompt (row 0, trained as the unconditional model, i.e. the
  whole mixture) and one prompt per mode. With ``open_prompts`` (test models) any other
  text gets a fixed pseudo-random embedding derived from its hash.
- :class:`ModeCNN`: a small CNN over 16x16 images; trained on the mode labels it is the
  mode classifier, and (another seed) the embedder's encoder.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

__all__ = ["FlowNet", "ModeCNN", "timestep_embedding"]


def timestep_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of sigma in [0, 1] (scaled by 1000 like diffusers' timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
    args = (sigma.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h))))


class FlowNet(ModelMixin, ConfigMixin, PeftAdapterMixin):  # type: ignore[misc]
    """v(x, sigma, prompt) for x of shape (B, 3, size, size); v = noise - x0, computed from
    the network's prediction of x0."""

    @register_to_config
    def __init__(
        self,
        prompts: tuple[str, ...] = ("a toy image",),
        size: int = 16,
        width: int = 512,
        depth: int = 3,
        cond_dim: int = 32,
        time_dim: int = 64,
        open_prompts: bool = False,
    ) -> None:
        super().__init__()
        self.prompt_table = nn.Embedding(len(prompts), cond_dim)
        n = 3 * size * size
        self.fc_in = nn.Linear(n + cond_dim + time_dim, width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(width)
        self.fc_out = nn.Linear(width, n)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        """The predicted clean image x0 at (x, sigma)."""
        b = x.shape[0]
        sigma = sigma.reshape(-1).expand(b) if sigma.numel() == 1 else sigma.reshape(b)
        t = timestep_embedding(sigma, self.config.time_dim).to(x.dtype)  # type: ignore[attr-defined]
        h = self.fc_in(torch.cat([x.reshape(b, -1), cond.to(x.dtype), t], dim=-1))
        for block in self.blocks:
            h = block(h)
        return self.fc_out(nn.functional.silu(self.norm_out(h))).reshape(x.shape)

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        """The velocity ``(x - x0_hat) / sigma`` (x0-parametrised: an Euler step to sigma 0
        lands on the predicted clean image; sigma is floored at 1e-3)."""
        b = x.shape[0]
        s = sigma.reshape(-1).expand(b) if sigma.numel() == 1 else sigma.reshape(b)
        x0 = self.denoise(x, s, cond)
        return (x - x0) / s.clamp_min(1e-3).to(x.dtype).reshape(b, *([1] * (x.ndim - 1)))


class ModeCNN(nn.Module):
    """Conv features (``features``: (B, feat_dim)) and mode logits (``forward``)."""

    def __init__(self, num_modes: int, feat_dim: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32 * 4 * 4, feat_dim)
        self.head = nn.Linear(feat_dim, num_modes)

    def features(self, x: Tensor) -> Tensor:
        """x: (B, 3, 16, 16) in [0, 1]."""
        return torch.relu(self.fc(self.conv(x * 2 - 1).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
