"""Tensor -> tensor bodies for encoders and decoders: an MLP and a small convolutional pair.

Networks know nothing about distributions: an encoder maps x to the posterior's raw parameters, a decoder maps z
to the likelihood's raw parameters, ``[N, m*C, *spatial]`` for images (m = ``likelihood.num_params``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLP", "ConvEncoder", "ConvDecoder"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Flattens ``in_shape``, applies Linear/activation layers, and reshapes the output to ``out_shape``.

    Leading batch dimensions are preserved: ``[*N, *in_shape] -> [*N, *out_shape]``.
    """

    def __init__(self, in_shape: Sequence[int] | int, hidden: Sequence[int], out_shape: Sequence[int] | int,
                 activation: str = "relu"):
        super().__init__()
        self.in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        sizes = [math.prod(self.in_shape), *hidden, math.prod(self.out_shape)]
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        y = self.layers(x.reshape(*lead, -1))
        return y.reshape(*lead, *self.out_shape)


def _down(size: int, layers: int) -> int:
    for _ in range(layers):
        size = (size + 1) // 2  # the transposed convolutions double a size exactly: start at the ceiling, then crop
    return size


class ConvEncoder(nn.Module):
    """Stride-2 convolutions then a linear head: ``[N, C, H, W] -> [N, out_features]``."""

    def __init__(self, in_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 256, activation: str = "relu"):
        super().__init__()
        c = in_shape[0]
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), _activation(activation)]
            c = ch
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *in_shape)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), _activation(activation),
                                  nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x))


class ConvDecoder(nn.Module):
    """Linear layers, then stride-2 transposed convolutions: ``[N, d] -> [N, out_channels, H, W]`` (cropped)."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int] = (64, 32),
                 hidden: int = 256, activation: str = "relu"):
        super().__init__()
        c_out, h, w = out_shape
        self.out_shape = (c_out, h, w)
        self.start = (channels[0], _down(h, len(channels)), _down(w, len(channels)))
        self.head = nn.Sequential(nn.Linear(latent_dim, hidden), _activation(activation),
                                  nn.Linear(hidden, math.prod(self.start)), _activation(activation))
        layers: list[nn.Module] = []
        chans = [*channels, c_out]
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(chans) - 2:
                layers.append(_activation(activation))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.deconvs(self.head(z).reshape(-1, *self.start))
        return y[..., : self.out_shape[1], : self.out_shape[2]]
