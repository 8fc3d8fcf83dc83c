"""`vae-compare`: one table of a finished sweep, mean ± std over seeds for each configuration.

Reads only each run directory's `metrics.json` and `.hydra/overrides.yaml`, so it
works on any finished sweep, including one copied from a cluster without its
checkpoints or TensorBoard files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

import yaml

from vae_runner.atomic import OutputError, atomic_write
from vae_runner.errors import UserError
from vae_runner.progress import plus_minus, safe_streams

if TYPE_CHECKING:  # rich is imported when a table is printed
    from rich.console import Console
    from rich.table import Table

    from vae_runner.plots import PlotData

log = logging.getLogger(__name__)

Value = Union[str, int, float, None]

# The final metrics every run records, shown first and in this order.
HEADLINE_METRICS = ("val/loss", "val/recon", "val/kl")
# The table's columns without --metrics, those recorded: few enough that 5 metrics fit a 120-column terminal.
# On a dataset with known factors test/mig joins them, beside the reconstruction it trades against.
DEFAULT_METRICS = ("val/loss", "test/nll", "test/nll_given_label", "val/recon", "val/kl", "val/active_units", "test/mig")
DEFAULT_SORT = "val/loss"

# Keys that say which repetition a run is, or where things are, rather than what was tried.
_IGNORED_KEYS = frozenset({"seed", "dataset.root", "dataset.path", "device", "resume"})
_IGNORED_PREFIXES = ("hydra.", "hydra/")

# Metrics that count things: shown without decimals.
COUNT_SUFFIXES = ("steps", "epochs", "images_per_s", "params", "units", "_images", "_votes", "_samples")


@dataclass(frozen=True)
class Run:
    """One run directory: its overrides and final metrics (None while unfinished)."""

    path: Path
    overrides: dict[str, Value]
    metrics: dict[str, float] | None

    @property
    def finished(self) -> bool:
        """Whether the run wrote its metrics.json."""
        return self.metrics is not None

    @property
    def config(self) -> dict[str, Value]:
        """The overrides that say what was tried: no seed, no paths, no Hydra settings."""
        return {k: v for k, v in self.overrides.items() if not is_ignored_key(k)}


@dataclass
class Group:
    """The runs of one configuration, i.e. the same overrides with different seeds."""

    config: dict[str, Value]
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for a single value) of one metric over seeds."""

    mean: float
    std: float | None
    n: int


@dataclass
class Row:
    """One configuration in the comparison: its varied keys, seed count and metric statistics."""

    config: dict[str, Value]
    n: int
    stats: dict[str, Stat]
    runs: list[Path]


def is_ignored_key(key: str) -> bool:
    """Whether an override key is left out when grouping (seed, data paths, device, resume, hydra.*)."""
    return key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES)


