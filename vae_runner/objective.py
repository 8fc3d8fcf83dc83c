"""The (beta-weighted) negative ELBO as a pure function of the data and the model's output.

All terms are in nats per image: summed over pixels and latent dimensions,
averaged over the batch. They are computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from vae_runner.model import VAEOutput

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, (B, D); closed form from Appendix B of Kingma & Welling 2013."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, (B,)."""
    return gaussian_kl_per_dim(mu, logvar).sum(dim=1)


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


def kl_weight(
    step: int,
    beta: float,
    warmup_steps: int = 0,
    schedule: str = "linear",
    total_steps: int = 1,
    cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """The KL weight at an optimizer step.

    linear: from 0 to beta over `warmup_steps` (Bowman et al. 2016), then beta.
    cyclical: `cycles` cycles over `total_steps`, each ramping from 0 to beta over
    its first `ratio` and holding beta for the rest (Fu et al. 2019).
    """
    if schedule == "cyclical":
        period = max(total_steps, 1) / cycles
        position = (step % period) / period
        return beta * min(1.0, position / ratio)
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def elbo_terms(
    x: Tensor,
    out: VAEOutput,
    *,
    beta: float,
    likelihood: str,
    free_bits: float = 0.0,
    kl_batch_mean: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """Named terms, each a scalar averaged over the batch: `loss` = recon + beta * kl is what is minimised.

    `elbo` is the unweighted bound (-(recon + kl)), whatever beta is. With
    `free_bits` > 0 the loss uses max(free_bits, KL of each dimension averaged
    over the batch) in place of the KL (Kingma et al. 2016, Sec. C.8), so a
    dimension below the floor gets no pressure towards the prior; `kl` stays
    the true KL. Under torchrun each process holds a shard of the batch:
    `kl_batch_mean` maps the shard's per-dimension means to the whole batch's,
    so the floor applies to the whole batch as in one process.
    """
    recon = recon_nll(x, out.x_params, likelihood, out.log_scale).mean()
    kl_dims = gaussian_kl_per_dim(out.mu, out.logvar)  # (B, D)
    kl = kl_dims.sum(dim=1).mean()
    penalty = kl if free_bits <= 0 else free_bits_kl(kl_dims.mean(dim=0), free_bits, kl_batch_mean)
    return {"loss": recon + beta * penalty, "recon": recon, "kl": kl, "elbo": -(recon + kl)}


def free_bits_kl(kl_mean: Tensor, free_bits: float, batch_mean: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """sum_d max(free_bits, KL_d) over the per-dimension batch means (D,), with the floor decided on the whole batch's means.

    The value is the whole batch's; the gradient flows through this shard's
    means, for the dimensions above the floor (in one process: `clamp(min=free_bits).sum()`).
    """
    whole = kl_mean.detach() if batch_mean is None else batch_mean(kl_mean.detach())
    above = whole > free_bits
    return torch.where(above, kl_mean + (whole - kl_mean).detach(), torch.full_like(kl_mean, free_bits)).sum()
