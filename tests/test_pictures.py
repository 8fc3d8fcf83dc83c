"""Pictures of a trained VAE: grid shapes, traversal order, interpolation endpoints, the 2-D manifold, scatter plots."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from vae_runner.model import VAE
from vae_runner.pictures import (
    TAB10,
    denoising_grid,
    interpolation,
    latent_scatter,
    latent_traversal,
    manifold_grid,
    top_kl_dims,
)

SIDE = 28
CELL = SIDE + 2  # one tile plus make_grid's 2 px gutter


def tile(grid: Tensor, row: int, col: int) -> Tensor:
    """The (C, 28, 28) tile at (row, col) of a make_grid grid with padding 2."""
    top, left = 2 + row * CELL, 2 + col * CELL
    return grid[:, top : top + SIDE, left : left + SIDE]


def tiny_vae(latent_dim: int = 4, num_classes: int = 0) -> VAE:
    """A small untrained MLP VAE on 28x28 single-channel images."""
    torch.manual_seed(0)
    return VAE(in_channels=1, image_size=SIDE, latent_dim=latent_dim, hidden_dims=(32,), num_classes=num_classes)


class OnlyZ1Decoder(nn.Module):
    """A stand-in VAE whose posterior mean is fixed and whose decoder looks at z_1 alone."""

    latent_dim, num_classes = 4, 0
    mu = (0.5, -0.25, 1.0, 2.0)

    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        mu = torch.tensor([self.mu]).expand(x.shape[0], -1)
        return mu, torch.zeros_like(mu)

    def sample(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return torch.sigmoid(z[:, 1]).view(-1, 1, 1, 1).expand(-1, 1, SIDE, SIDE)


def test_traversal_is_four_rows_of_seven_tiles() -> None:
    grid = latent_traversal(tiny_vae(latent_dim=6), torch.rand(1, 1, SIDE, SIDE), None, torch.rand(6), n_dims=4, steps=7)
    assert grid.shape == (3, 4 * CELL + 2, 7 * CELL + 2)
    assert grid.device.type == "cpu" and 0.0 <= grid.min().item() and grid.max().item() <= 1.0


def test_traversal_rows_follow_kl_and_only_the_decoded_dimension_changes() -> None:
    kl = torch.tensor([0.1, 5.0, 0.0, 2.0])
    assert top_kl_dims(kl, 4) == [1, 3, 0, 2]
    grid = latent_traversal(OnlyZ1Decoder(), torch.rand(1, 1, SIDE, SIDE), None, kl, n_dims=4, steps=7, span=3.0)
    # Row 0 sweeps z_1 from -0.25 - 3 to -0.25 + 3: sigmoid(-3.25) = 0.037 up to sigmoid(2.75) = 0.940.
    assert tile(grid, 0, 0)[0, 0, 0].item() == pytest.approx(0.0373, abs=1e-4)
    assert tile(grid, 0, 6)[0, 0, 0].item() == pytest.approx(0.9399, abs=1e-4)
    assert tile(grid, 0, 3)[0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-0.25)).item(), abs=1e-6)
    # Rows 1-3 sweep z_3, z_0, z_2, which this decoder ignores: 7 identical tiles each.
    for row in (1, 2, 3):
        spread = max((tile(grid, row, c) - tile(grid, row, 0)).abs().max().item() for c in range(7))
        assert spread == 0.0


def test_traversal_caps_rows_at_latent_dim() -> None:
    grid = latent_traversal(OnlyZ1Decoder(), torch.rand(1, SIDE, SIDE), None, torch.ones(4), n_dims=10, steps=3)
    assert grid.shape[1] == 4 * CELL + 2  # 4 dimensions, not 10


def test_interpolation_is_three_rows_of_ten_with_the_means_at_the_ends() -> None:
    model = tiny_vae()
    x_a, x_b = torch.rand(3, 1, SIDE, SIDE), torch.rand(3, 1, SIDE, SIDE)
    grid = interpolation(model, x_a, None, x_b, None, steps=10)
    assert grid.shape == (3, 3 * CELL + 2, 10 * CELL + 2)
    with torch.no_grad():
        start = model.sample(model.encode(x_a)[0])
        end = model.sample(model.encode(x_b)[0])
    for i in range(3):
        assert (tile(grid, i, 0)[0] - start[i, 0]).abs().max().item() < 1e-6
        assert (tile(grid, i, 9)[0] - end[i, 0]).abs().max().item() < 1e-6


def test_cvae_interpolation_decodes_with_the_start_label() -> None:
    model = tiny_vae(num_classes=10)
    x_a, x_b = torch.rand(1, 1, SIDE, SIDE), torch.rand(1, 1, SIDE, SIDE)
    y_a, y_b = torch.tensor([2]), torch.tensor([7])
    grid = interpolation(model, x_a, y_a, x_b, y_b, steps=5)
    with torch.no_grad():
        mu_b = model.encode(x_b, y_b)[0]
        with_start_label, with_own_label = model.sample(mu_b, y_a), model.sample(mu_b, y_b)
    assert (tile(grid, 0, 4)[0] - with_start_label[0, 0]).abs().max().item() < 1e-6
    assert (tile(grid, 0, 4)[0] - with_own_label[0, 0]).abs().max().item() > 1e-4


def test_manifold_is_one_560_px_image_with_z_2_decreasing_downwards() -> None:
    model = tiny_vae(latent_dim=2)
    image = manifold_grid(model, n=20, span=2.0)
    assert image.shape == (1, 20 * SIDE, 20 * SIDE)
    with torch.no_grad():
        corners = model.sample(torch.tensor([[-2.0, 2.0], [2.0, -2.0]]))
    assert (image[:, :SIDE, :SIDE] - corners[0]).abs().max().item() < 1e-6  # top left is z = (-2, +2)
    assert (image[:, -SIDE:, -SIDE:] - corners[1]).abs().max().item() < 1e-6  # bottom right is z = (+2, -2)


def test_manifold_refuses_latent_dim_3() -> None:
    with pytest.raises(ValueError, match="latent_dim=3"):
        manifold_grid(tiny_vae(latent_dim=3))


def test_scatter_puts_class_0_right_of_centre_on_white() -> None:
    mu = torch.tensor([[4.0, 0.0], [-1.0, 3.0], [0.5, -2.0]])
    image = latent_scatter(mu, torch.tensor([0, 1, 2]), size=512)
    assert image.shape == (3, 512, 512)
    # Range is +-4.4, so (4, 0) lands at column round(8.4 / 8.8 * 511) = 488, row 511 - 256 = 255.
    class_0 = torch.tensor(TAB10[0]) / 255.0
    assert torch.allclose(image[:, 255, 488], class_0)
    assert torch.allclose(image[:, 255 - 1 : 255 + 2, 488 - 1 : 488 + 2], class_0.view(3, 1, 1).expand(3, 3, 3))
    assert image[:, 10, 10].tolist() == [1.0, 1.0, 1.0]
    white = (image == 1.0).all(dim=0).float().mean().item()
    assert white > 0.99  # 3 dots of 9 px and two 512 px axes in 262,144 px


def test_scatter_without_labels_uses_one_colour() -> None:
    image = latent_scatter(torch.randn(200, 2), None, size=128)
    colours = {tuple(round(v, 4) for v in px) for px in image.permute(1, 2, 0).reshape(-1, 3).tolist()}
    colours -= {(1.0, 1.0, 1.0), (0.85, 0.85, 0.85)}  # background and axes
    assert len(colours) == 1


def test_scatter_of_5_d_means_plots_their_first_principal_component_horizontally() -> None:
    direction = torch.tensor([0.0, 3.0, 0.0, 4.0, 0.0]) / 5.0
    mu = torch.linspace(-2, 2, 9)[:, None] * direction + 1.0  # all variance along one axis, off the origin
    image = latent_scatter(mu, torch.zeros(9, dtype=torch.long), size=256)
    class_0 = torch.tensor(TAB10[0]) / 255.0
    coloured = (image - class_0.view(3, 1, 1)).abs().amax(dim=0) < 1e-6
    rows = coloured.nonzero()[:, 0]
    assert rows.min().item() >= 126 and rows.max().item() <= 129  # centre row 127 +- the dot's 1 px
    cols = coloured.nonzero()[:, 1]
    # Range is +-2.2 around the centre: the end points +-2 sit at columns 12 and 243, each dot 1 px wider.
    assert (cols.min().item(), cols.max().item()) == (11, 244)


def test_denoising_grid_is_three_rows_of_eight() -> None:
    noisy, recon, clean = (torch.full((10, 1, SIDE, SIDE), v) for v in (0.2, 0.5, 0.8))
    grid = denoising_grid(noisy, recon, clean, n=8)
    assert grid.shape == (3, 3 * CELL + 2, 8 * CELL + 2)
    assert [tile(grid, r, 5)[0, 0, 0].item() for r in range(3)] == pytest.approx([0.2, 0.5, 0.8])


def test_pictures_leave_the_model_in_its_previous_mode() -> None:
    model = tiny_vae(latent_dim=2)
    x = torch.rand(2, 1, SIDE, SIDE)
    for training in (True, False):
        model.train(training)
        latent_traversal(model, x[:1], None, torch.ones(2), n_dims=2, steps=3)
        interpolation(model, x[:1], None, x[1:], None, steps=3)
        manifold_grid(model, n=3)
        assert model.training is training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pictures_of_a_cuda_model_come_back_on_the_cpu() -> None:
    model = tiny_vae(latent_dim=2, num_classes=10).cuda()
    x, y = torch.rand(2, 1, SIDE, SIDE), torch.tensor([3, 4])
    pictures = [
        latent_traversal(model, x[:1], y[:1], torch.ones(2), n_dims=2, steps=3),
        interpolation(model, x[:1], y[:1], x[1:], y[1:], steps=3),
        manifold_grid(model, n=3, y=5),
        latent_scatter(torch.randn(9, 2, device="cuda"), torch.arange(9, device="cuda")),
    ]
    assert [p.device.type for p in pictures] == ["cpu"] * 4
