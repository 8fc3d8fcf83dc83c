"""p(x|z), the decoder's distribution over pixels in [0, 1]: `model.likelihood`.

Each likelihood reads the decoder's output (`params_per_channel` maps per
image channel), gives log p(x|z) summed over pixels in nats (fp32), and the
mean image. `discrete` says whether log p is a probability of the 8-bit data
(bits/dim need no offset) or a density on [0, 1] (see `metrics.bits_per_dim`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vae_runner.choices import LIKELIHOODS
from vae_runner.gaussian import LOG_2PI

# A Gaussian density above 256 on a pixel would give its 8-bit bin a probability above 1;
# the log-scale is floored where the peak density is 256 (-6.46), so bits/dim stay >= 0.
GAUSSIAN_LOG_SCALE_MIN = -math.log(256.0 * math.sqrt(2 * math.pi))
LOGISTIC_LOG_SCALE_MIN = -7.0  # PixelCNN++ (Salimans et al. 2017)
LOG_SCALE_MAX = 5.0
BINS = 256  # 8-bit pixels: value k is the image value k / 255


class Likelihood:
    """One kind of p(x|z); subclasses say how to score and how to draw the mean."""

    name = ""
    params_per_channel = 1
    discrete = True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per image, (N,), from the decoder's output (N, C * params_per_channel, H, W) and images (N, C, H, W)."""
        return self.log_prob_pixels(params.float(), x.float()).flatten(1).sum(dim=1)

    def log_prob_pixels(self, params: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The mean of p(x|z) as an image in [0, 1], (N, C, H, W)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Independent Bernoullis with logits: the classic choice for (binarised) MNIST."""

    name = "bernoulli"

    def log_prob_pixels(self, logits: Tensor, x: Tensor) -> Tensor:
        # From logits: stable, and allowed under CUDA autocast (plain binary_cross_entropy is refused there).
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())


class ContinuousBernoulli(Bernoulli):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the Bernoulli made a density on [0, 1], for grey levels.

    p(x|lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) with lambda = sigmoid(eta) and
    C = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2).
    """

    name = "continuous_bernoulli"
    discrete = False
    # The density at x = 0 or 1 grows like |eta|: clamped there it stays <= 256, so no 8-bit bin
    # gets a probability above 1 and bits/dim stay >= 0 (the Gaussian's floor on its scale, likewise).
    MAX_LOGIT = 256.0

    def log_prob_pixels(self, logits: Tensor, x: Tensor) -> Tensor:
        logits = logits.clamp(-self.MAX_LOGIT, self.MAX_LOGIT)
        return super().log_prob_pixels(logits, x) + log_normaliser(logits)

    def mean(self, logits: Tensor) -> Tensor:
        eta = logits.float().clamp(-self.MAX_LOGIT, self.MAX_LOGIT)
        near_half = eta.abs() < 1e-3
        safe = torch.where(near_half, torch.ones_like(eta), eta)
        exact = torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe
        return torch.where(near_half, 0.5 + eta / 12, exact).clamp(0.0, 1.0)  # Taylor at eta = 0


def log_normaliser(eta: Tensor) -> Tensor:
    """log C(eta) = log(eta / tanh(eta / 2)) of the continuous Bernoulli; log 2 + eta^2 / 12 near eta = 0."""
    near_half = eta.abs() < 1e-3
    safe = torch.where(near_half, torch.ones_like(eta), eta).abs()  # the ratio is even in eta
    # eta / tanh(eta/2) = eta (1 + e^-eta) / (1 - e^-eta), for eta > 0; log1p/expm1 keep it exact both near 0 and far out.
    exact = torch.log(safe) + torch.log1p(torch.exp(-safe)) - torch.log(-torch.expm1(-safe))
    return torch.where(near_half, math.log(2.0) + eta.pow(2) / 12, exact)


class LocationScale(Likelihood):
    """A likelihood the decoder parameterises with a mean map and a log-scale map per channel."""

    params_per_channel = 2

    def mean(self, params: Tensor) -> Tensor:
        return params.float().chunk(2, dim=1)[0].clamp(0.0, 1.0)

    def log_scale_for_std(self, std: float) -> float:
        """The log-scale whose distribution has standard deviation `std`."""
        raise NotImplementedError


class Gaussian(LocationScale):
    """N(mean, scale^2) per pixel, the decoder giving both (a mean and a log-scale map per channel).

    The log-scale is floored at GAUSSIAN_LOG_SCALE_MIN: otherwise a constant pixel
    (MNIST's background) lets the density grow without bound.
    """

    name = "gaussian"
    discrete = False

    def log_prob_pixels(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = params.chunk(2, dim=1)
        log_scale = log_scale.clamp(GAUSSIAN_LOG_SCALE_MIN, LOG_SCALE_MAX)
        u = (x - mean) * torch.exp(-log_scale)
        return -(0.5 * u.pow(2) + log_scale + 0.5 * LOG_2PI)

    def log_scale_for_std(self, std: float) -> float:
        return math.log(std)


class DiscretizedLogistic(LocationScale):
    """The discretized logistic (Kingma et al. 2016; Salimans et al. 2017): exact probabilities of 8-bit pixels.

    Pixel value k / 255 gets the logistic's mass on [k - 1/2, k + 1/2] / 255; the
    end bins take the tails, so the 256 probabilities sum to one.
    """

    name = "discretized_logistic"

    def log_prob_pixels(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = params.chunk(2, dim=1)
        log_scale = log_scale.clamp(LOGISTIC_LOG_SCALE_MIN, LOG_SCALE_MAX)
        inv_scale = torch.exp(-log_scale)
        half_bin = 0.5 / (BINS - 1)
        upper, lower = inv_scale * (x - mean + half_bin), inv_scale * (x - mean - half_bin)
        log_cdf_upper = F.logsigmoid(upper)  # the first bin: everything below its upper edge
        log_sf_lower = F.logsigmoid(-lower)  # the last bin: everything above its lower edge
        # log(sigmoid(upper) - sigmoid(lower)), written to stay exact in both tails
        log_mass = log_cdf_upper + torch.log((-torch.expm1(F.logsigmoid(lower) - log_cdf_upper)).clamp(min=1e-30))
        # When the mass underflows, the density at the bin's centre times the bin's width.
        centre = inv_scale * (x - mean)
        log_density = centre - log_scale - 2 * F.softplus(centre) - math.log(BINS - 1)
        interior = torch.where(torch.isfinite(log_mass) & (log_mass > -30), log_mass, log_density)
        return torch.where(x < half_bin, log_cdf_upper, torch.where(x > 1 - half_bin, log_sf_lower, interior))

    def log_scale_for_std(self, std: float) -> float:
        """A logistic's standard deviation is scale * pi / sqrt(3)."""
        return math.log(std * math.sqrt(3) / math.pi)


_BY_NAME: dict[str, type[Likelihood]] = {cls.name: cls for cls in (Bernoulli, ContinuousBernoulli, Gaussian, DiscretizedLogistic)}


def make_likelihood(name: str) -> Likelihood:
    """The likelihood called `name` (one of `vae_runner.choices.LIKELIHOODS`)."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown likelihood {name!r}; use one of {', '.join(LIKELIHOODS)}")
    return _BY_NAME[name]()
