"""Pictures of a trained VAE: grid shapes, traversal order, interpolation endpoints, the 2-D manifold, scatter plots."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from vae_runner.model import VAE
from vae_runner.pictures import (
    AXIS_GREY,
    TAB10,
    _project_2d,
    denoising_grid,
    interpolation,
    latent_scatter,
    latent_traversal,
    manifold_grid,
    top_kl_dims,
)
from vae_runner.tracking import reconstruction_grid, samples_grid

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


# One image, one pair, one point: every picture still comes out, framed like a larger one.


def nan_decoder_vae(latent_dim: int = 2) -> VAE:
    """A tiny VAE whose decoder returns NaN for every pixel, as a diverged run's does."""
    model = tiny_vae(latent_dim=latent_dim)
    with torch.no_grad():
        for param in model.decoder_in.parameters():
            param.fill_(float("nan"))
    return model


def test_one_pair_interpolation_is_one_row_of_ten() -> None:
    grid = interpolation(tiny_vae(), torch.rand(1, 1, SIDE, SIDE), None, torch.rand(1, 1, SIDE, SIDE), None, steps=10)
    assert grid.shape == (3, 32, 302)  # 28 + 2 x 2 px gutters high, 10 x 30 + 2 wide


def test_one_step_interpolation_is_one_framed_tile_of_the_start_mean() -> None:
    model = tiny_vae()
    x_a = torch.rand(1, 1, SIDE, SIDE)
    grid = interpolation(model, x_a, None, torch.rand(1, 1, SIDE, SIDE), None, steps=1)
    assert grid.shape == (3, 32, 32)  # make_grid would return a lone tile bare: (1, 28, 28)
    with torch.no_grad():
        start = model.sample(model.encode(x_a)[0])
    assert (tile(grid, 0, 0)[0] - start[0, 0]).abs().max().item() < 1e-6
    assert grid[:, :2, :].min().item() == 1.0  # the white top gutter


def test_interpolation_refuses_zero_pairs_and_unequal_counts() -> None:
    model = tiny_vae()
    with pytest.raises(ValueError, match="at least one"):
        interpolation(model, torch.rand(0, 1, SIDE, SIDE), None, torch.rand(0, 1, SIDE, SIDE), None)
    with pytest.raises(ValueError, match="got 1 and 2"):
        interpolation(model, torch.rand(2, 1, SIDE, SIDE), None, torch.rand(1, 1, SIDE, SIDE), None)


def test_traversal_of_one_dimension_in_one_step_is_the_mean_in_one_tile() -> None:
    model = OnlyZ1Decoder()
    grid = latent_traversal(model, torch.rand(1, 1, SIDE, SIDE), None, torch.tensor([0.0, 1.0, 0.0, 0.0]), n_dims=1, steps=1)
    assert grid.shape == (3, 32, 32)
    # Row 0 is z_1 (highest KL); one step shows its mean -0.25 itself, not -0.25 - span.
    assert tile(grid, 0, 0)[0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-0.25)).item(), abs=1e-6)


def test_traversal_uses_the_first_of_a_batch_and_refuses_none() -> None:
    grid = latent_traversal(OnlyZ1Decoder(), torch.rand(5, 1, SIDE, SIDE), None, torch.ones(4), n_dims=2, steps=3)
    assert grid.shape == (3, 2 * CELL + 2, 3 * CELL + 2)
    with pytest.raises(ValueError, match="at least one"):
        latent_traversal(OnlyZ1Decoder(), torch.rand(0, 1, SIDE, SIDE), None, torch.ones(4))
    with pytest.raises(ValueError, match="steps=0"):
        latent_traversal(OnlyZ1Decoder(), torch.rand(1, 1, SIDE, SIDE), None, torch.ones(4), steps=0)


def test_nan_kl_dimensions_rank_last() -> None:
    assert top_kl_dims(torch.tensor([float("nan"), 1.0, 3.0, float("nan")]), 4) == [2, 1, 0, 3]


def test_one_image_grids_are_framed_tiles() -> None:
    one = torch.full((1, 1, SIDE, SIDE), 0.5)
    assert denoising_grid(one, one, one).shape == (3, 3 * CELL + 2, 32)  # (3, 92, 32)
    assert reconstruction_grid(one, one).shape == (3, 2 * CELL + 2, 32)  # (3, 62, 32)
    assert samples_grid(one).shape == (3, 32, 32)
    assert samples_grid(torch.rand(1, 3, 32, 32)).shape == (3, 36, 36)


