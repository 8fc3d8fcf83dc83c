"""Pictures of what a trained VAE learned: traversals, interpolations, the 2-D manifold, latent scatter plots.

Two kinds. Image grids (`latent_traversal`, `interpolation`, `manifold_grid`,
`denoising_grid`) are (C, H, W) float images in [0, 1] on the CPU, tiled with
torch. Figures (`*_figure`) add what a person needs to read
them (class names, latent dimensions and their KL, axes with values): a
`matplotlib.figure.Figure` built with matplotlib's object API (never pyplot's
global state), the grid placed in it pixel for pixel; `render` turns one into a
(3, H, W) image for `Tracker.image`. matplotlib is imported inside the
functions that draw: a run that makes no pictures never pays for its import.

One image (or pair, or point) is enough for each; none is a ValueError. A
model gone non-finite still gives a picture: NaN pixels are drawn black, and
NaN or Inf means are left out of the scatter plot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from vae_runner.model import evaluating
from vae_runner.tracking import finite_pixels, image_bytes, image_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Labels = Optional[Union[int, Tensor]]

DPI = 100  # figure sizes below are in pixels; at 100 dpi a 9 pt font is 12.5 px high
FONT = 9.0  # points
GUTTER = 2  # image_grid's white gap between tiles, px
MINUS = "\N{MINUS SIGN}"
LONGEST_NAME = 24  # characters of a class name shown; longer ones are cut with an ellipsis
LEGEND_CLASSES = 20  # a scatter plot of more classes has no legend (it would not fit the card)


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
    """One image's latent code (`model.code`: the posterior mean) with one dimension at a time swept over z_d + linspace(-span, span), decoded.

    The sweep is in units of the prior's standard deviation (σ = 1). Rows are
    the `n_dims` highest-KL dimensions in `top_kl_dims(kl_per_dim, n_dims)`
    order (`traversal_figure` labels them); `steps` columns (steps=1: the mean
    itself). A CVAE decodes with the image's own label y. Of a batch x, the
    first image is used.
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
        mu = model.code(x, y1)  # (1, D)
        offsets = traversal_offsets(steps, span).to(device)
        z = mu.repeat(len(dims) * steps, 1)  # (R * S, D), row r sweeps dims[r]
        for r, d in enumerate(dims):
            z[r * steps : (r + 1) * steps, d] += offsets
        images = model.sample(z, _labels(y1, z.shape[0], device))
    return _grid(images, steps)


def traversal_offsets(steps: int, span: float) -> Tensor:
    """The traversal's columns: linspace(-span, span, steps) in prior σ; one step is the mean itself (offset 0)."""
    # linspace(-span, span, 1) is [-span]; a one-column traversal shows the mean instead.
    return torch.linspace(-span, span, steps) if steps > 1 else torch.zeros(1)


def traversal_figure(
    model: nn.Module, x: Tensor, y: Labels, kl_per_dim: Tensor, n_dims: int = 10, steps: int = 11, span: float = 3.0, score: str = "KL",
    notes: Sequence[str] = (),
) -> Figure:
    """`latent_traversal` with each row named by its dimension and that dimension's KL ("z7  KL 3.21"), its columns by their offset in σ.

    Without per-dimension KLs (a flow, a mixture prior) the rows are ranked by
    another `score` of each dimension, named so (the posterior means' variance: "z7  var 0.93").
    `notes`, one per latent dimension, end each row's name (on dsprites, the factor the dimension captures and its share of that factor's entropy: "z7  KL 3.21  posX 0.82").

    Every column has a tick; the whole-number offsets (−3, 0, 3 for the
    default 11 steps) are written, and the step between columns goes in the
    label above them: "−2.4−1.8−1.2" side by side over 28 px tiles cannot be read.
    """
    grid = latent_traversal(model, x, y, kl_per_dim, n_dims, steps, span)
    kl = kl_per_dim.detach().float().cpu()
    rows = [f"z{d}  {score} {kl[d].item():.2f}" + (f"  {notes[d]}" if notes else "") for d in top_kl_dims(kl, n_dims)]
    offsets = [round(v, 6) + 0.0 for v in traversal_offsets(steps, span).tolist()]  # linspace's -1.2e-07 is 0; + 0.0 drops -0.0
    columns = [_number(v) if v == round(v) else "" for v in offsets]
    title = "σ from the mean" + (f", steps of {_number(offsets[1] - offsets[0])}" if steps > 1 else "")
    return labelled_grid(grid, _images(x, "traversal_figure").shape[-2:], rows, columns, title)


