"""Pictures of a trained VAE: grid shapes, traversal order, interpolation endpoints, the 2-D manifold, the labelled figures, the PNG files."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from tests.conftest import compose_config, read_images
from vae_runner.config import validate
from vae_runner.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES
from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.pictures import (
    _project_2d,
    anomaly_figure,
    class_colours,
    class_samples_figure,
    denoising_figure,
    denoising_grid,
    interpolation,
    latent_traversal,
    manifold_figure,
    manifold_grid,
    render,
    scatter_figure,
    top_kl_dims,
    traversal_figure,
)
from vae_runner.tracking import Tracker, image_bytes, png_name, reconstruction_grid, samples_grid
from vae_runner.train import epoch_folder, pictures_due

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

    def code(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return self.encode(x, y)[0]

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


def test_manifold_is_one_560_px_image_with_z1_decreasing_downwards() -> None:
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
        traversal_figure(model, x[:1], None, torch.ones(2), n_dims=2, steps=3)
        manifold_figure(model, n=3)
        assert model.training is training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pictures_of_a_cuda_model_come_back_on_the_cpu() -> None:
    model = tiny_vae(latent_dim=2, num_classes=10).cuda()
    x, y = torch.rand(2, 1, SIDE, SIDE), torch.tensor([3, 4])
    pictures = [
        latent_traversal(model, x[:1], y[:1], torch.ones(2), n_dims=2, steps=3),
        interpolation(model, x[:1], y[:1], x[1:], y[1:], steps=3),
        manifold_grid(model, n=3, y=5),
        render(traversal_figure(model, x[:1], y[:1], torch.ones(2), n_dims=2, steps=3)),
        render(manifold_figure(model, n=3, y=5)),
        render(scatter_figure(torch.randn(9, 2, device="cuda"), torch.arange(9, device="cuda"))),
    ]
    assert [p.device.type for p in pictures] == ["cpu"] * 6


# One image, one pair, one point: every picture still comes out, framed like a larger one.


def nan_decoder_vae(latent_dim: int = 2) -> VAE:
    """A tiny VAE whose decoder returns NaN for every pixel, as a diverged run's does."""
    model = tiny_vae(latent_dim=latent_dim)
    with torch.no_grad():
        for param in model.decoder[0].parameters():
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


# The labelled figures: what is handed to matplotlib (labels, points, the grid itself) and the size of what comes back.


def labels(ticks: list) -> list[str]:
    """The texts of matplotlib tick labels or legend entries."""
    return [t.get_text() for t in ticks]


def test_traversal_rows_name_their_dimension_and_its_kl_and_columns_their_offset() -> None:
    kl = torch.tensor([0.1, 5.0, 0.0, 2.004])
    fig = traversal_figure(OnlyZ1Decoder(), torch.rand(1, 1, SIDE, SIDE), None, kl, n_dims=4, steps=11)
    ax = fig.axes[0]
    rows = labels(ax.get_yticklabels())
    assert rows == ["z1  KL 5.00", "z3  KL 2.00", "z0  KL 0.10", "z2  KL 0.00"]  # sorted by KL, like the grid's rows
    assert [float(r.split("KL ")[1]) for r in rows] == pytest.approx([kl[d].item() for d in (1, 3, 0, 2)], abs=0.005)
    assert list(ax.get_yticks()) == [16.0, 46.0, 76.0, 106.0]  # the centres of the 28 px rows, 30 px apart
    assert labels(ax.get_xticklabels()) == ["−3", "", "", "", "", "0", "", "", "", "", "3"]  # 11 ticks; the whole σ written
    assert ax.get_xlabel() == "σ from the mean, steps of 0.6"
    grid = latent_traversal(OnlyZ1Decoder(), torch.rand(1, 1, SIDE, SIDE), None, kl, n_dims=4, steps=11)
    assert np.array_equal(fig.images[0].get_array(), image_bytes(grid))  # the grid itself, pixel for pixel
    image = render(fig)
    assert image.shape[:2] == (3, 4 * CELL + 2 + 46)  # 46 px: two lines of text above, 4 px below
    assert 11 * CELL + 2 + 60 < image.shape[2] <= 800  # row labels beside; fits a TensorBoard card


