"""The (beta-weighted) negative ELBO as a pure function of the data and the model's output.

All terms are in nats per image: summed over pixels and latent dimensions,
averaged over the batch. They are computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from vae_runner.model import VAEOutput

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, (B,); closed form from Appendix B of Kingma & Welling 2013."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) under independent Bernoullis with these logits, per sample, (B,).

    From logits rather than probabilities: stable, and allowed under CUDA autocast
    (plain `binary_cross_entropy` is refused there).
    """
    nll = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return nll.flatten(1).sum(dim=1)


def gaussian_nll(mean: Tensor, log_scale: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) under N(mean, exp(log_scale)^2) per pixel, summed per sample, (B,)."""
    log_scale = log_scale.float().clamp(-7.0, 5.0)
    z = (x.float() - mean.float()) * torch.exp(-log_scale)
    return (0.5 * z.pow(2) + log_scale + 0.5 * LOG_2PI).flatten(1).sum(dim=1)


def recon_nll(x: Tensor, x_params: Tensor, likelihood: str, log_scale: Optional[Tensor] = None) -> Tensor:
    """Reconstruction term -log p(x|z) per sample, (B,), for the chosen likelihood."""
    if likelihood == "bernoulli":
        return bernoulli_nll(x_params, x)
    if likelihood == "gaussian":
        if log_scale is None:
            raise ValueError("the Gaussian likelihood needs log_scale")
        return gaussian_nll(x_params, log_scale, x)
    raise ValueError(f"unknown likelihood {likelihood!r}")


def likelihood_mean(x_params: Tensor, likelihood: str) -> Tensor:
    """The mean of p(x|z) as an image in [0, 1]."""
    if likelihood == "bernoulli":
        return torch.sigmoid(x_params.float())
    return x_params.float().clamp(0.0, 1.0)


def kl_weight(step: int, beta: float, warmup_steps: int = 0) -> float:
    """The KL weight at an optimizer step: linear from 0 to beta over `warmup_steps` (Bowman et al. 2016), then beta."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def elbo_terms(x: Tensor, out: VAEOutput, *, beta: float, likelihood: str) -> dict[str, Tensor]:
    """Named terms, each a scalar averaged over the batch: `loss` = recon + beta * kl is what is minimised.

    `elbo` is the unweighted bound (-(recon + kl)), whatever beta is.
    """
    recon = recon_nll(x, out.x_params, likelihood, out.log_scale).mean()
    kl = gaussian_kl(out.mu, out.logvar).mean()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "elbo": -(recon + kl)}
