"""The encoder and decoder networks of `model.arch`: mlp, conv and resnet.

An encoder maps images (B, C, H, W) to features (B, F); a decoder maps
(B, inputs) to (B, out_channels, H, W). Convolutional nets pad the image to a
multiple of 2^depth (MNIST 28 -> 32) and crop the decoder's output back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from vae_runner.choices import ARCHS


@dataclass
class Nets:
    """An encoder, the width of its features, and a decoder."""

    encoder: nn.Module
    features: int
    decoder: nn.Module


def mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def down(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution: 4x4 stride-2 convolution, then SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU())


def up(c_in: int, c_out: int) -> nn.Sequential:
    """Double the resolution: 4x4 stride-2 transposed convolution, then SiLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU())


class Residual(nn.Module):
    """x + conv3x3(SiLU(conv3x3(x))), then SiLU: a residual block that keeps channels and resolution (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class FullPrecision(nn.Module):
    """Run a layer in fp32 even under autocast: the decoder's output layer, whose bf16 rounding (2^-9 near 0.5)
    would move a discretized logistic's mean by up to half an 8-bit bin."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


class Crop(nn.Module):
    """Keep the top-left size x size pixels: undoes the encoder's padding."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : self.size, : self.size]


def build_nets(
    arch: str, *, in_channels: int, image_size: int, inputs: int, out_channels: int, hidden_dims: Sequence[int], conv_channels: Sequence[int]
) -> Nets:
    """The encoder and decoder of `arch` for (in_channels, image_size, image_size) images; the decoder takes `inputs` numbers."""
    if arch == "mlp":
        widths = [in_channels * image_size**2, *hidden_dims]
        encoder = nn.Sequential(nn.Flatten(), mlp(widths), nn.ReLU())
        decoder = nn.Sequential(
            *mlp([inputs, *hidden_dims[::-1]]), nn.ReLU(),
            FullPrecision(nn.Linear(hidden_dims[0], out_channels * image_size**2)), nn.Unflatten(1, (out_channels, image_size, image_size)),
        )
        return Nets(encoder, widths[-1], decoder)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    factor = 2 ** len(conv_channels)
    padded = -(-image_size // factor) * factor
    side = padded // factor
    chans = [in_channels, *conv_channels]
    residual = arch == "resnet"
    stages = [nn.Sequential(down(a, b), Residual(b)) if residual else down(a, b) for a, b in zip(chans[:-1], chans[1:])]
    encoder = nn.Sequential(nn.ZeroPad2d((0, padded - image_size, 0, padded - image_size)), *stages, nn.Flatten())
    rev = chans[::-1]  # [c_n, ..., c_1, in_channels]
    ups = [nn.Sequential(Residual(a), up(a, b)) if residual else up(a, b) for a, b in zip(rev[:-2], rev[1:-1])]
    decoder = nn.Sequential(
        nn.Linear(inputs, rev[0] * side * side), nn.SiLU(), nn.Unflatten(1, (rev[0], side, side)),
        *ups, FullPrecision(nn.ConvTranspose2d(rev[-2], out_channels, 4, stride=2, padding=1)), Crop(image_size),
    )
    return Nets(encoder, rev[0] * side * side, decoder)