def test_cvae_sample_rows_are_named_after_their_class() -> None:
    grid = samples_grid(torch.rand(80, 1, SIDE, SIDE))  # 10 classes x 8
    assert labels(class_samples_figure(grid, (SIDE, SIDE), MNIST_CLASSES, 10).axes[0].get_yticklabels()) == MNIST_CLASSES
    assert labels(class_samples_figure(grid, (SIDE, SIDE), FASHION_MNIST_CLASSES, 10).axes[0].get_yticklabels())[7] == "Sneaker"
    unnamed = labels(class_samples_figure(grid, (SIDE, SIDE), ["short", "a class name far too long to sit beside a row"], 10).axes[0].get_yticklabels())
    assert unnamed[:3] == ["short", "a class name far too lo…", "class 2"]  # 23 characters and an ellipsis
    assert len(unnamed[1]) == 24
    assert render(class_samples_figure(grid, (SIDE, SIDE), MNIST_CLASSES, 10)).shape[1] == 10 * CELL + 2 + 8


def test_denoising_rows_are_named() -> None:
    noisy, recon, clean = (torch.full((8, 1, SIDE, SIDE), v) for v in (0.2, 0.5, 0.8))
    fig = denoising_figure(noisy, recon, clean)
    assert labels(fig.axes[0].get_yticklabels()) == ["noisy", "reconstructed", "clean"]
    assert render(fig).shape[1] == 3 * CELL + 2 + 8


def test_manifold_axes_give_z_at_the_tile_centres() -> None:
    model = tiny_vae(latent_dim=2)
    fig = manifold_figure(model, n=20, span=2.0)
    ax = fig.axes[0]
    # 20 tiles centred on -2 ... 2, 4/19 apart: the image spans half a tile more on each side.
    assert ax.get_xlim() == pytest.approx((-2 - 2 / 19, 2 + 2 / 19)) and ax.get_ylim() == pytest.approx((-2 - 2 / 19, 2 + 2 / 19))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z0", "z1")
    assert np.array_equal(fig.images[0].get_array(), image_bytes(manifold_grid(model, n=20, span=2.0)))
    assert render(fig).shape == (3, 560 + 56, 560 + 82)  # the 560 px image and its axes


def test_scatter_hands_matplotlib_each_class_means_under_its_name() -> None:
    mu = torch.tensor([[4.0, 0.0], [-1.0, 3.0], [0.5, -2.0], [1.0, 1.0]])
    fig = scatter_figure(mu, torch.tensor([0, 1, 2, 0]), MNIST_CLASSES, images="validation images")
    ax = fig.axes[0]
    assert [c.get_offsets().tolist() for c in ax.collections] == [[[4.0, 0.0], [1.0, 1.0]], [[-1.0, 3.0]], [[0.5, -2.0]]]
    assert labels(ax.get_legend().get_texts()) == ["0 - zero", "1 - one", "2 - two"]
    tab10 = class_colours(10)
    assert [c.get_facecolor()[0][:3].tolist() for c in ax.collections] == [tab10[k][:3].tolist() for k in range(3)]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title(loc="left")) == ("z0", "z1", "posterior means of 4 validation images")
    assert render(fig).shape == (3, 420, 520)


def test_scatter_of_5_d_means_plots_their_principal_components() -> None:
    direction = torch.tensor([0.0, 3.0, 0.0, 4.0, 0.0]) / 5.0
    mu = torch.linspace(-2, 2, 9)[:, None] * direction + 1.0  # all variance along one axis, off the origin
    ax = scatter_figure(mu, torch.zeros(9, dtype=torch.long), ["T"]).axes[0]
    (points,) = ax.collections
    assert np.allclose(points.get_offsets(), _project_2d(mu).numpy(), atol=1e-6)
    assert np.allclose(np.abs(points.get_offsets()[:, 0]), [2, 1.5, 1, 0.5, 0, 0.5, 1, 1.5, 2], atol=1e-5)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (100% of the variance)", "PC2 (0% of the variance)")


