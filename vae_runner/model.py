"""One VAE for every preset: MLP or convolutional, optionally conditioned on a class label (CVAE)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_runner.objective import likelihood_mean

# exp(logvar) stays finite in fp16/bf16 and the KL stays well defined (see Issue 2: "clamp log-variance").
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class VAEOutput:
    """What the objective needs: the decoder's parameters of p(x|z) and the posterior q(z|x)."""

    x_params: Tensor  # (B, C, H, W): Bernoulli logits, or Gaussian means
    mu: Tensor  # (B, latent_dim)
    logvar: Tensor  # (B, latent_dim)
    z: Tensor  # (B, latent_dim)
    log_scale: Optional[Tensor] = None  # Gaussian likelihood: log standard deviation of p(x|z), shape ()


@contextmanager
def evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no gradients for the duration, the previous mode restored after; yields the model's device.

    The one way every pass without gradients (validation, reports, pictures) runs a model.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            yield param.device if param is not None else torch.device("cpu")
    finally:
        model.train(was_training)


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


class VAE(nn.Module):
    """Gaussian-latent VAE with a standard-normal prior (Kingma & Welling 2013).

    With `num_classes > 0` it is a CVAE (Sohn et al. 2015): the one-hot label is
    concatenated to the encoder's features and to z before decoding. The loss
    lives in `vae_runner.objective`, not here.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 20,
        arch: str = "mlp",
        hidden_dims: Sequence[int] = (512,),
        conv_channels: Sequence[int] = (32, 64, 128),
        num_classes: int = 0,
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if arch not in ("mlp", "conv"):
            raise ValueError(f"arch must be 'mlp' or 'conv', got {arch!r}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.arch, self.num_classes, self.likelihood = arch, num_classes, likelihood
        shape = (in_channels, image_size, image_size)

        if arch == "mlp":
            widths = [in_channels * image_size**2, *hidden_dims]
            self.encoder = nn.Sequential(nn.Flatten(), mlp(widths), nn.ReLU())
            self.decoder_in = nn.Sequential(nn.Linear(latent_dim + num_classes, widths[-1]), nn.ReLU())
            self.decoder = nn.Sequential(mlp(widths[::-1]), nn.Unflatten(1, shape))
            self.pad, features = 0, widths[-1]
        else:
            # Pad to a multiple of 2^depth (e.g. MNIST 28 -> 32) and crop the decoder's output back.
            factor = 2 ** len(conv_channels)
            padded = -(-image_size // factor) * factor
            self.pad, side = padded - image_size, padded // factor
            chans = [in_channels, *conv_channels]
            self.encoder = nn.Sequential(*(down(a, b) for a, b in zip(chans[:-1], chans[1:])), nn.Flatten())
            features = conv_channels[-1] * side * side
            self.decoder_in = nn.Sequential(
                nn.Linear(latent_dim + num_classes, features), nn.SiLU(), nn.Unflatten(1, (conv_channels[-1], side, side))
            )
            rev = chans[::-1]  # [c_n, ..., c_1, in_channels]
            self.decoder = nn.Sequential(
                *(up(a, b) for a, b in zip(rev[:-2], rev[1:-1])),
                nn.ConvTranspose2d(rev[-2], in_channels, 4, stride=2, padding=1),
            )
        self.to_posterior = nn.Linear(features + num_classes, 2 * latent_dim)
        self.log_scale = nn.Parameter(torch.zeros(())) if likelihood == "gaussian" else None

    def _condition(self, h: Tensor, y: Optional[Tensor]) -> Tensor:
        if not self.num_classes:
            return h
        if y is None:
            raise ValueError("this CVAE needs labels y for encode/decode")
        return torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], dim=1)

    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) in [0, 1] -> mean and log-variance of q(z|x, y), each (B, latent_dim)."""
        if self.pad:
            x = F.pad(x, (0, self.pad, 0, self.pad))
        h = self._condition(self.encoder(x), y)
        mu, logvar = self.to_posterior(h).chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def reparameterize(self, mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (drawn here unless given): a sample that gradients flow through."""
        eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """z (B, latent_dim) -> parameters of p(x|z, y), (B, C, H, W)."""
        out = self.decoder(self.decoder_in(self._condition(z, y)))
        if self.pad:
            out = out[..., : self.image_size, : self.image_size]
        return out

    def forward(self, x: Tensor, y: Optional[Tensor] = None, eps: Optional[Tensor] = None) -> VAEOutput:
        """Encode, sample z once (with the noise `eps` when given), decode."""
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar, eps)
        return VAEOutput(self.decode(z, y), mu, logvar, z, self.log_scale)

    @torch.no_grad()
    def sample(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Mean images of p(x|z, y) in [0, 1] for given latents."""
        return likelihood_mean(self.decode(z, y), self.likelihood)