def parse_value(text: str) -> Value:
    """An override's value as int, float or string, so `1e-3` and `0.001` name the same configuration."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_overrides(lines: Iterable[str]) -> dict[str, Value]:
    """`["model.beta=4", "+seed=1"]` -> `{"model.beta": 4, "seed": 1}` (`+`/`++` prefixes dropped)."""
    overrides: dict[str, Value] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.strip()
        if not key.startswith("~"):
            key = key.lstrip("+")
        # `~key` deletes a default: keep it as its own key so it still tells configurations apart.
        overrides[key] = parse_value(value) if sep else None
    return overrides


def _read_run(run_dir: Path) -> Run | None:
    """Read one run directory; None (with a warning) when a file is corrupt."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    try:
        lines = yaml.safe_load(overrides_file.read_text()) or []
        if not isinstance(lines, list):
            raise ValueError("not a list")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
        log.warning("skipping %s: %s is not a YAML list of overrides (%s)", run_dir, overrides_file, err)
        return None
    overrides = parse_overrides(lines)

    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        return Run(run_dir, overrides, None)
    try:
        raw = json.loads(metrics_file.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("skipping %s: %s is corrupt (%s); rerun it or delete the file", run_dir, metrics_file, err)
        return None
    # bool is an int in Python, but a flag is not a metric to average.
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Run(run_dir, overrides, metrics)


def find_runs(root: Path | str) -> list[Run]:
    """Every run directory under `root` (a folder holding `.hydra/overrides.yaml`), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"{root} {what}; pass the sweep directory `vae-run -m` wrote, e.g. outputs/sweeps/<time>.")
    run_dirs = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if (Path(dirpath) / ".hydra" / "overrides.yaml").is_file():
            run_dirs.append(Path(dirpath))
    if not run_dirs:
        raise UserError(
            f"{root} holds no run directories (folders with .hydra/overrides.yaml); "
            "pass a sweep directory such as outputs/sweeps/<time>."
        )
    runs = [run for run in map(_read_run, sorted(run_dirs)) if run is not None]
    log.debug("found %d run directories under %s", len(runs), root)
    return runs


def _natural_key(value: Value) -> tuple:
    """Order numbers numerically before strings; missing values last."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, 0.0, value)


def _config_key(config: dict[str, Value]) -> tuple:
    return tuple(sorted(((k, _natural_key(v)) for k, v in config.items())))


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group finished runs whose overrides are equal once seeds and paths are removed."""
    groups: dict[frozenset, Group] = {}
    for run in runs:
        if not run.finished:
            continue
        config = run.config
        groups.setdefault(frozenset(config.items()), Group(config)).runs.append(run)
    return sorted(groups.values(), key=lambda g: _config_key(g.config))


def varied_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value differs between configurations (absent counts as a value), sorted."""
    keys = sorted({k for g in groups for k in g.config})
    return [k for k in keys if len({_natural_key(g.config.get(k)) for g in groups}) > 1]


def constant_overrides(groups: Sequence[Group]) -> dict[str, Value]:
    """Overrides that every configuration shares: stated once instead of as a column."""
    varied = set(varied_keys(groups))
    return {k: v for k, v in sorted(groups[0].config.items()) if k not in varied} if groups else {}


def metric_names(runs: Sequence[Run]) -> list[str]:
    """The numeric metrics the runs recorded: val/loss, val/recon, val/kl, then the rest in recording order."""
    seen: dict[str, None] = {}
    for run in runs:
        for name in run.metrics or {}:
            seen.setdefault(name, None)
    return [m for m in HEADLINE_METRICS if m in seen] + [m for m in seen if m not in HEADLINE_METRICS]


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


def summarise(groups: Sequence[Group], metrics: Sequence[str] | None = None) -> list[Row]:
    """One row per configuration: its varied keys, seed count, and mean ± std of each metric."""
    if metrics is None:
        metrics = metric_names([run for g in groups for run in g.runs])
    keys = varied_keys(groups)
    rows = []
    for group in groups:
        stats = {}
        for name in metrics:
            values = [run.metrics[name] for run in group.runs if run.metrics and name in run.metrics]
            if values:
                stats[name] = mean_std(values)
        rows.append(Row({k: group.config.get(k) for k in keys}, len(group.runs), stats, [r.path for r in group.runs]))
    return rows


def sort_rows(rows: Sequence[Row], key: str, descending: bool = False) -> list[Row]:
    """Rows ordered by a metric's mean, a varied key or `n`; rows lacking the value go last either way."""
    known = {"n"} | {k for r in rows for k in r.config} | {m for r in rows for m in r.stats}
    if key not in known:
        raise UserError(f"--sort {key} is neither a metric nor a varied key of this sweep; choose one of: {', '.join(sorted(known))}.")

    def value(row: Row) -> tuple:
        if key == "n":
            return _natural_key(row.n)
        if key in row.config:
            return _natural_key(row.config[key])
        stat = row.stats.get(key)
        return _natural_key(None if stat is None or math.isnan(stat.mean) else stat.mean)

    present = [r for r in rows if value(r)[0] != 2]
    missing = [r for r in rows if value(r)[0] == 2]
    return sorted(present, key=value, reverse=descending) + missing


def format_number(name: str, value: float, decimals: int | None = None) -> str:
    """Counts without decimals, nats with three, tiny values with three significant digits."""
    if not math.isfinite(value):
        return str(value)
    if decimals is None:
        if name.endswith(COUNT_SUFFIXES):
            decimals = 0
        elif value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        else:
            decimals = 3
    return f"{value:,.{decimals}f}"


def format_stat(name: str, stat: Stat | None) -> str:
    """`102.000 ± 2.000`, or just the mean for a single seed."""
    if stat is None:
        return "—"
    mean = format_number(name, stat.mean)
    if stat.std is None:
        return mean
    if "e" in mean or not math.isfinite(stat.mean):
        return f"{mean} {plus_minus()} {stat.std:.2g}"
    decimals = len(mean.rpartition(".")[2]) if "." in mean else 0
    return f"{mean} {plus_minus()} {format_number(name, stat.std, decimals)}"


def format_value(value: Value) -> str:
    """An override value as the user wrote it; `—` for the default (key not overridden)."""
    return "—" if value is None else str(value)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def table_records(rows: Sequence[Row], metrics: Sequence[str]) -> list[dict[str, Value]]:
    """Rows as flat records: varied keys, n, `<metric>_mean`, `<metric>_std` (CSV and JSON share these)."""
    records = []
    for row in rows:
        record: dict[str, Value] = dict(row.config)
        record["n"] = row.n
        for name in metrics:
            stat = row.stats.get(name)
            record[f"{name}_mean"] = _finite(stat.mean) if stat else None
            record[f"{name}_std"] = _finite(stat.std) if stat else None
        records.append(record)
    return records


def write_csv(path: Path, rows: Sequence[Row], metrics: Sequence[str]) -> None:
    """One line per configuration: varied keys, n, `<metric>_mean`, `<metric>_std` (empty std for one seed)."""
    records = table_records(rows, metrics)
    header = list(rows[0].config) + ["n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] if rows else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in record.items()})
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def write_json(path: Path, rows: Sequence[Row], metrics: Sequence[str]) -> None:
    """A list of objects: the CSV's columns plus `runs`, the run directories of each configuration."""
    records = table_records(rows, metrics)
    for record, row in zip(records, rows):
        record["runs"] = [str(p) for p in row.runs]  # type: ignore[assignment]
    atomic_write(path, lambda f: f.write((json.dumps(records, indent=2) + "\n").encode()))


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The `vae-compare` argument parser."""
    parser = argparse.ArgumentParser(
        prog="vae-compare",
        description="Compare the runs of a finished sweep: one row per configuration, mean ± std over seeds.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (e.g. outputs/sweeps/<time>) or any folder of run directories")
    parser.add_argument("--sort", metavar="KEY", default=None, help=f"a metric or a varied key to sort by (default: {DEFAULT_SORT})")
    parser.add_argument("--desc", action="store_true", help="sort in descending order")
    parser.add_argument(
        "--metrics", metavar="A,B", default=None,
        help=f"the metrics to show, comma-separated (e.g. val/loss,val/kl), or `all` (default: {', '.join(DEFAULT_METRICS)}, those recorded)",
    )
    parser.add_argument("--csv", metavar="OUT.csv", type=Path, default=None, help="also write the table as CSV (every metric unless --metrics)")
    parser.add_argument("--json", metavar="OUT.json", type=Path, default=None, help="also write the table as JSON, with each configuration's run directories")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, default=None, help="also draw the rate–distortion plot (KL against reconstruction) as PNG")
    return parser


def default_metrics(available: Sequence[str]) -> list[str]:
    """The table's columns without --metrics: DEFAULT_METRICS that were recorded, or every metric when none was."""
    return [m for m in DEFAULT_METRICS if m in available] or list(available)


def _choose_metrics(requested: str | None, available: list[str]) -> list[str]:
    """The metrics named by `--metrics a,b` (`all`: every one; None: the default ones), each checked against those recorded."""
    if requested is None:
        return default_metrics(available)
    if requested.strip() == "all":
        return available
    chosen = [m.strip() for m in requested.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in available]
    if not chosen:
        raise UserError(f"--metrics {requested!r} names no metric; choose from: {', '.join(available)}.")
    if unknown:
        raise UserError(f"--metrics: {', '.join(unknown)} not recorded by the runs under this folder; choose from: {', '.join(available)}.")
    return chosen


def build_table(rows: Sequence[Row], metrics: Sequence[str], groups: Sequence[Group], sort: str | None, descending: bool) -> Table:
    """The comparison as a rich Table: varied keys, n, the metrics; the shared overrides in its caption."""
    from rich.markup import escape
    from rich.table import Table

    n_finished = sum(len(g.runs) for g in groups)
    title = f"vae-compare: {len(rows)} configuration{'s' * (len(rows) != 1)}, {n_finished} finished run{'s' * (n_finished != 1)}"
    if sort:
        title += f", sorted by {sort} ({'descending' if descending else 'ascending'})"
    constant = constant_overrides(groups)
    caption = "constant: " + (", ".join(f"{k}={format_value(v)}" for k, v in constant.items()) or "no other overrides")
    # escape: an override value such as `[a,b]` is text, not rich markup.
    table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
    keys = list(rows[0].config) if rows else []
    for key in keys:
        table.add_column(escape(key), overflow="fold")
    table.add_column("n", justify="right", min_width=1)
    for name in metrics:
        # fold, never "…": in a narrow terminal a cell wraps at " ± " instead of hiding digits.
        table.add_column(escape(name), justify="right", overflow="fold", style="bold" if name == sort else None)
    for row in rows:
        table.add_row(*(escape(format_value(row.config[k])) for k in keys), str(row.n), *(format_stat(m, row.stats.get(m)) for m in metrics))
    return table


def _natural_width(out: Console, table: Table) -> int:
    """The columns the table takes when nothing is squeezed."""
    return out.measure(table, options=out.options.update_width(100_000)).maximum


def _stdout(table: Table) -> Console:
    """A console on stdout; piped or redirected, as wide as the table rather than squeezed into 80 columns."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(80, _natural_width(out, table)), soft_wrap=True)


def _render(table: Table, runs: Sequence[Run], root: Path, hidden: int, out: Console | None = None) -> None:
    """Print the table, how many metrics it leaves out, and the unfinished runs (to stdout unless `out` is given)."""
    out = out or _stdout(table)
    natural = _natural_width(out, table)
    out.print(table)
    if natural > out.width:
        out.print(f"(the table is {natural} columns wide, the terminal {out.width}: --metrics a,b shows fewer metrics)", style="dim", highlight=False)
    if hidden:
        out.print(f"({hidden} more metric{'s' * (hidden != 1)} recorded: --metrics all shows every one)", style="dim", highlight=False)
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        names = ", ".join(str(r.path.relative_to(root)) if r.path != root else str(r.path) for r in unfinished)
        out.print(f"unfinished (no metrics.json, not averaged): {len(unfinished)} run{'s' * (len(unfinished) != 1)}: {names}", markup=False, highlight=False)


# What an output file might be called, for the sentence that refuses a folder.
_EXAMPLE_NAMES = {"--csv": "compare.csv", "--json": "compare.json", "--plot": "compare.png"}


def check_output_path(flag: str, path: Path) -> None:
    """Refuse, before any work, an output file that cannot be written: its folder is missing or read-only, or it is a folder."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file in it, e.g. {flag} {path / _EXAMPLE_NAMES.get(flag, 'compare')}.")
    if path.is_symlink() or (path.exists() and not path.is_file()):  # a rename would replace the link or device itself
        raise UserError(f"{flag} {path} exists and is not a regular file (a link or a device such as /dev/stdout); name a new or regular file.")
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: {path.parent} {what}; create the folder or choose another path.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {path.parent} is not writable; choose another path.")


def _write_output(flag: str, path: Path, write: Callable[[], None]) -> None:
    """Run one atomic write; a failed one is a sentence naming the flag and the path."""
    try:
        write()
    except OutputError as err:
        # atomic_write's own sentence suggests hydra.run.dir, which vae-compare has not; its cause is the OSError.
        reason = getattr(err.__context__, "strerror", None) or "the write failed"
        raise UserError(f"{flag} {path} could not be written ({reason}); choose another path or free some space (a previous file there is intact).") from None


def compare(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, read the sweep, print the table and write the requested files; raises UserError."""
    args = build_parser().parse_args(argv)
    root: Path = args.sweep_dir
    for flag, path in (("--csv", args.csv), ("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output_path(flag, path)
    runs = find_runs(root)
    groups = group_runs(runs)
    if not groups:
        raise UserError(f"{root} holds {len(runs)} run directories but none has a readable metrics.json; wait for the sweep to finish or rerun it.")
    available = metric_names([run for g in groups for run in g.runs])
    metrics = _choose_metrics(args.metrics, available)
    rows = summarise(groups, available)  # every metric, so --sort may use one that --metrics hides

    sort = args.sort
    if sort is None and any(DEFAULT_SORT in r.stats for r in rows):
        sort = DEFAULT_SORT
    if sort is not None:
        rows = sort_rows(rows, sort, args.desc)
    plotted = _plot_data(rows, metrics) if args.plot else None  # before printing: a sweep without KL is refused up front

    hidden = len(available) - len(metrics) if args.metrics is None else 0
    _render(build_table(rows, metrics, groups, sort, args.desc), runs, root, hidden)
    # The files hold every metric unless --metrics names them: the default columns are chosen for a terminal.
    file_metrics = available if args.metrics is None else metrics
    outputs: list[tuple[str, Path | None, Callable[[Path, Sequence[Row], Sequence[str]], None]]] = [("--csv", args.csv, write_csv), ("--json", args.json, write_json)]
    for flag, path, write in outputs:
        if path is not None:
            _write_output(flag, path, lambda: write(path, rows, file_metrics))
            log.info("wrote %s", path)
    if plotted is not None:
        _write_plot(plotted, args.plot, root)


def _plot_data(rows: Sequence[Row], metrics: Sequence[str]) -> PlotData:
    """The plot's data: the rate–distortion points and the table's metrics (vae_runner.plots, imported only for --plot)."""
    from vae_runner.plots import plot_data

    return plot_data(rows, metrics)


def _write_plot(plotted: PlotData, path: Path, root: Path) -> None:
    """Draw the plot to `path` and say where it is."""
    from rich.console import Console

    from vae_runner import plots

    _write_output("--plot", path, lambda: plots.draw(plotted, path, title=f"vae-compare {root.resolve().name}"))
    Console(soft_wrap=True).print(f"rate–distortion plot: {path}", markup=False, highlight=False)
    hidden = [p.label for p in plotted.points if not (math.isfinite(p.x) and math.isfinite(p.y))]
    if hidden:  # matplotlib draws no NaN or Inf: say which configurations are missing
        log.warning("not drawn in the rate–distortion plane (a non-finite %s or %s): %s", plotted.x_metric, plotted.y_metric, "; ".join(hidden))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: 0 on success, 2 (and one sentence on stderr) on a user error."""
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.text import Text

    safe_streams()
    err = Console(stderr=True)
    handler = RichHandler(console=err, show_time=False, show_path=False)
    logger = log  # this module's logger, also when run as `python -m vae_runner.compare` (__main__)
    logger.addHandler(handler)
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        compare(argv)
    except UserError as error:
        err.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
