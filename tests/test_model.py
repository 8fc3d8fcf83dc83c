"""The one VAE: shapes for each architecture, posterior, prior and likelihood, and the CVAE's use of the label."""

from __future__ import annotations

import math

import pytest
import torch

from vae_runner.choices import LIKELIHOODS, POSTERIORS, PRIORS
from vae_runner.model import VAE
from vae_runner.posteriors import LOGVAR_MAX, LOGVAR_MIN


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("mlp", 1, 28), ("conv", 1, 28), ("conv", 3, 32), ("conv", 3, 64), ("mlp", 3, 32), ("conv", 1, 20), ("resnet", 3, 32), ("resnet", 1, 28), ("resnet", 1, 20)],
)
def test_output_shapes(arch: str, channels: int, size: int) -> None:
    model = VAE(in_channels=channels, image_size=size, latent_dim=7, arch=arch, conv_channels=(8, 16, 32))
    x = torch.rand(5, channels, size, size)
    out = model(x)
    assert out.x_params.shape == (5, channels, size, size)
    assert out.mu.shape == out.logvar.shape == (5, 7)
    assert out.z.shape == (1, 5, 7) and out.log_q.shape == out.log_p.shape == (1, 5)
    assert model.sample(torch.randn(3, 7)).shape == (3, channels, size, size)


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_every_combination_gives_finite_scores_of_every_sample(posterior: str, prior: str, likelihood: str) -> None:
    torch.manual_seed(0)
    model = VAE(
        in_channels=3, image_size=12, latent_dim=5, arch="conv", conv_channels=(8, 16), num_classes=3,
        posterior=posterior, flow_steps=2, prior=prior, prior_components=7, likelihood=likelihood,
    )
    x, y = torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    out = model(x, y, samples=6)
    params = 2 if likelihood in ("gaussian", "discretized_logistic") else 1
    assert out.x_params.shape == (6 * 4, 3 * params, 12, 12)
    assert out.z.shape == (6, 4, 5) and out.log_q.shape == out.log_p.shape == (6, 4)
    assert bool(torch.isfinite(out.log_q).all() and torch.isfinite(out.log_p).all())
    assert (out.kl_dims is not None) == (posterior == "gaussian" and prior == "normal")  # the closed form exists only there
    assert model.code(x, y).shape == (4, 5)
    assert model.prior_distribution().sample(9).shape == (9, 5)


def test_conv_pads_mnist_to_a_multiple_of_eight_and_crops_back() -> None:
    model = VAE(in_channels=1, image_size=28, arch="conv", conv_channels=(8, 16, 32))
    assert model.encoder[0].padding == (0, 4, 0, 4)  # 28 -> 32 for three stride-2 layers
    assert model.decode(torch.randn(2, 20)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_cvae_decoder_output_changes_with_the_label(arch: str) -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4, arch=arch, num_classes=10)
    z = torch.randn(1, 4).repeat(10, 1)  # the same z for every class
    out = model.decode(z, torch.arange(10))
    diffs = (out[1:] - out[0]).abs().flatten(1).amax(1)
    assert diffs.min().item() > 1e-4  # every label gives a different image
    mu_a, _ = model.encode(torch.rand(1, 1, 28, 28).repeat(2, 1, 1, 1), torch.tensor([0, 1]))
    assert (mu_a[0] - mu_a[1]).abs().max().item() > 1e-5  # and the encoder sees it too


def test_cvae_refuses_to_run_without_labels() -> None:
    model = VAE(in_channels=1, image_size=28, num_classes=10)
    with pytest.raises(ValueError, match="needs labels"):
        model(torch.rand(2, 1, 28, 28))


def test_log_variance_is_clamped() -> None:
    model = VAE(in_channels=1, image_size=28, latent_dim=3)
    with torch.no_grad():
        model.posterior.head.bias[3:] = 1e6  # log-variance half
    _, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert logvar.max().item() == LOGVAR_MAX
    with torch.no_grad():
        model.posterior.head.bias[3:] = -1e6
    _, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert logvar.min().item() == LOGVAR_MIN


@pytest.mark.parametrize(("likelihood", "std_of_scale"), [("gaussian", 1.0), ("discretized_logistic", math.pi / math.sqrt(3))])
def test_a_learned_scale_starts_at_the_data_spread(likelihood: str, std_of_scale: float) -> None:
    # The decoder's scale map starts where the data are (mean 0.13, std 0.31: MNIST's), not at sigma = 1 on pixels in [0, 1].
    model = VAE(in_channels=1, image_size=28, likelihood=likelihood, data_mean=0.13, data_std=0.31)
    mean, log_scale = model.decode(torch.zeros(4, 20)).chunk(2, dim=1)
    assert (mean.mean().item(), (log_scale.exp() * std_of_scale).mean().item()) == (pytest.approx(0.13, abs=0.05), pytest.approx(0.31, rel=0.2))
    assert VAE(in_channels=1, image_size=28).decode(torch.zeros(1, 20)).shape == (1, 1, 28, 28)  # a Bernoulli has one map per channel
