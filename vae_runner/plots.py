"""The rate–distortion plot of a sweep: what to draw (`plot_data`, pure) and drawing it (`draw`, matplotlib).

`plot_data` takes the rows `vae-compare` prints, so every point is a number the
table shows: the mean over seeds, with the sample standard deviation as its
error bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vae_runner.atomic import atomic_write
from vae_runner.compare import Row, Stat, Value, format_value
from vae_runner.errors import UserError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Rate (KL) and distortion (reconstruction) from the test split when every configuration has them, else validation.
_SPLITS = ("test", "val")


@dataclass(frozen=True)
class Point:
    """One configuration in the rate–distortion plane; an error is None for a single seed."""

    x: float
    y: float
    xerr: float | None
    yerr: float | None
    label: str


@dataclass(frozen=True)
class Series:
    """One metric's mean (and std, None for a single seed) at each value of the swept key, in key order."""

    metric: str
    x: list[float]
    y: list[float]
    yerr: list[float | None]


@dataclass(frozen=True)
class PlotData:
    """Everything the figure shows: the rate–distortion points and, for a one-key sweep, a series per metric."""

    x_metric: str
    y_metric: str
    points: list[Point]
    key: str | None
    log_x: bool
    series: list[Series]


def rate_distortion_metrics(rows: Sequence[Row]) -> tuple[str, str]:
    """(kl, recon) metric names: test/ when every configuration has both, else val/; failing that, the first split any has."""
    for need_all in (True, False):
        for split in _SPLITS:
            pair = (f"{split}/kl", f"{split}/recon")
            have = [all(m in row.stats for m in pair) for row in rows]
            if have and (all(have) if need_all else any(have)):
                return pair
    raise UserError("--plot needs test/kl and test/recon (or val/kl and val/recon), which no run under this folder recorded; drop --plot.")


def config_label(config: dict[str, Value]) -> str:
    """What varied, as overrides: `model.beta=4` or `model.beta=4, model.latent_dim=8`."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in config.items())


def swept_numeric_key(rows: Sequence[Row]) -> str | None:
    """The varied key when exactly one varies and all its values are numbers; else None."""
    keys = list(rows[0].config) if rows else []
    if len(keys) != 1:
        return None
    values = [row.config[keys[0]] for row in rows]
    return keys[0] if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else None


def _std(stat: Stat) -> float | None:
    """The error bar: the sample std, None for one seed (or when it is not finite)."""
    return stat.std if stat.std is not None and math.isfinite(stat.std) else None


def _key_value(row: Row, key: str) -> float:
    """The swept key's value in this row, a number (swept_numeric_key checked)."""
    value = row.config[key]
    assert isinstance(value, (int, float))
    return float(value)


def metric_series(rows: Sequence[Row], key: str, metric: str) -> Series:
    """`metric` against `key`, sorted by the key's value; configurations without the metric are left out."""
    ordered = sorted((row for row in rows if metric in row.stats), key=lambda row: _key_value(row, key))
    stats = [row.stats[metric] for row in ordered]
    return Series(metric, [_key_value(row, key) for row in ordered], [s.mean for s in stats], [_std(s) for s in stats])


def wants_log_x(values: Sequence[float]) -> bool:
    """A log axis when every value is positive and they span at least a factor of 10."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def plot_data(rows: Sequence[Row], metrics: Sequence[str]) -> PlotData:
    """The points, and for a one-key sweep each of the table's `metrics` against that key, from the table's rows."""
    x_metric, y_metric = rate_distortion_metrics(rows)
    points = [
        Point(row.stats[x_metric].mean, row.stats[y_metric].mean, _std(row.stats[x_metric]), _std(row.stats[y_metric]), config_label(row.config))
        for row in rows
        if x_metric in row.stats and y_metric in row.stats
    ]
    key = swept_numeric_key(rows)
    if key is None:
        return PlotData(x_metric, y_metric, points, None, False, [])
    series = [metric_series(rows, key, m) for m in metrics if any(m in row.stats for row in rows)]
    return PlotData(x_metric, y_metric, points, key, wants_log_x([_key_value(row, key) for row in rows]), series)


# ---------------------------------------------------------------- drawing


def draw(data: PlotData, path: Path, title: str = "") -> None:
    """Write the figure as a PNG, atomically: the rate–distortion plane, then one panel per metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: vae-compare without --plot stays fast
    from matplotlib.figure import Figure

    panels = 1 + len(data.series)
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(4.8 * ncols, 4.2 * nrows), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)  # before drawing: the labels are placed by their measured size
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    _draw_rate_distortion(axes[0], data)
    for ax, series in zip(axes[1:], data.series):
        _draw_series(ax, series, data.key or "", data.log_x)
    for ax in axes[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_write(path, canvas.print_png)


def _draw_rate_distortion(ax: Axes, data: PlotData) -> None:
    """Each configuration at (KL, reconstruction), with its std over seeds as error bars, labelled."""
    right = max(p.x for p in data.points)
    labels = []
    for point in data.points:
        ax.errorbar(point.x, point.y, xerr=point.xerr, yerr=point.yerr, fmt="o", color="C0", ecolor="C0", capsize=3)
        left_of = point.x == right and len(data.points) > 1  # the right-most label reads leftwards, inside the axes
        labels.append(ax.annotate(point.label, (point.x, point.y), textcoords="offset points", xytext=(-5 if left_of else 5, 5),
                                  ha="right" if left_of else "left", fontsize=8))
    ax.margins(0.15)  # room for the labels beside the outermost points
    _keep_apart(ax, labels)
    ax.set_xlabel(f"rate: {data.x_metric} (nats)")
    ax.set_ylabel(f"distortion: {data.y_metric} (nats)")
    ax.set_title("rate–distortion (mean ± std over seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)


def _keep_apart(ax: Axes, labels: list) -> None:
    """Move a label that would overlap an earlier one below its point, then further down or up, until it stands clear."""
    ax.figure.canvas.draw()  # settle the limits and the layout, so the boxes are where they will be drawn
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for label in labels:
        dx = label.xyann[0]
        for dy in (5, -13, 16, -24, 27, -35):
            label.xyann = (dx, dy)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(label.get_window_extent(renderer))


def _draw_series(ax: Axes, series: Series, key: str, log_x: bool) -> None:
    """One metric against the swept key: means joined by a line, std over seeds as error bars."""
    ax.plot(series.x, series.y, "o-", color="C1")
    with_err = [(x, y, e) for x, y, e in zip(series.x, series.y, series.yerr) if e is not None]
    if with_err:
        xs, ys, es = zip(*with_err)
        ax.errorbar(xs, ys, yerr=es, fmt="none", ecolor="C1", capsize=3)
    if log_x:
        # Ticks at the swept values, written plainly: log axes otherwise label 2, 3, 4 as overlapping "2×10⁰".
        ax.set_xscale("log")
        ax.set_xticks(series.x, labels=[f"{x:g}" for x in series.x])
        ax.minorticks_off()
    ax.set_xlabel(key)
    ax.set_title(series.metric, fontsize=10)
    ax.grid(True, alpha=0.3)
