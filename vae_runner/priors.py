"""p(z), `model.prior`: the standard normal, a learned mixture of Gaussians, or the VampPrior.

A prior module returns a distribution object (like `torch.distributions`) with
`log_prob(z)` and `sample(n)`; the VampPrior's needs the model's encoder, which
is handed in, so that the pseudo-inputs are encoded once per training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from vae_runner.choices import PRIORS
from vae_runner.gaussian import mixture_log_prob, standard_normal_log_prob

# The encoder's Gaussian: (images (K, C, H, W), labels (K,) or None) -> mean and log-variance, each (K, D).
Encode = Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Tensor]]


@dataclass
class StandardNormal:
    """N(0, I) over `latent_dim` dimensions."""

    latent_dim: int

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for z (..., D): (...)."""
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0, device: Optional[torch.device] = None) -> Tensor:
        """n draws (n, D); `temperature` scales the standard deviation."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device) * temperature

    def to(self, device: torch.device) -> StandardNormal:
        """Itself: it holds no tensors."""
        return self


@dataclass(repr=False)
class DiagonalMixture:
    """sum_k w_k N(m_k, diag exp(v_k)): the mixture and Vamp priors' distribution, K components."""

    means: Tensor  # (K, D)
    logvars: Tensor  # (K, D)
    log_weights: Tensor  # (K,) unnormalised

    def __repr__(self) -> str:
        return f"DiagonalMixture({self.means.shape[0]} components of {self.means.shape[1]} dimensions)"

    def to(self, device: torch.device) -> DiagonalMixture:
        """A copy on `device`, detached from the parameters it was computed from."""
        return DiagonalMixture(*(t.detach().to(device) for t in (self.means, self.logvars, self.log_weights)))

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for z (..., D): (...)."""
        return mixture_log_prob(z, self.means, self.logvars, self.log_weights)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0, device: Optional[torch.device] = None) -> Tensor:
        """n draws (n, D): a component by its weight, then its Gaussian with the standard deviation scaled by `temperature`."""
        device = device or self.means.device
        probs = torch.softmax(self.log_weights.detach().float(), dim=0).to(device)
        k = torch.multinomial(probs, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.means.shape[1], generator=generator, device=device)
        means, logvars = self.means.detach().float().to(device), self.logvars.detach().float().to(device)
        return means[k] + temperature * torch.exp(0.5 * logvars[k]) * eps


Prior = StandardNormal | DiagonalMixture  # what a prior module returns


class NormalPrior(nn.Module):
    """The standard normal prior of Kingma & Welling 2013."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, encode: Encode) -> StandardNormal:
        return StandardNormal(self.latent_dim)


class MixturePrior(nn.Module):
    """A learned mixture of K diagonal Gaussians (the MoG baseline of Tomczak & Welling 2018).

    Means start spread as N(0, I) draws and variances at 1, so the mixture starts
    close to the standard normal's spread; the weights are learned too.
    """

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, encode: Encode) -> DiagonalMixture:
        return DiagonalMixture(self.means, self.logvars, self.logits)


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k): the encoder's posteriors at K learned pseudo-inputs (Tomczak & Welling 2018).

    Pseudo-inputs start as N(0.05, 0.01^2) pixels and are kept in [0, 1] by a
    hard tanh, as in the paper's code. With a flow posterior the components are
    the encoder's Gaussian stage (the flow has no closed-form inverse). In a
    conditional model pseudo-input k carries label k mod num_classes, and the
    prior stays one mixture over all of them, unconditional like the others.
    """

    def __init__(self, image_shape: tuple[int, int, int], components: int, num_classes: int = 0):
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(components, *image_shape))
        labels = torch.arange(components) % num_classes if num_classes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("labels", labels, persistent=False)

    def forward(self, encode: Encode) -> DiagonalMixture:
        u = torch.nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        means, logvars = encode(u, self.labels if self.labels.numel() else None)
        return DiagonalMixture(means, logvars, torch.zeros(len(means), device=means.device))


def make_prior(kind: str, *, latent_dim: int, components: int, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The prior module called `kind` (normal, vamp or mog)."""
    if kind == "normal":
        return NormalPrior(latent_dim)
    if kind == "mog":
        return MixturePrior(latent_dim, components)
    if kind == "vamp":
        return VampPrior(image_shape, components, num_classes)
    raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {kind!r}")

