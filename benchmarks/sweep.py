"""A five-value beta sweep, whole process: trained as one stacked model against the same jobs run one by one.

Three ways to run `model.beta=0.5,1,2,4,8` with the same settings, each timed from
launch to exit (CPU seconds: user + system of the process and its children):
- stacked: `vae-run -m hydra/launcher=stacked model.beta=...`, the members sharing the
  data, the batches and the process (vectorized with vmap on CUDA);
- sequential: `vae-run -m model.beta=...`, Hydra's default launcher, the jobs one after
  another in one process (each loads the data and builds its model again);
- processes: five `vae-run model.beta=B` commands one after another, as a user without a
  sweep launcher runs them (each pays Python's and torch's start-up too).
The protocols: `short`, 2 epochs on 20,000 training images (the issue's CPU target: the
stacked sweep at least 1.3x faster than sequential jobs); `default`, the default run's
10 epochs on all of them (the stacked sweep never slower). Runs alternate, round after
round, and each figure is the median over --repeats rounds. It measures and prints; it
never fails on a timing.

    .venv/bin/python benchmarks/sweep.py --protocol short --repeats 3 --json sweep.json
    .venv/bin/python benchmarks/sweep.py --protocol default --repeats 1 --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import RunFailed, default_root, positive, timed, write_json  # noqa: E402

BETAS = ("0.5", "1", "2", "4", "8")
PROTOCOLS = {"short": ("train.epochs=2", "dataset.train_samples=20000"), "default": ("train.epochs=10",)}
WAYS = ("stacked", "sequential", "processes")
TARGETS = "targets: CPU, short: stacked >= 1.3x faster than sequential; default length: never slower. GPU: stacked >= 3x faster"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="short", help="the sweep's length (default: %(default)s)")
    parser.add_argument("--repeats", type=positive, default=3, help="timed runs of each way (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=1, help="torch's CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    return parser.parse_args(argv)


def commands(way: str, common: list[str], folder: Path) -> list[list[str]]:
    """The command lines that run the sweep one `way`, in `folder`."""
    vae_run = str(Path(sys.executable).parent / "vae-run")
    swept = f"model.beta={','.join(BETAS)}"
    if way == "stacked":
        return [[vae_run, "-m", "hydra/launcher=stacked", swept, *common, f"hydra.sweep.dir={folder}"]]
    if way == "sequential":
        return [[vae_run, "-m", swept, *common, f"hydra.sweep.dir={folder}"]]
    return [[vae_run, f"model.beta={b}", *common, f"hydra.run.dir={folder / b}"] for b in BETAS]


def run_way(way: str, common: list[str]) -> tuple[float, float]:
    """CPU seconds and wall seconds of the whole sweep run one way, in a throwaway folder."""
    cpu_s = wall_s = 0.0
    with tempfile.TemporaryDirectory(prefix="vae-sweep-") as tmp:
        for cmd in commands(way, common, Path(tmp) / "sweep"):
            cpu, wall, _ = timed(cmd)
            cpu_s, wall_s = cpu_s + cpu, wall_s + wall
    return cpu_s, wall_s


def measure(args: argparse.Namespace, console: Console) -> dict[str, list[tuple[float, float]]]:
    """Every way, alternating, --repeats rounds: {way: [(cpu_s, wall_s), ...]}."""
    common = [*PROTOCOLS[args.protocol], f"threads={args.threads}", f"device={args.device}", f"dataset.root={args.root}"]
    runs: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for r in range(args.repeats):
        for way in WAYS:
            runs[way].append(run_way(way, common))
            cpu, wall = runs[way][-1]
            console.print(f"round {r + 1}/{args.repeats} {way}: {cpu:.1f} CPU-s, {wall:.1f} s wall", highlight=False)
    return runs


def summarize(runs: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Median CPU and wall seconds of each way, and each way's ratio to the stacked sweep (> 1: stacked is faster)."""
    summary: dict[str, Any] = {way: {"cpu_s": statistics.median(c for c, _ in r), "wall_s": statistics.median(w for _, w in r)} for way, r in runs.items()}
    for way in WAYS:
        for key in ("cpu_s", "wall_s"):
            summary[way][f"{key}_ratio"] = summary[way][key] / summary["stacked"][key]
    return summary


def table(summary: dict[str, Any], args: argparse.Namespace) -> Table:
    """The three ways side by side."""
    t = Table(title=f"beta sweep {','.join(BETAS)}, {args.protocol} ({' '.join(PROTOCOLS[args.protocol])}), {args.device}, "
                    f"{args.threads} thread(s), median of {args.repeats}", title_justify="left")
    for column in ("way", "CPU-s", "wall-s", "CPU-s / stacked", "wall-s / stacked"):
        t.add_column(column, justify="left" if column == "way" else "right")
    for way in WAYS:
        s = summary[way]
        t.add_row(way, f"{s['cpu_s']:.1f}", f"{s['wall_s']:.1f}", f"{s['cpu_s_ratio']:.2f}x", f"{s['wall_s_ratio']:.2f}x")
    return t


def main(argv: Optional[list[str]] = None) -> int:
    """Time the three ways, print the medians and ratios (and optionally save every number)."""
    args = parse_args(argv)
    if not (Path(args.root) / "MNIST" / "raw").is_dir():
        print(f"error: --root {args.root} holds no MNIST/raw/ folder; point --root at the folder that holds MNIST/raw/.", file=sys.stderr)
        return 2
    console = Console()
    try:
        runs = measure(args, console)
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = summarize(runs)
    console.print(table(summary, args))
    console.print(TARGETS, highlight=False, soft_wrap=True)
    if args.json is not None:
        write_json(args.json, {**summary, "runs": runs, "protocol": args.protocol, "threads": args.threads, "device": args.device, "targets": TARGETS})
        console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
