"""Diagonal-Gaussian log-densities, shared by the posteriors, the priors, the likelihoods and the objectives.

All in fp32 and in nats, summed over the last (latent) dimension unless said otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)) per dimension, broadcasting, (..., D)."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension, (...)."""
    return -0.5 * (z.float().pow(2) + LOG_2PI).sum(dim=-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each dimension, (B, D); closed form from Appendix B of Kingma & Welling 2013."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def mixture_log_prob(z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor) -> Tensor:
    """log sum_k w_k N(z; m_k, diag exp(v_k)) for z (..., D) and K components (K, D), (K,): (...).

    The squared distances to all K components come from matrix products, so memory
    grows with N x K, not N x K x D (a VampPrior has K = 500). They are expanded
    as z^2/v - 2 z m/v + m^2/v, which cancels badly for narrow components in fp32
    (an error of nats at v = e^-10): hence float64, exact to ~1e-3 nats even at LOGVAR_MIN.
    """
    shape = z.shape[:-1]
    z = z.reshape(-1, z.shape[-1]).double()  # (N, D)
    means, logvars = means.double(), logvars.double()
    precision = torch.exp(-logvars)  # (K, D)
    squared = (z * z) @ precision.T - 2 * z @ (means * precision).T + (means * means * precision).sum(dim=1)  # (N, K)
    log_components = -0.5 * (squared.clamp(min=0) + logvars.sum(dim=1) + z.shape[1] * LOG_2PI)
    return torch.logsumexp(log_components + torch.log_softmax(log_weights.double(), dim=0), dim=1).float().view(shape)