def test_scatter_leaves_out_non_finite_means_and_says_how_many() -> None:
    mu = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0], [1.0, 0.0]])
    ax = scatter_figure(mu, torch.tensor([0, 1, 2]), MNIST_CLASSES).axes[0]
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[1.0, 0.0]]
    assert points.get_facecolor()[0][:3].tolist() == class_colours(10)[2][:3].tolist()  # class 2 keeps its colour
    assert labels(ax.get_legend().get_texts()) == ["2 - two"]
    assert ax.get_title(loc="left") == "posterior means of 1 image (2 non-finite left out)"
    nothing = scatter_figure(torch.full((3, 4), float("nan")), torch.tensor([0, 1, 2]))
    assert len(nothing.axes[0].collections) == 0 and render(nothing).shape == (3, 420, 520)


def test_scatter_without_labels_is_one_colour_and_without_legend() -> None:
    ax = scatter_figure(torch.randn(200, 2), None).axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 200
    assert ax.get_legend() is None


def test_scatter_of_25_classes_has_25_colours_and_no_legend() -> None:
    ax = scatter_figure(torch.randn(250, 2), torch.arange(25).repeat(10)).axes[0]
    assert len(ax.collections) == 25 and ax.get_legend() is None  # 25 names would not fit beside the plot
    assert len({tuple(c.get_facecolor()[0].round(4)) for c in ax.collections}) == 25


def test_scatter_refuses_zero_means_and_a_label_count_that_differs() -> None:
    with pytest.raises(ValueError, match="N >= 1"):
        scatter_figure(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="got 2 labels for 3 means"):
        scatter_figure(torch.zeros(3, 2), torch.tensor([0, 1]))


def test_anomaly_figure_shows_both_groups_on_shared_bins() -> None:
    torch.manual_seed(0)
    normal = torch.cat([torch.randn(900) * 10 + 100, torch.tensor([float("nan")])])
    fig = anomaly_figure(normal, torch.randn(100) * 10 + 130, 0.9301, [0])
    ax = fig.axes[0]
    assert labels(ax.get_legend().get_texts()) == ["normal (900 images)", "held out: class 0 (100 images)"]  # the NaN left out
    assert fig.get_suptitle() == "anomaly scores of the test images, AUROC 0.930"
    bars = ax.patches
    assert len(bars) == 100  # 50 shared bins for each group
    assert [b.get_x() for b in bars[:50]] == [b.get_x() for b in bars[50:]]
    assert sum(b.get_height() * b.get_width() for b in bars[:50]) == pytest.approx(1.0)  # a density
    assert render(fig).shape == (3, 320, 520)


def test_drawing_is_not_paid_for_at_import() -> None:
    code = "import sys, vae_runner.train, vae_runner.evaluate, vae_runner.pictures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# The PNG files: the very pixels TensorBoard shows, where and when.


def tensorboard_pixels(event_dir: Path, tag: str) -> list[np.ndarray]:
    """Each logged image of a tag, decoded, as (H, W, 3) uint8."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"images": 0})
    acc.Reload()
    return [np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")) for e in acc.Images(tag)]


def png_pixels(path: Path) -> np.ndarray:
    """A PNG file as (H, W, 3) uint8."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_png_names_follow_the_tag() -> None:
    assert png_name("samples/prior") == "samples_prior.png"
    assert png_name("latent/traversal") == "latent_traversal.png"


