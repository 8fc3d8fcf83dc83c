"""One VAE composed of independent choices: networks (`arch`), posterior, prior and likelihood; a CVAE with labels.

The loss lives in `vae_runner.objective`, not here: the model returns what
every objective needs (samples of q(z|x) with their log q and log p, and the
decoder's parameters of p(x|z)).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_runner.choices import closed_form_kl
from vae_runner.gaussian import kl_to_standard_normal
from vae_runner.likelihoods import make_likelihood
from vae_runner.nets import build_nets
from vae_runner.posteriors import Posterior
from vae_runner.priors import Prior, make_prior


@dataclass
class VAEOutput:
    """What the objectives need, for S posterior samples of each of B images."""

    x_params: Tensor  # (S * B, C', H, W), sample-major (row s * B + b): the decoder's parameters of p(x|z)
    z: Tensor  # (S, B, D) samples of q(z|x)
    log_q: Tensor  # (S, B) log q(z|x), the flow's log-determinants included
    log_p: Tensor  # (S, B) log p(z) under the prior
    mu: Tensor  # (B, D) the posterior's Gaussian stage
    logvar: Tensor  # (B, D)
    kl_dims: Optional[Tensor] = None  # (B, D) closed-form KL per dimension, when it exists (Gaussian posterior, normal prior)

    @property
    def samples(self) -> int:
        return self.z.shape[0]


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


class VAE(nn.Module):
    """A latent-variable model p(z) p(x|z) with an amortised posterior q(z|x) (Kingma & Welling 2013).

    With `num_classes > 0` it is a CVAE (Sohn et al. 2015): the one-hot label is
    concatenated to the encoder's features and to z before decoding. `posterior`
    is gaussian, planar or iaf (`flow_steps` steps); `prior` is normal, vamp or mog
    (`prior_components` components); `likelihood` names p(x|z). `data_mean` and
    `data_std` (pixels in [0, 1]) start a likelihood with a learned scale at the data's.
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
        posterior: str = "gaussian",
        flow_steps: int = 0,
        flow_hidden: int = 256,
        prior: str = "normal",
        prior_components: int = 500,
        data_mean: float = 0.5,
        data_std: float = 0.25,
    ):
        super().__init__()
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.arch, self.num_classes = arch, num_classes
        self.likelihood = make_likelihood(likelihood)
        nets = build_nets(
            arch, in_channels=in_channels, image_size=image_size, inputs=latent_dim + num_classes,
            out_channels=in_channels * self.likelihood.params_per_channel, hidden_dims=hidden_dims, conv_channels=conv_channels,
        )
        self.encoder, self.decoder = nets.encoder, nets.decoder
        self.posterior = Posterior(nets.features + num_classes, latent_dim, posterior, flow_steps, flow_hidden)
        self.prior_kind = prior
        self.prior = make_prior(
            prior, latent_dim=latent_dim, components=prior_components, image_shape=(in_channels, image_size, image_size), num_classes=num_classes
        )
        if self.likelihood.params_per_channel == 2:
            self._start_at_the_data(data_mean, data_std)

    def _start_at_the_data(self, mean: float, std: float) -> None:
        """Bias the decoder's last layer so p(x|z) starts at the data's mean and spread (the scale half of its outputs)."""
        last = [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
        half = last.bias.shape[0] // 2
        with torch.no_grad():
            last.bias[:half] = mean
            last.bias[half:] = self.likelihood.log_scale_for_std(max(std, 1e-3))

    @property
    def analytic_kl(self) -> bool:
        """Whether KL(q(z|x) || p(z)) has a closed form, per dimension: a Gaussian posterior and the standard-normal prior."""
        return closed_form_kl(self.posterior.kind, self.prior_kind)

    def _condition(self, h: Tensor, y: Optional[Tensor]) -> Tensor:
        if not self.num_classes:
            return h
        if y is None:
            raise ValueError("this CVAE needs labels y for encode/decode")
        return torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], dim=-1)

    def features(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x (B, C, H, W) in [0, 1] -> the encoder's features, with the one-hot label for a CVAE, (B, F)."""
        return self._condition(self.encoder(x), y)

    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the posterior's Gaussian stage (all of q(z|x) without a flow), each (B, latent_dim)."""
        return self.posterior.gaussian(self.features(x, y))

    def code(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The latent code of x, (B, D): the posterior mean, carried through the flow when there is one (its noise set to 0)."""
        h = self.features(x, y)
        z, *_ = self.posterior(h, torch.zeros(1, h.shape[0], self.latent_dim, device=h.device))
        return z[0]

    def prior_distribution(self) -> Prior:
        """p(z) as a distribution with `log_prob` and `sample` (the VampPrior encodes its pseudo-inputs here)."""
        return self.prior(self.encode)

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """z (B, latent_dim) -> parameters of p(x|z, y), (B, C', H, W)."""
        return self.decoder(self._condition(z, y))

    def forward(self, x: Tensor, y: Optional[Tensor] = None, eps: Optional[Tensor] = None, samples: int = 1) -> VAEOutput:
        """Encode, draw `samples` z per image (from the noise `eps`, (S, B, D) or (B, D), when given), score them, decode."""
        if eps is None:
            eps = torch.randn(samples, x.shape[0], self.latent_dim, device=x.device)
        return self.draw(self.features(x, y), y, eps if eps.dim() == 3 else eps.unsqueeze(0), self.prior_distribution())

    def draw(self, h: Tensor, y: Optional[Tensor], eps: Tensor, prior: Prior) -> VAEOutput:
        """From the encoder's features (B, F) and noise (S, B, D): z ~ q(z|x), its log q and log p under `prior`, and the decoding."""
        z, log_q, mu, logvar = self.posterior(h, eps)
        with torch.autocast(h.device.type, enabled=False):
            log_p = prior.log_prob(z)
        kl_dims = kl_to_standard_normal(mu, logvar) if self.analytic_kl else None
        s = z.shape[0]
        x_params = self.decode(z.flatten(0, 1), None if y is None else y.repeat(s))  # (S * B, C', H, W)
        return VAEOutput(x_params, z, log_q, log_p, mu, logvar, kl_dims)

    @torch.no_grad()
    def sample(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Mean images of p(x|z, y) in [0, 1] for given latents."""
        return self.likelihood.mean(self.decode(z, y))

