"""The maths of evaluation: importance-sampled log-likelihood, bits/dim, posterior statistics, AUROC, PSNR.

Pure functions of tensors; they know nothing of the VAE class or of batches
(the passes over a split that feed them live in `vae_runner.evaluate`). All
log-densities are in nats per image (summed over pixels / latent dims) and
computed in fp32.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from vae_runner.gaussian import kl_to_standard_normal

LN2 = math.log(2.0)


def importance_log_likelihood(
    log_weights: Callable[[Tensor], Tensor],
    shape: tuple[int, int],
    k: int,
    chunk: int = 64,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """IWAE estimate of log p(x) for each of B images, (B,): log (1/K) sum_k w_k with w = p(x, z_k) / q(z_k|x), z_k ~ q(z|x).

    The bound of Burda et al. 2015: K = 1 is a single-sample ELBO, and the estimate is
    a lower bound in expectation that tightens monotonically in K. `log_weights` maps
    the posterior's noise eps (S, B, D), with `shape` = (B, D), to log w (S, B): the model
    turns eps into z (through its flow, if any) and scores it with its own log q(z|x),
    log p(z) and log p(x|z). The K samples are drawn `chunk` at a time and merged with a
    running logsumexp, so memory grows with `chunk`, not with K (K = 5000 is fine).
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    acc = torch.full(shape[:1], -math.inf, device=device)  # (B,) log sum_k w_k so far
    for start in range(0, k, chunk):
        eps = torch.randn((min(chunk, k - start), *shape), generator=generator, device=device)  # (S, B, D)
        acc = torch.logaddexp(acc, torch.logsumexp(log_weights(eps).float(), dim=0))
    return acc - math.log(k)


def summarise_bounds(per_image: dict[str, Tensor], num_dims: int, continuous: bool, mask: Optional[Tensor] = None) -> dict[str, float]:
    """Means over the images selected by `mask` (all by default), in nats per image: `nll` (= -mean IWAE log p(x)), `elbo`, `recon`, `kl`, and `bits_per_dim` of `nll`.

    `elbo` is the ELBO with the KL in closed form where it exists, one z sample per image (see `per_image_bounds`),
    not the K = 1 IWAE bound; both have the same expectation. When `per_image` has
    `nll_rows`, `nll` is the mean over those rows alone (`nll_images` of them), with
    `nll_se`, its standard error over images (sample standard deviation / sqrt(n),
    left out for a single image).
    """
    selected = torch.ones_like(per_image["elbo"], dtype=torch.bool) if mask is None else mask
    if not selected.any():
        raise ValueError("no images selected to summarise")
    chosen = {name: per_image[name][selected].double() for name in ("elbo", "recon", "kl")}
    log_px = per_image["log_px"][selected & per_image.get("nll_rows", selected)].double()
    nll = -log_px.mean().item() if log_px.numel() else math.nan
    summary = {
        "nll": nll,
        "elbo": chosen["elbo"].mean().item(),
        "recon": chosen["recon"].mean().item(),
        "kl": chosen["kl"].mean().item(),
        "bits_per_dim": float(bits_per_dim(nll, num_dims, continuous=continuous)),
        "nll_images": float(log_px.numel()),
    }
    if log_px.numel() > 1:
        summary["nll_se"] = log_px.std().item() / math.sqrt(log_px.numel())
    return summary


def bits_per_dim(nll_nats: Union[float, Tensor], num_dims: int, continuous: bool) -> Union[float, Tensor]:
    """A negative log-likelihood in nats per image -> bits per dimension, NLL / (D ln 2).

    Convention: for a continuous density on pixels scaled to [0, 1] (the Gaussian
    likelihood, `continuous=True`) the density is first turned into a probability of
    the pixel's 8-bit bin: P(bin) ~= p(x) * (1/256) per dimension, so
    NLL_discrete = NLL_continuous + D ln 256, and the uniform density on [0, 1]^D scores
    exactly 8 bits/dim. This is the convention of Theis et al. 2016 ("A note on the
    evaluation of generative models") and Dinh et al. 2017 (RealNVP); it is an
    upper bound on the discrete NLL only for uniformly dequantised data, and here the
    model sees un-dequantised pixels k/255, so read it as an approximation. For a
    discrete likelihood (Bernoulli, `continuous=False`) the NLL already is a probability
    of the data and no offset is added.
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    offset = num_dims * math.log(256.0) if continuous else 0.0
    return (nll_nats + offset) / (num_dims * LN2)


# --------------------------------------------------------------------------- posterior statistics


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z_d|x) || N(0, 1)) per latent dimension averaged over the data, (D,): the closed-form KL's share of each dimension."""
    return kl_to_standard_normal(mu, logvar).mean(dim=0)


def active_units(mu: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Number of active latent units and the per-unit activity Var_x(E_q[z_u|x]), (D,).

    Burda et al. 2015 (IWAE): unit u is active when Cov_x(E_{q(z|x)}[z_u]) > 0.01, i.e.
    when the variance over the data of its posterior mean exceeds `threshold`. The
    population variance (divide by N) is used, so one image gives 0, not NaN.
    """
    activity = mu.float().var(dim=0, correction=0)
    return int((activity > threshold).sum().item()), activity


# --------------------------------------------------------------------------- anomaly detection and denoising


def auroc(scores_anomalous: Tensor, scores_normal: Tensor) -> float:
    """Area under the ROC curve: P(a random anomalous score > a random normal one), ties counting 1/2.

    Computed from ranks as the Mann-Whitney U statistic, U / (n_a n_n), in O(n log n);
    tied scores share their average rank, which is what makes a tie count 1/2. Higher
    scores mean more anomalous (e.g. per-image negative ELBOs).
    """
    a, n = scores_anomalous.detach().flatten().double().cpu(), scores_normal.detach().flatten().double().cpu()
    if a.numel() == 0 or n.numel() == 0:
        raise ValueError("auroc needs at least one anomalous and one normal score")
    scores = torch.cat([a, n])
    if torch.isnan(scores).any():
        raise ValueError("auroc got NaN scores")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, dim=0) - counts  # 0-based rank of each distinct value's first occurrence
    mean_rank = first.double() + (counts.double() + 1.0) / 2.0  # 1-based average rank of each distinct value
    rank_sum = mean_rank[inverse[: a.numel()]].sum().item()
    u = rank_sum - a.numel() * (a.numel() + 1) / 2.0
    return u / (a.numel() * n.numel())


def psnr(x: Tensor, reference: Tensor, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, (B,): 10 log10(max_value^2 / MSE); identical images give inf."""
    mse = (x.double() - reference.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(max_value**2 / mse)).float()