def _number(v: float) -> str:
    """A value as people write it: −3, 0.6, 3 (a true minus sign, two significant digits, no trailing zeros)."""
    return f"{round(v, 6) + 0.0:.2g}".replace("-", MINUS)


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
        mu_a = model.code(x_a, y_a)  # (P, D)
        mu_b = model.code(x_b, y_b)
        t = torch.linspace(0.0, 1.0, steps, device=device).view(1, steps, 1)
        # (1 - t) a + t b rather than lerp: t=0 and t=1 give the means exactly.
        z = ((1 - t) * mu_a[:, None] + t * mu_b[:, None]).reshape(n_pairs * steps, -1)  # (P * S, D)
        y = y_a.repeat_interleave(steps) if y_a is not None else None
        images = model.sample(z, y)
    return _grid(images, steps)


def manifold_grid(model: nn.Module, n: int = 20, span: float = 2.0, y: Labels = None) -> Tensor:
    """The n x n grid over [-span, span]^2 decoded into one gapless image (Kingma & Welling 2013, Fig. 4).

    Only for latent_dim 2; z0 grows left to right and z1 bottom to top, so it reads like a plot. A CVAE
    decodes every tile with the class y.
    """
    if model.latent_dim != 2:
        raise ValueError(f"manifold_grid needs a model with latent_dim=2, got latent_dim={model.latent_dim}")
    if model.num_classes and y is None:
        raise ValueError("manifold_grid needs a class label y for a CVAE (num_classes > 0)")
    if n < 1:
        raise ValueError(f"manifold_grid needs n >= 1 tiles a side, got n={n}")
    with evaluating(model) as device:
        z0, z1 = _manifold_axis(n, span).to(device), _manifold_axis(n, span).flip(0).to(device)  # top row is z1 = +span
        rows, cols = torch.meshgrid(z1, z0, indexing="ij")
        z = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)  # (n * n, 2), row-major
        images = finite_pixels(model.sample(z, _labels(y, n * n, device)).cpu())  # (n * n, C, H, W)
    _, c, h, w = images.shape
    # (n, n, C, H, W) -> (C, n, H, n, W) -> (C, n * H, n * W): tiles edge to edge, no gutters.
    return images.view(n, n, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, n * h, n * w)


def _manifold_axis(n: int, span: float) -> Tensor:
    """The z values of the manifold's tile centres along one axis, ascending: linspace(-span, span, n) (n=1: 0)."""
    return torch.linspace(-span, span, n) if n > 1 else torch.zeros(1)


def manifold_figure(model: nn.Module, n: int = 20, span: float = 2.0, y: Labels = None) -> Figure:
    """`manifold_grid` on axes that give the z values: z0 across, z1 up, each tile centred on its z."""
    image = manifold_grid(model, n, span, y)
    centres = _manifold_axis(n, span)
    half = (centres[1] - centres[0]).item() / 2 if n > 1 else 0.5  # half a tile, in z
    limits = (centres[0].item() - half, centres[-1].item() + half)
    fig, ax = _framed(image, left=66, bottom=46, top=10, right=16)  # room for "−2.0" and the axis names
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("z0", fontsize=FONT + 1)
    ax.set_ylabel("z1", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT, direction="out")
    return fig


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


def _axis_names(mu: Tensor, pts: Tensor) -> tuple[str, str]:
    """z0 and z1 for 2-D means (z0 alone for 1-D); PC1 and PC2 with their share of the variance otherwise."""
    d = mu.shape[1]
    if d <= 2:
        return "z0", "z1" if d == 2 else "(latent_dim=1: no z1)"
    total = mu.var(dim=0).sum().item() if mu.shape[0] > 1 else 0.0
    shares = (pts.var(dim=0) / total).tolist() if total > 0 else [math.nan, math.nan]
    first, second = (f"PC{k} ({share:.0%} of the variance)" if math.isfinite(share) else f"PC{k}" for k, share in zip((1, 2), shares))
    return first, second


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 4) RGBA colours, one per class: tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo beyond."""
    from matplotlib import colormaps

    if num_classes <= 10:
        return colormaps["tab10"](np.arange(max(num_classes, 1)))
    if num_classes <= 20:
        return colormaps["tab20"](np.arange(num_classes))
    return colormaps["turbo"](np.linspace(0.0, 1.0, num_classes))


def class_name(names: Sequence[str], k: int) -> str:
    """The dataset's name for class k ("3 - three", "Sneaker"), cut to LONGEST_NAME characters; "class k" when unnamed."""
    name = str(names[k]) if 0 <= k < len(names) else f"class {k}"
    return name if len(name) <= LONGEST_NAME else name[: LONGEST_NAME - 1] + "…"


