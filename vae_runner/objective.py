"""The objectives, `model.objective`, as pure functions of the data and the model's output: elbo, iwae, beta_tc, capacity.

All terms are in nats per image: summed over pixels and latent dimensions,
averaged over the batch. They are computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor

from vae_runner.choices import OBJECTIVES
from vae_runner.gaussian import normal_log_prob

if TYPE_CHECKING:
    from vae_runner.likelihoods import Likelihood
    from vae_runner.model import VAEOutput


@dataclass(frozen=True)
class Weights:
    """An objective's weights at one step: `beta` (elbo: the KL's; beta_tc: the total correlation's), beta_tc's `alpha` and
    `gamma` (index-code MI, dimension-wise KL; capacity: the weight of |KL - C|), and capacity's target C in nats."""

    beta: float = 1.0
    alpha: float = 1.0
    gamma: float = 1.0
    capacity: float = 0.0


@dataclass(frozen=True)
class Objective:
    """Which objective, and its settings that do not change during a run."""

    name: str = "elbo"
    samples: int = 1  # posterior samples per image: iwae's k, else 1
    free_bits: float = 0.0
    dataset_size: int = 1  # beta_tc: N, the training images


def objective_terms(
    x: Tensor,
    out: VAEOutput,
    likelihood: Likelihood,
    objective: Objective = Objective(),
    weights: Weights = Weights(),
    kl_batch_mean: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """Named terms, each a scalar in nats per image averaged over the batch (and the S samples); `loss` is what is minimised.

    `x` (B, C, H, W) is what the decoder must reproduce. Every objective reports `recon`
    (-E log p(x|z)), `kl` (KL(q(z|x) || p(z)): closed form when the model gives it,
    else the Monte Carlo estimate log q(z|x) - log p(z)) and `elbo` = -(recon + kl).
    `weights` are this step's (see `Weights`); `kl_batch_mean` is for free bits under torchrun.
    - elbo: recon + beta * KL, with free bits (see `free_bits_kl`);
    - iwae: -log (1/S) sum_s p(x, z_s) / q(z_s|x) (Burda et al. 2015), also logged as `iwae_bound`;
    - beta_tc: recon + alpha MI + beta TC + gamma dimension-wise KL (Chen et al. 2018; `tc_decomposition`);
    - capacity: recon + gamma |KL - C| (Burgess et al. 2018).
    """
    log_px = sample_log_likelihood(likelihood, x, out)  # (S, B)
    recon = -log_px.mean()
    kl = kl_per_image(out).mean()
    terms = {"recon": recon, "kl": kl, "elbo": -(recon + kl)}
    if objective.name == "elbo":
        penalty = kl if objective.free_bits <= 0 else free_bits_kl(out.kl_dims.mean(dim=0), objective.free_bits, kl_batch_mean)
        terms["loss"] = recon + weights.beta * penalty
    elif objective.name == "iwae":
        bound = torch.logsumexp(log_px + out.log_p - out.log_q, dim=0) - math.log(out.samples)  # (B,)
        terms["iwae_bound"] = bound.mean()
        terms["loss"] = -terms["iwae_bound"]
    elif objective.name == "beta_tc":
        mi, tc, dim_kl = tc_decomposition(out.z[0], out.mu, out.logvar, out.log_q[0], out.log_p[0], objective.dataset_size)
        terms.update(mi=mi.mean(), tc=tc.mean(), dim_kl=dim_kl.mean())
        terms["loss"] = recon + weights.alpha * terms["mi"] + weights.beta * terms["tc"] + weights.gamma * terms["dim_kl"]
    elif objective.name == "capacity":
        terms["capacity"] = torch.tensor(weights.capacity)
        terms["loss"] = recon + weights.gamma * (kl - weights.capacity).abs()
    else:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective.name!r}")
    return terms


def kl_per_image(out: VAEOutput) -> Tensor:
    """KL(q(z|x) || p(z)) of each image, (B,): in closed form when the model gives it, else log q(z|x) - log p(z) averaged over the S samples."""
    return out.kl_dims.sum(dim=1) if out.kl_dims is not None else (out.log_q - out.log_p).mean(dim=0)


def sample_log_likelihood(likelihood: Likelihood, x: Tensor, out: VAEOutput) -> Tensor:
    """log p(x|z) of images x (B, C, H, W) under each of the output's S samples, (S, B)."""
    targets = x.expand(out.samples, *x.shape).flatten(0, 1)  # (S * B, C, H, W), sample-major; a view, not a copy, for one sample
    return likelihood.log_prob(out.x_params, targets).view(out.samples, x.shape[0])


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, log_q: Tensor, log_p: Tensor, dataset_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per image (B,): index-code MI, total correlation and dimension-wise KL at z (B, D) ~ q(z|x) (Chen et al. 2018, Eq. 2).

    MI = log q(z|x) - log q(z), TC = log q(z) - sum_d log q(z_d), dimension-wise KL =
    sum_d log q(z_d) - log p(z); they add up to log q(z|x) - log p(z), the sampled KL.
    The aggregate posterior q(z) = (1/N) sum_n q(z|x_n) is estimated from the batch
    of M images: the image's own posterior weighs 1/N and each of the others
    (N - 1) / (N (M - 1)), so the weights sum to one and a batch of the whole data
    set gives q(z) exactly. (Chen et al.'s minibatch-weighted sampling subtracts
    log(N M) instead, which moves each term's value by a constant but not its gradient.)
    A batch of one image has no other to estimate q(z) from: its own posterior then stands for
    q(z) (MI 0), rather than weighing 1/N, which would add log N to MI and (D - 1) log N to TC.
    """
    n, m = max(dataset_size, mu.shape[0]), mu.shape[0]
    log_qz_dims = normal_log_prob(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (M, M, D): q(z_i,d | x_j)
    own, other = (-math.log(n), math.log(n - 1) - math.log(n) - math.log(m - 1)) if m > 1 else (0.0, -math.inf)
    log_w = torch.full((m, m), other, device=z.device)
    log_w.fill_diagonal_(own)
    log_qz = torch.logsumexp(log_qz_dims.sum(dim=2) + log_w, dim=1)  # (M,)
    log_qz_product = torch.logsumexp(log_qz_dims + log_w[:, :, None], dim=1).sum(dim=1)  # (M,)
    return log_q - log_qz, log_qz - log_qz_product, log_qz_product - log_p


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


def capacity_at(step: int, capacity_max: float, capacity_steps: int) -> float:
    """Burgess et al. 2018's target KL C(t): rising linearly from 0 nats at step 0 to `capacity_max` at `capacity_steps`, then held."""
    return capacity_max * min(1.0, step / max(capacity_steps, 1))


def free_bits_kl(kl_mean: Tensor, free_bits: float, batch_mean: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """sum_d max(free_bits, KL_d) over the per-dimension batch means (D,), with the floor decided on the whole batch's means.

    The value is the whole batch's; the gradient flows through this shard's
    means, for the dimensions above the floor (in one process: `clamp(min=free_bits).sum()`).
    """
    whole = kl_mean.detach() if batch_mean is None else batch_mean(kl_mean.detach())
    above = whole > free_bits
    return torch.where(above, kl_mean + (whole - kl_mean).detach(), torch.full_like(kl_mean, free_bits)).sum()