def test_grids_refuse_zero_images() -> None:
    none = torch.rand(0, 1, SIDE, SIDE)
    for make in (lambda: denoising_grid(none, none, none), lambda: reconstruction_grid(none, none), lambda: samples_grid(none)):
        with pytest.raises(ValueError, match="at least 1"):
            make()


def test_grids_of_nan_and_inf_pixels_are_black_and_white() -> None:
    x = torch.stack([torch.full((1, SIDE, SIDE), v) for v in (float("nan"), float("inf"), float("-inf"), 0.5)])
    grid = samples_grid(x, per_row=4)
    assert [tile(grid, 0, c)[0, 0, 0].item() for c in range(4)] == [0.0, 1.0, 0.0, 0.5]
    recon = reconstruction_grid(x[:1], x[1:2])
    assert (tile(recon, 0, 0).max().item(), tile(recon, 1, 0).min().item()) == (0.0, 1.0)


def test_manifold_of_a_nan_decoder_is_black_and_finite() -> None:
    image = manifold_grid(nan_decoder_vae(), n=3)
    assert image.shape == (1, 3 * SIDE, 3 * SIDE)
    assert torch.isfinite(image).all() and image.abs().max().item() == 0.0


def test_manifold_of_one_tile_and_of_none() -> None:
    assert manifold_grid(tiny_vae(latent_dim=2), n=1).shape == (1, SIDE, SIDE)
    with pytest.raises(ValueError, match="n=0"):
        manifold_grid(tiny_vae(latent_dim=2), n=0)


def test_traversal_and_interpolation_of_a_nan_decoder_are_finite() -> None:
    model = nan_decoder_vae(latent_dim=4)
    x = torch.rand(1, 1, SIDE, SIDE)
    traversal = latent_traversal(model, x, None, torch.ones(4), n_dims=2, steps=3)
    line = interpolation(model, x, None, x, None, steps=4)
    assert traversal.shape == (3, 62, 92) and line.shape == (3, 32, 122)
    assert torch.isfinite(traversal).all() and tile(traversal, 1, 2).max().item() == 0.0
    assert torch.isfinite(line).all() and tile(line, 0, 3).max().item() == 0.0


def test_projection_of_one_and_two_points() -> None:
    assert _project_2d(torch.randn(1, 5)).tolist() == [[0.0, 0.0]]  # one point is its own mean
    two = _project_2d(torch.tensor([[0.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0]]))
    assert two.shape == (2, 2)
    assert two.abs().tolist() == [[1.0, 0.0], [1.0, 0.0]]  # +-1 along the one direction they differ in


def test_scatter_of_one_5_d_point_is_a_dot_at_the_origin() -> None:
    image = latent_scatter(torch.randn(1, 5), torch.tensor([3]), size=64)
    class_3 = torch.tensor(TAB10[3]) / 255.0
    coloured = ((image - class_3.view(3, 1, 1)).abs().amax(dim=0) < 1e-6).nonzero()
    # The origin is pixel round(31.5) = 32 across and 63 - 32 = 31 down; the dot is 3x3 around it.
    assert coloured[:, 0].unique().tolist() == [30, 31, 32] and coloured[:, 1].unique().tolist() == [31, 32, 33]


def test_scatter_leaves_out_non_finite_means() -> None:
    mu = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0], [1.0, 0.0]])
    image = latent_scatter(mu, torch.tensor([0, 1, 2]), size=64)
    pixels = {tuple(round(v, 4) for v in px) for px in image.permute(1, 2, 0).reshape(-1, 3).tolist()}
    colours = [tuple(round(v / 255.0, 4) for v in TAB10[k]) for k in range(3)]
    assert pixels & set(colours) == {colours[2]}  # classes 0 and 1 had the NaN and the Inf
    # The one finite mean (1, 0) sets the range to +-1.1: column round(2.1 / 2.2 * 63) = 60, on the z2 = 0 axis at row 31.
    assert torch.allclose(image[:, 31, 60], torch.tensor(TAB10[2]) / 255.0)


def test_scatter_of_only_non_finite_means_is_its_axes() -> None:
    image = latent_scatter(torch.full((3, 4), float("nan")), torch.tensor([0, 1, 2]), size=64)
    grey = (image == AXIS_GREY).all(dim=0)
    assert grey.sum().item() == 2 * 64 - 1  # two 64 px axes crossing at one pixel
    assert (image == 1.0).all(dim=0).sum().item() == 64 * 64 - 127
    assert grey[31].all() and grey[:, 32].all()  # z2 = 0 at row 63 - 32, z1 = 0 at column 32


def test_scatter_refuses_zero_means() -> None:
    with pytest.raises(ValueError, match="N >= 1"):
        latent_scatter(torch.zeros(0, 2))