def test_tracker_saves_the_pixels_tensorboard_shows_and_copies_inside_the_block(tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    tracker = Tracker(tmp_path, pictures=pictures)
    grid = torch.rand(3, 20, 30)
    grid[0, 0, 0] = float("nan")
    tracker.image("latent/traversal", grid, step=5)
    with tracker.copies_in("epoch_003"):
        tracker.image("samples/prior", torch.full((1, 4, 6), 0.5), step=6)  # grey: saved as RGB, like TensorBoard's
    tracker.image("samples/prior", torch.full((1, 4, 6), 0.25), step=7)  # after the block: the latest only
    tracker.close()
    files = sorted(str(p.relative_to(pictures)) for p in pictures.rglob("*") if p.is_file())
    assert files == ["epoch_003/samples_prior.png", "latent_traversal.png", "samples_prior.png"]  # no temporary files left
    (traversal,) = tensorboard_pixels(tmp_path, "latent/traversal")
    assert traversal.shape == (20, 30, 3) and np.array_equal(png_pixels(pictures / "latent_traversal.png"), traversal)
    assert png_pixels(pictures / "latent_traversal.png")[0, 0, 0] == 0  # NaN drawn black
    at_6, at_7 = tensorboard_pixels(tmp_path, "samples/prior")
    assert np.array_equal(png_pixels(pictures / "epoch_003" / "samples_prior.png"), at_6) and at_6[0, 0].tolist() == [128, 128, 128]
    assert np.array_equal(png_pixels(pictures / "samples_prior.png"), at_7) and at_7[0, 0].tolist() == [64, 64, 64]


def test_a_tracker_without_a_log_dir_writes_no_png(tmp_path: Path) -> None:
    tracker = Tracker(None, pictures=tmp_path / "pictures")
    with tracker.copies_in("epoch_001"):
        tracker.image("samples/prior", torch.rand(3, 8, 8), step=1)
    assert not (tmp_path / "pictures").exists()


def test_cvae_prior_samples_reach_tensorboard_and_the_png_with_class_names(tmp_path: Path) -> None:
    from vae_runner.evaluate import Examples, sample_pictures

    model = tiny_vae(num_classes=10)
    tracker = Tracker(tmp_path, pictures=tmp_path / "pictures")
    sample_pictures(tracker, model, Examples(torch.rand(8, 1, SIDE, SIDE), torch.arange(8)), step=3, seed=0, class_names=MNIST_CLASSES)
    tracker.close()
    images = read_images(tmp_path)
    assert images["samples/prior"][0][1] == 10 * CELL + 2 + 8  # one row per class, with 4 px above and below
    assert images["samples/prior"][0][2] > 8 * CELL + 2 + 40  # the class names beside the rows
    (shown,) = tensorboard_pixels(tmp_path, "samples/prior")
    assert np.array_equal(png_pixels(tmp_path / "pictures" / "samples_prior.png"), shown)


def test_pictures_are_drawn_every_n_epochs_kept_every_m_and_always_at_the_end() -> None:
    t = OmegaConf.create({"epochs": 5, "max_steps": None, "image_every_epochs": 2, "pictures_every_epochs": 0})
    assert [e for e in range(1, 6) if pictures_due(t, e, step=0)[0]] == [2, 4, 5]  # 5 is not a multiple of 2, but the last
    assert not any(pictures_due(t, e, step=0)[1] for e in range(1, 6))
    t.pictures_every_epochs = 3
    assert [e for e in range(1, 6) if pictures_due(t, e, step=0)[0]] == [2, 3, 4, 5]
    assert [e for e in range(1, 6) if pictures_due(t, e, step=0)[1]] == [3]
    t.max_steps = 100  # train.max_steps ends the run in epoch 3
    assert pictures_due(t, 1, step=99) == (False, False) and pictures_due(t, 1, step=100) == (True, False)
    assert (epoch_folder(3, 10), epoch_folder(7, 2000)) == ("epoch_003", "epoch_0007")


def test_a_negative_pictures_every_epochs_is_one_sentence() -> None:
    with pytest.raises(UserError, match=r"^train.pictures_every_epochs=-1 is negative; use 0 to keep only the latest pictures"):
        validate(compose_config(["train.pictures_every_epochs=-1"]))
    validate(compose_config(["train.pictures_every_epochs=2"]))
