"""The one VAE: shapes for each architecture, and the CVAE's use of the label."""

from __future__ import annotations

import pytest
import torch

from vae_runner.model import LOGVAR_MAX, LOGVAR_MIN, VAE


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("mlp", 1, 28), ("conv", 1, 28), ("conv", 3, 32), ("conv", 3, 64), ("mlp", 3, 32), ("conv", 1, 20)],
)
def test_output_shapes(arch: str, channels: int, size: int) -> None:
    model = VAE(in_channels=channels, image_size=size, latent_dim=7, arch=arch)
    x = torch.rand(5, channels, size, size)
    out = model(x)
    assert out.x_params.shape == (5, channels, size, size)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 7)
    assert model.sample(torch.randn(3, 7)).shape == (3, channels, size, size)


def test_conv_pads_mnist_to_a_multiple_of_eight() -> None:
    model = VAE(in_channels=1, image_size=28, arch="conv", conv_channels=(8, 16, 32))
    assert model.pad == 4  # 28 -> 32 for three stride-2 layers


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
        model.to_posterior.bias[3:] = 1e6  # log-variance half
    _, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert logvar.max().item() == LOGVAR_MAX
    with torch.no_grad():
        model.to_posterior.bias[3:] = -1e6
    _, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert logvar.min().item() == LOGVAR_MIN


def test_gaussian_likelihood_learns_a_scale() -> None:
    model = VAE(in_channels=1, image_size=28, likelihood="gaussian")
    assert model.log_scale is not None and model.log_scale.requires_grad
    assert VAE(in_channels=1, image_size=28).log_scale is None
