"""Pictures of what a trained VAE learned: traversals, interpolations, the 2-D manifold, latent scatter plots.

Every function returns one (C, H, W) float image in [0, 1] on the CPU, ready for
`SummaryWriter.add_image` (or `Tracker.image`); plots are rasterised with torch,
so matplotlib is not needed. One image (or pair, or point) is enough for each;
none is a ValueError. A model gone non-finite still gives a picture: NaN pixels
are drawn black, and NaN or Inf means are left out of the scatter plot.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from vae_runner.model import evaluating
from vae_runner.tracking import finite_pixels, image_grid


Labels = Optional[Union[int, Tensor]]

# matplotlib's tab10, as 0-255 RGB, so class colours match the plots people already know.
TAB10 = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
AXIS_GREY = 0.85


def _labels(y: Labels, n: int, device: torch.device) -> Optional[Tensor]:
    """A label given as an int, a scalar or a (1,) tensor, broadcast to n; None stays None."""
    if y is None:
        return None
    y = torch.as_tensor(y, device=device).long().reshape(-1)
    return y.expand(n) if y.numel() == 1 else y


def _grid(images: Tensor, per_row: int) -> Tensor:
    """Tiles on the CPU with the same white 2 px gutters as the tracking grids, a single tile included."""
    return image_grid(images, per_row)


def _images(x: Tensor, name: str) -> Tensor:
    """x as (N, C, H, W), a lone (C, H, W) image included; a ValueError naming `name` when it holds none."""
    x = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} needs at least one (C, H, W) image, got shape {tuple(x.shape)}")
    return x


def top_kl_dims(kl_per_dim: Tensor, n_dims: int = 10) -> list[int]:
    """Indices of the `n_dims` latent dimensions with the highest KL, highest first (ties keep index order; NaN last)."""
    # A NaN KL says nothing about a dimension, and argsort would rank it above every number.
    order = torch.argsort(kl_per_dim.detach().float().cpu().nan_to_num(nan=-torch.inf), descending=True, stable=True)
    return order[: min(n_dims, kl_per_dim.numel())].tolist()


def latent_traversal(
    model: nn.Module,
    x: Tensor,
    y: Labels,
    kl_per_dim: Tensor,
    n_dims: int = 10,
    steps: int = 11,
    span: float = 3.0,
) -> Tensor:
    """One image's posterior mean with one dimension at a time swept over mu_d + linspace(-span, span), decoded.

    The sweep is in units of the prior's standard deviation (σ = 1). Rows are
    the `n_dims` highest-KL dimensions in `top_kl_dims(kl_per_dim, n_dims)`
    order, so a caller labels row r with that list's r-th entry; `steps`
    columns (steps=1: the mean itself). A CVAE decodes with the image's own
    label y. Of a batch x, the first image is used.
    """
    if kl_per_dim.numel() != model.latent_dim:
        raise ValueError(f"kl_per_dim has {kl_per_dim.numel()} entries but the model has latent_dim={model.latent_dim}")
    if n_dims < 1 or steps < 1:
        raise ValueError(f"latent_traversal needs n_dims >= 1 and steps >= 1, got n_dims={n_dims}, steps={steps}")
    x = _images(x, "latent_traversal")[:1]
    dims = top_kl_dims(kl_per_dim, n_dims)
    with evaluating(model) as device:
        x = x.to(device)
        y1 = _labels(y, 1, device)
        if y1 is not None:
            y1 = y1[:1]
        mu, _ = model.encode(x, y1)  # (1, D)
        # linspace(-span, span, 1) is [-span]; a one-column traversal shows the mean instead.
        offsets = torch.linspace(-span, span, steps, device=device) if steps > 1 else torch.zeros(1, device=device)
        z = mu.repeat(len(dims) * steps, 1)  # (R * S, D), row r sweeps dims[r]
        for r, d in enumerate(dims):
            z[r * steps : (r + 1) * steps, d] += offsets
        images = model.sample(z, _labels(y1, z.shape[0], device))
    return _grid(images, steps)


def interpolation(model: nn.Module, x_a: Tensor, y_a: Labels, x_b: Tensor, y_b: Labels, steps: int = 10) -> Tensor:
    """The line between the posterior means of x_a[i] and x_b[i], decoded: one row per pair, endpoints included.

    A CVAE decodes the whole row with the start image's label y_a, so the row
    shows the latent (style) changing under a fixed class. steps=1 shows x_a's mean.
    """
    x_a, x_b = _images(x_a, "interpolation (x_a)"), _images(x_b, "interpolation (x_b)")
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f"interpolation needs as many x_b as x_a images, got {x_b.shape[0]} and {x_a.shape[0]}")
    if steps < 1:
        raise ValueError(f"interpolation needs steps >= 1, got {steps}")
    with evaluating(model) as device:
        x_a, x_b = x_a.to(device), x_b.to(device)
        n_pairs = x_a.shape[0]
        y_a, y_b = _labels(y_a, n_pairs, device), _labels(y_b, n_pairs, device)
        mu_a, _ = model.encode(x_a, y_a)  # (P, D)
        mu_b, _ = model.encode(x_b, y_b)
        t = torch.linspace(0.0, 1.0, steps, device=device).view(1, steps, 1)
        # (1 - t) a + t b rather than lerp: t=0 and t=1 give the means exactly.
        z = ((1 - t) * mu_a[:, None] + t * mu_b[:, None]).reshape(n_pairs * steps, -1)  # (P * S, D)
        y = y_a.repeat_interleave(steps) if y_a is not None else None
        images = model.sample(z, y)
    return _grid(images, steps)


def manifold_grid(model: nn.Module, n: int = 20, span: float = 2.0, y: Labels = None) -> Tensor:
    """The n x n grid over [-span, span]^2 decoded into one gapless image (Kingma & Welling 2013, Fig. 4).

    Only for latent_dim 2; z1 grows left to right and z2 bottom to top, so it reads like a plot. A CVAE
    decodes every tile with the class y.
    """
    if model.latent_dim != 2:
        raise ValueError(f"manifold_grid needs a model with latent_dim=2, got latent_dim={model.latent_dim}")
    if model.num_classes and y is None:
        raise ValueError("manifold_grid needs a class label y for a CVAE (num_classes > 0)")
    if n < 1:
        raise ValueError(f"manifold_grid needs n >= 1 tiles a side, got n={n}")
    with evaluating(model) as device:
        z1 = torch.linspace(-span, span, n, device=device)
        z2 = torch.linspace(span, -span, n, device=device)  # top row is z2 = +span, as on a plot
        rows, cols = torch.meshgrid(z2, z1, indexing="ij")
        z = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)  # (n * n, 2), row-major
        images = finite_pixels(model.sample(z, _labels(y, n * n, device)).cpu())  # (n * n, C, H, W)
    _, c, h, w = images.shape
    # (n, n, C, H, W) -> (C, n, H, n, W) -> (C, n * H, n * W): tiles edge to edge, no gutters.
    return images.view(n, n, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, n * h, n * w)


def _project_2d(mu: Tensor) -> Tensor:
    """(N, D) -> (N, 2): the means themselves for D <= 2 (zero-padded), else their first two principal components."""
    if mu.shape[1] <= 2:
        return torch.nn.functional.pad(mu, (0, 2 - mu.shape[1]))
    if mu.shape[0] == 0:
        return mu.new_zeros(0, 2)
    centred = mu - mu.mean(dim=0)
    # Full SVD rather than pca_lowrank: deterministic, and D is small.
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, D), D)
    # N = 1 gives one component, not two: pad the missing coordinate with 0 (one point sits at the origin anyway).
    pts = centred @ vh[:2].T
    return torch.nn.functional.pad(pts, (0, 2 - pts.shape[1]))


def latent_scatter(mu: Tensor, labels: Optional[Tensor] = None, size: int = 512, num_classes: int = 10) -> Tensor:
    """A (3, size, size) scatter plot of test-set posterior means, coloured by label.

    latent_dim 2 plots the means themselves; a larger latent_dim plots their
    first two principal components (SVD of the centred means). Colours are
    tab10, cycled past 10 classes; labels None draws every point in blue.
    White background, light grey axes through 0, a 3x3 px dot per point; the
    plotted range is symmetric about 0, the largest |coordinate| plus 10 %.
    Points are drawn in order, so later points cover earlier ones. A mean
    holding NaN or Inf is left out (before the projection, which it would
    poison); when none is left the plot is its axes alone.
    """
    mu = mu.detach().float().cpu()
    if mu.dim() != 2 or mu.shape[0] == 0:
        raise ValueError(f"latent_scatter needs (N, D) means with N >= 1, got shape {tuple(mu.shape)}")
    keep = torch.isfinite(mu).all(dim=1)  # (N,)
    pts = _project_2d(mu[keep])  # (N', 2)
    # Finite means can still project past float32's range (|mu| near 3e38): drop those too.
    keep_pts = torch.isfinite(pts).all(dim=1)
    pts = pts[keep_pts].double()  # double: reach (1.1 x the largest coordinate) must not overflow
    reach = pts.abs().max().item() * 1.1 if pts.numel() else 0.0
    reach = reach if 0 < reach < float("inf") else 1.0

    def to_pixel(v: Tensor) -> Tensor:
        return ((v + reach) / (2 * reach) * (size - 1)).round().long().clamp(0, size - 1)

    image = torch.ones(3, size, size)
    origin = to_pixel(torch.zeros(()))
    image[:, (size - 1) - origin, :] = AXIS_GREY  # flipped like the points' rows, so z2 = 0 lies on this axis
    image[:, :, origin] = AXIS_GREY

    palette = torch.tensor(TAB10, dtype=torch.float32) / 255.0  # (10, 3)
    if labels is None:
        colours = palette[0].expand(pts.shape[0], 3)
    else:
        labels = labels.detach().cpu().long().reshape(-1)
        if labels.numel() != mu.shape[0]:
            raise ValueError(f"latent_scatter got {labels.numel()} labels for {mu.shape[0]} means")
        if not 0 <= labels.min().item() <= labels.max().item() < num_classes:
            raise ValueError(f"latent_scatter got labels outside [0, {num_classes}); pass num_classes")
        colours = palette[labels[keep][keep_pts] % len(TAB10)]  # (N', 3)
    cols = to_pixel(pts[:, 0])
    rows = (size - 1) - to_pixel(pts[:, 1])  # image rows grow downwards, z2 grows upwards
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r = (rows + dr).clamp(0, size - 1)
            c = (cols + dc).clamp(0, size - 1)
            image[:, r, c] = colours.T
    return image


def denoising_grid(noisy: Tensor, recon: Tensor, clean: Tensor, n: int = 8) -> Tensor:
    """Three rows: noisy inputs, their reconstructions, and the clean targets."""
    n = min(n, noisy.shape[0], recon.shape[0], clean.shape[0])
    if n < 1:
        raise ValueError(f"denoising_grid needs at least 1 image in each of noisy, recon, clean, got {noisy.shape[0]}, {recon.shape[0]}, {clean.shape[0]}")
    return _grid(torch.cat([noisy[:n].float().cpu(), recon[:n].float().cpu(), clean[:n].float().cpu()]), n)