def scatter_figure(mu: Tensor, labels: Optional[Tensor] = None, class_names: Sequence[str] = (), images: str = "images") -> Figure:
    """A scatter plot of posterior means, one colour per class and a legend naming the classes.

    latent_dim 2 plots the means themselves on z0 and z1; a larger latent_dim
    plots their first two principal components (SVD of the centred means),
    each axis giving its share of the variance. Classes are drawn in label
    order, class k in `class_colours` colour k; labels None draws every point
    in one colour, without a legend. A mean holding NaN or Inf is left out
    (before the projection, which it would poison) and counted in the title.
    """
    from matplotlib.figure import Figure

    mu = mu.detach().float().cpu()
    if mu.dim() != 2 or mu.shape[0] == 0:
        raise ValueError(f"scatter_figure needs (N, D) means with N >= 1, got shape {tuple(mu.shape)}")
    if labels is not None:
        labels = labels.detach().cpu().long().reshape(-1)
        if labels.numel() != mu.shape[0]:
            raise ValueError(f"scatter_figure got {labels.numel()} labels for {mu.shape[0]} means")
        if labels.min().item() < 0:
            raise ValueError(f"scatter_figure got a negative label ({labels.min().item()}); labels are class indices")
    keep = torch.isfinite(mu).all(dim=1)  # (N,)
    pts = _project_2d(mu[keep])  # (N', 2)
    # Finite means can still project past float32's range (|mu| near 3e38): drop those too.
    keep_pts = torch.isfinite(pts).all(dim=1)
    pts = pts[keep_pts].double()
    kept = keep.nonzero().squeeze(1)[keep_pts]  # indices into mu of the plotted points

    fig = Figure(figsize=(5.2, 4.2), dpi=DPI, facecolor="white", layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0.0, color="0.85", linewidth=0.8, zorder=0)
    if labels is None:
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=5, color=class_colours(1)[0], alpha=0.6, linewidths=0)
    else:
        classes = labels[kept]
        num_classes = max(len(class_names), int(labels.max().item()) + 1)
        colours = class_colours(num_classes)
        for k in classes.unique().tolist():
            at = classes == k
            ax.scatter(pts[at, 0].numpy(), pts[at, 1].numpy(), s=5, color=colours[k], alpha=0.6, linewidths=0, label=class_name(class_names, k))
        if 0 < len(classes.unique()) <= LEGEND_CLASSES:
            # Beside the plot, top-aligned with it: constrained layout makes room for an axes' outside legend.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=FONT, markerscale=2.5, frameon=False, handletextpad=0.2, borderaxespad=0.0)
    x_name, y_name = _axis_names(mu[keep][keep_pts].double(), pts)
    ax.set_xlabel(x_name, fontsize=FONT + 1)
    ax.set_ylabel(y_name, fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.set_aspect("equal", adjustable="datalim")  # one unit is as long across as up: distances read true
    left_out = mu.shape[0] - pts.shape[0]
    noun = images if pts.shape[0] != 1 else images.removesuffix("s")
    title = f"posterior means of {pts.shape[0]:,} {noun}" + (f" ({left_out:,} non-finite left out)" if left_out else "")
    ax.set_title(title, fontsize=FONT + 1, loc="left")
    return fig


def denoising_grid(noisy: Tensor, recon: Tensor, clean: Tensor, n: int = 8) -> Tensor:
    """Three rows: noisy inputs, their reconstructions, and the clean targets."""
    n = min(n, noisy.shape[0], recon.shape[0], clean.shape[0])
    if n < 1:
        raise ValueError(f"denoising_grid needs at least 1 image in each of noisy, recon, clean, got {noisy.shape[0]}, {recon.shape[0]}, {clean.shape[0]}")
    return _grid(torch.cat([noisy[:n].float().cpu(), recon[:n].float().cpu(), clean[:n].float().cpu()]), n)


DENOISING_ROWS = ("noisy", "reconstructed", "clean")


def denoising_figure(noisy: Tensor, recon: Tensor, clean: Tensor, n: int = 8) -> Figure:
    """`denoising_grid` with its rows named: noisy, reconstructed, clean."""
    return labelled_grid(denoising_grid(noisy, recon, clean, n), noisy.shape[-2:], DENOISING_ROWS)


def class_samples_figure(grid: Tensor, tile: Sequence[int], class_names: Sequence[str], num_classes: int) -> Figure:
    """A CVAE's sample grid (row k drawn with class k) with each row named by its class ("3 - three", "Sneaker")."""
    return labelled_grid(grid, tile, [class_name(class_names, k) for k in range(num_classes)])


def anomaly_figure(normal: Tensor, held_out: Tensor, auroc: float, held_out_classes: Sequence[int] = ()) -> Figure:
    """Histograms of the anomaly score (−ELBO, nats) of the normal and the held-out test images on shared bins, the AUROC in the title."""
    from matplotlib.figure import Figure

    classes = ", ".join(str(k) for k in held_out_classes)
    which = f": class{'es' if len(held_out_classes) > 1 else ''} {classes}" if classes else ""
    groups = {"normal": normal, f"held out{which}": held_out}
    finite = {name: s.detach().double().cpu()[torch.isfinite(s.detach().cpu())].numpy() for name, s in groups.items()}
    both = np.concatenate(list(finite.values()))
    fig = Figure(figsize=(5.2, 3.2), dpi=DPI, facecolor="white", layout="constrained")
    ax = fig.add_subplot()
    if both.size:
        bins = np.histogram_bin_edges(both, bins=50)
        for (name, scores), colour in zip(finite.items(), class_colours(2)):
            ax.hist(scores, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} ({scores.size:,} images)")
        # Above the plot, side by side: inside it would cover the bars of one group or the other.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=FONT, frameon=False, borderaxespad=0.2)
    ax.set_xlabel("anomaly score: −ELBO (nats); higher is more anomalous", fontsize=FONT + 1)
    ax.set_ylabel("density", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    fig.suptitle(f"anomaly scores of the test images, AUROC {auroc:.3f}", fontsize=FONT + 1)
    return fig


# ------------------------------------------------------------------ drawing


def labelled_grid(grid: Tensor, tile: Sequence[int], rows: Sequence[str] = (), columns: Sequence[str] = (), columns_title: str = "") -> Figure:
    """An image grid pixel for pixel, with `rows` labels left of its rows and `columns` labels above its columns.

    `tile` is (height, width) of one image; the grid is `image_grid`'s layout
    (2 px gutters), so label i sits at the centre of row or column i.
    """
    th, tw = int(tile[0]), int(tile[1])
    left = math.ceil(text_width(rows)) + 12 if rows else 4
    line = math.ceil(FONT * DPI / 72) + 6  # one line of text, px
    top = (line + 4 if columns else 4) + (line if columns_title else 0)
    fig, ax = _framed(grid, left=left, bottom=4, top=top, right=4 + (math.ceil(text_width(columns[-1:]) / 2) if columns else 0))
    height, width = grid.shape[-2:]
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_yticks([GUTTER + i * (th + GUTTER) + th / 2 for i in range(len(rows))], list(rows))
    ax.set_xticks([GUTTER + j * (tw + GUTTER) + tw / 2 for j in range(len(columns))], list(columns))
    ax.xaxis.tick_top()
    if columns_title:
        ax.xaxis.set_label_position("top")
        ax.set_xlabel(columns_title, fontsize=FONT, labelpad=4)
    ax.tick_params(axis="y", length=0, pad=5, labelsize=FONT)
    ax.tick_params(axis="x", length=3, pad=2, labelsize=FONT, color="0.5")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def _framed(image: Tensor, *, left: int, bottom: int, top: int, right: int) -> tuple[Figure, Axes]:
    """A figure holding `image` pixel for pixel (not resampled) with margins in px, and see-through axes over it for ticks and labels."""
    from matplotlib.figure import Figure

    pixels = image_bytes(image)  # (H, W, 3) uint8, rounded as Tracker.image rounds
    h, w = pixels.shape[:2]
    fig_w, fig_h = left + w + right, bottom + h + top
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    fig.figimage(pixels, xo=left, yo=bottom, origin="upper")
    ax = fig.add_axes((left / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
    ax.patch.set_visible(False)  # the image below shows through
    return fig, ax


def text_width(texts: Sequence[str], size: float = FONT) -> float:
    """The width in px of the widest of `texts` at `size` points (0 for none), as Agg draws it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer, prop = RendererAgg(1, 1, DPI), FontProperties(size=size)
    return max((renderer.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts), default=0.0)


def render(fig: Figure) -> Tensor:
    """The figure drawn by Agg: (3, H, W) float in [0, 1] on the CPU, for `Tracker.image`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4) uint8
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0
