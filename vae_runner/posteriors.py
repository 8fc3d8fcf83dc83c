"""q(z|x), `model.posterior`: a diagonal Gaussian, optionally followed by a normalising flow.

A flow step maps z (S, B, D) to (z', log |det dz'/dz|) given the encoder's
features of each image (B, F); q's log-density follows from the change of
variables, log q(z_K|x) = log N(z_0; mu, sigma^2) - sum_k log |det J_k|.
Everything here runs in fp32, outside autocast: log-determinants are sums of
small numbers.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_runner.choices import POSTERIORS
from vae_runner.gaussian import LOG_2PI

# exp(logvar) stays finite in fp16/bf16 and the KL stays well defined.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class PlanarStep(nn.Module):
    """f(z) = z + u_hat tanh(w.z + b) with u, w, b computed from each image's features (Rezende & Mohamed 2015, Eq. 10).

    u_hat = u + (m(w.u) - w.u) w / |w|^2 with m(a) = -1 + softplus(a) makes w.u_hat = m(w.u) > -1,
    so f stays invertible (their Appendix A.1). log |det| = log(1 + m(w.u) tanh'(w.z + b))
    = log(a^2 + (1 - a^2) softplus(w.u)) with a = tanh(w.z + b): written with m's value, not
    with w.u_hat recomputed in fp32, whose rounding exceeds the margin softplus(w.u) once
    w.u < -15. The margin is floored at MIN_MARGIN so the map stays monotone in fp32 too.
    """

    MIN_MARGIN = 1e-4

    def __init__(self, features: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.params = nn.Linear(features, 2 * latent_dim + 1)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        u, w, b = self.params(h).split([self.latent_dim, self.latent_dim, 1], dim=-1)  # (B, D), (B, D), (B, 1)
        wu = (w * u).sum(dim=-1, keepdim=True)
        margin = F.softplus(wu).clamp(min=self.MIN_MARGIN)
        norm2 = w.pow(2).sum(dim=-1, keepdim=True)
        moved = norm2 / norm2.clamp(min=1e-12)  # exactly 1, or ~0 for w = 0 (then u_hat = u and w.u_hat = 0)
        u_hat = u + (margin - 1 - wu) * w / norm2.clamp(min=1e-12)
        one_plus_wu_hat = margin * moved + (1 + wu) * (1 - moved)
        a = torch.tanh((z * w).sum(dim=-1, keepdim=True) + b)  # (S, B, 1)
        log_det = torch.log(a.pow(2) + (1 - a.pow(2)) * one_plus_wu_hat).squeeze(-1)
        return z + u_hat * a, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015)."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(order: Tensor, hidden: int) -> tuple[Tensor, Tensor, Tensor]:
    """Masks of a two-hidden-layer MADE whose output i sees only inputs that come before i in `order` (D,).

    Input i has degree order[i] + 1 in 1..D; hidden units cycle through degrees
    1..D-1 and see inputs of degree <= theirs; an output of degree d sees hidden
    units of degree < d. The first input in the order thus depends on nothing.
    """
    d = len(order)
    degrees_in = order + 1  # (D,)
    degrees_hidden = torch.arange(hidden) % max(1, d - 1) + 1  # (H,)
    first = degrees_hidden[:, None] >= degrees_in[None, :]  # (H, D)
    second = degrees_hidden[:, None] >= degrees_hidden[None, :]  # (H, H)
    last = degrees_in[:, None] > degrees_hidden[None, :]  # (D, H)
    return first, second, last


class IAFStep(nn.Module):
    """One inverse autoregressive flow step (Kingma et al. 2016, Eq. 14, their numerically stable form).

    [m, s] = MADE(z, h); sigma = sigmoid(s); z' = sigma * z + (1 - sigma) * m;
    log |det| = sum log sigma. The context h (the encoder's features) enters the first
    hidden layer unmasked. `order` sets which latent comes first; steps alternate it.
    """

    def __init__(self, features: int, latent_dim: int, hidden: int, order: Tensor, steps: int = 1):
        super().__init__()
        first, second, last = made_masks(order, hidden)
        self.inputs, self.context, self.hidden = MaskedLinear(first), nn.Linear(features, hidden), MaskedLinear(second)
        self.shift, self.gate = MaskedLinear(last), MaskedLinear(last)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.gate.weight)
        # The flow starts close to the identity (their Sec. 4.1: a gate bias of 1 or 2): 2 + log(steps) keeps
        # the product of the K steps' sigmas near sigmoid(2) = 0.88 whatever K, not 0.88^K (0.002 for K = 50).
        nn.init.constant_(self.gate.bias, 2.0 + math.log(steps))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        hidden = F.elu(self.hidden(F.elu(self.inputs(z) + self.context(h))))
        gate = self.gate(hidden)
        sigma = torch.sigmoid(gate)
        return sigma * z + (1 - sigma) * self.shift(hidden), F.logsigmoid(gate).sum(dim=-1)


class Posterior(nn.Module):
    """q(z|x): N(mu, diag sigma^2) from the encoder's features, then `steps` flow steps (none for `gaussian`)."""

    def __init__(self, features: int, latent_dim: int, kind: str = "gaussian", steps: int = 0, hidden: int = 256):
        super().__init__()
        if kind not in POSTERIORS:
            raise ValueError(f"posterior must be one of {', '.join(POSTERIORS)}, got {kind!r}")
        self.kind, self.latent_dim = kind, latent_dim
        self.head = nn.Linear(features, 2 * latent_dim)
        flow: Sequence[nn.Module] = ()
        if kind == "planar":
            flow = [PlanarStep(features, latent_dim) for _ in range(steps)]
        elif kind == "iaf":
            order = torch.arange(latent_dim)
            flow = [IAFStep(features, latent_dim, hidden, order if k % 2 == 0 else order.flip(0), steps) for k in range(steps)]
        self.flow = nn.ModuleList(flow)

    def gaussian(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The base Gaussian's mean and log-variance, each (B, D), in fp32 (also under autocast: a VampPrior's components come from here)."""
        with torch.autocast(h.device.type, enabled=False):
            mu, logvar = self.head(h.float()).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def forward(self, h: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z = flow(mu + sigma * eps) for noise eps (S, B, D): returns z (S, B, D), log q(z|x) (S, B), mu and logvar (B, D)."""
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            mu, logvar = self.gaussian(h)
            eps = eps.float()
            z = mu + torch.exp(0.5 * logvar) * eps
            # log N(z_0; mu, sigma^2) from eps rather than from (z - mu) / sigma: exact even when sigma is tiny.
            log_q = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(dim=-1)
            for step in self.flow:
                z, log_det = step(z, h)
                log_q = log_q - log_det
        return z, log_q, mu, logvar
