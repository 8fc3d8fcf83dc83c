"""Whole-process cost on MNIST: `vae-run` against the conventional recipe (and optionally pythae), CPU seconds and wall time.

The conventional recipe is PyTorch's example VAE (benchmarks/recipe_vae.py: torchvision's
MNIST through a DataLoader of 128, the same 784-512-20 model with a Bernoulli likelihood,
Adam at 1e-3, then the test ELBO). Each side runs as its own process on the CPU with the
same number of torch threads and is timed from launch to exit, so imports, data loading,
evaluation, checkpoints and logs all count: CPU seconds are the user + system time of
the process and of the children it waited for. `vae-run train.max_steps=1` is timed
too: what a run costs beyond its training steps, vae-run's fixed cost.

With --pythae-path DIR a third side joins: pythae's VAE (benchmarks/pythae_vae.py: the
same model and optimizer through pythae's TrainingPipeline, which also makes an eval pass
over the test set after every epoch and saves its final model), run with PYTHONPATH=DIR
in its environment only, since pythae is not in the venv.

Runs alternate (the fixed-cost run, then recipe, vae-run and pythae for each epoch count,
round after round), so a burst of load from another process lands on every side alike;
each figure is the median over --repeats rounds. It measures and prints; it never fails
on a timing.

    .venv/bin/python benchmarks/throughput.py --epochs 1,10 --repeats 3 --threads 1 --json throughput.json
    .venv/bin/python benchmarks/throughput.py --epochs 1,10 --repeats 3 --threads 1 --pythae-path /tmp/pyth/site
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

RECIPE = Path(__file__).resolve().parent / "recipe_vae.py"
PYTHAE = Path(__file__).resolve().parent / "pythae_vae.py"
TARGETS = "targets: 1 epoch: vae-run's whole process costs less CPU time than the recipe's; 10 epochs: >= 3x faster"
FIXED_TARGET = "<= 8 CPU-s"
FIXED_OVERRIDES = ("train.max_steps=1",)


class RunFailed(Exception):
    """A timed process exited with an error; the message names the command and its last error line."""


class PythaeMissing(Exception):
    """pythae cannot be imported from the folder given as --pythae-path."""


@dataclass
class Sample:
    """One timed process: CPU seconds (user + sys), wall seconds and the test loss it reported."""

    cpu_s: float
    wall_s: float
    loss: float


def default_root() -> str:
    """`../shared/data` next to the repository when it exists, else `data`."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else "data"


def epoch_counts(text: str) -> list[int]:
    """`1,10` as [1, 10]; each a positive whole number."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive epoch counts, e.g. 1,10")
    return sorted(set(counts))


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=epoch_counts, default=[1, 10], help="epoch counts to compare, comma-separated (default: 1,10)")
    parser.add_argument("--repeats", type=positive, default=3, help="timed runs of each side per epoch count (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=1, help="torch's CPU threads on every side (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--pythae-path", type=Path, default=None, metavar="DIR", help="also time pythae, importable from DIR (put on PYTHONPATH for its runs only)")
    return parser.parse_args(argv)


def children_cpu_s() -> float:
    """User + system seconds of this process's children that have been waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: Optional[dict[str, str]] = None) -> tuple[float, float, str]:
    """Run `cmd` to its end; (CPU seconds, wall seconds, stdout). One child at a time, so the usage delta is its own."""
    cpu_before, start = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    wall_s, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu_before
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RunFailed(f"`{' '.join(cmd)}` exited with {proc.returncode}: {last}")
    return cpu_s, wall_s, proc.stdout


def pythae_env(path: Path) -> dict[str, str]:
    """This process's environment with PYTHONPATH set to `path`, for the pythae side alone."""
    return {**os.environ, "PYTHONPATH": str(path)}


def run_script(script: Path, root: str, epochs: int, threads: int, env: Optional[dict[str, str]] = None) -> Sample:
    """A benchmark script (recipe or pythae) for `epochs` epochs, with the mean test loss it prints."""
    cmd = [sys.executable, str(script), f"--root={root}", f"--epochs={epochs}", f"--threads={threads}"]
    cpu_s, wall_s, stdout = timed(cmd, env)
    found = re.search(r"Test set loss: ([\d.]+)", stdout)
    if found is None:
        raise RunFailed(f"`{' '.join(cmd)}` printed no test loss.")
    return Sample(cpu_s, wall_s, float(found.group(1)))


def run_vae(root: str, threads: int, overrides: tuple[str, ...]) -> Sample:
    """`vae-run` on the CPU in a throwaway run directory, with the test/nll of its metrics.json."""
    vae_run = Path(sys.executable).parent / "vae-run"
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [str(vae_run), *overrides, f"threads={threads}", "device=cpu", f"dataset.root={root}", f"hydra.run.dir={run_dir}"]
        cpu_s, wall_s, _ = timed(cmd)
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if "test/nll" not in metrics:
        raise RunFailed(f"`{' '.join(cmd)}` finished without a test/nll in its metrics.json.")
    return Sample(cpu_s, wall_s, metrics["test/nll"])


def medians(samples: list[Sample]) -> dict[str, float]:
    """The median CPU seconds, wall seconds and test loss over the samples."""
    return {key: statistics.median(getattr(s, key) for s in samples) for key in ("cpu_s", "wall_s", "loss")}


def measure(args: argparse.Namespace, console: Console) -> dict[str, list[Sample]]:
    """All timed runs, alternating sides round after round; keyed `fixed`, `recipe/<N>`, `vae-run/<N>`, `pythae/<N>`."""
    runs: dict[str, list[Sample]] = {}
    jobs = [("fixed", lambda: run_vae(args.root, args.threads, FIXED_OVERRIDES))]
    env = None if args.pythae_path is None else pythae_env(args.pythae_path)
    for n in args.epochs:
        jobs.append((f"recipe/{n}", lambda n=n: run_script(RECIPE, args.root, n, args.threads)))
        jobs.append((f"vae-run/{n}", lambda n=n: run_vae(args.root, args.threads, (f"train.epochs={n}",))))
        if env is not None:
            jobs.append((f"pythae/{n}", lambda n=n, env=env: run_script(PYTHAE, args.root, n, args.threads, env)))
    for round_ in range(1, args.repeats + 1):
        for key, job in jobs:
            sample = job()
            runs.setdefault(key, []).append(sample)
            console.print(f"round {round_}/{args.repeats} {key}: {sample.cpu_s:.1f} CPU-s, {sample.wall_s:.1f} s wall", highlight=False, soft_wrap=True)
    return runs


def warm_up(pythae_path: Optional[Path]) -> None:
    """Import torch and torchvision (and pythae) once, untimed, so the first timed run does not also pay for a cold file cache."""
    subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
    if pythae_path is None:
        return
    probe = subprocess.run([sys.executable, "-c", "import pythae.pipelines, pythae.models"], env=pythae_env(pythae_path), capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error output"])[-1]
        raise PythaeMissing(f"--pythae-path {pythae_path}: pythae cannot be imported from it ({last}); point it at the folder pythae 0.1.2 is installed in.")


def ratios(numerator: dict[str, float], denominator: dict[str, float]) -> tuple[float, float]:
    """CPU and wall ratios numerator / denominator (> 1: the denominator is cheaper)."""
    return numerator["cpu_s"] / denominator["cpu_s"], numerator["wall_s"] / denominator["wall_s"]


def summarize(runs: dict[str, list[Sample]], epochs: list[int]) -> dict[str, Any]:
    """Medians and ratios to vae-run per epoch count, the fixed cost, and every sample."""
    summary: dict[str, Any] = {"fixed": medians(runs["fixed"])}
    for n in epochs:
        recipe, vae = medians(runs[f"recipe/{n}"]), medians(runs[f"vae-run/{n}"])
        row = {"recipe": recipe, "vae-run": vae}
        row["ratio_cpu"], row["ratio_wall"] = ratios(recipe, vae)
        if f"pythae/{n}" in runs:
            row["pythae"] = medians(runs[f"pythae/{n}"])
            row["pythae_ratio_cpu"], row["pythae_ratio_wall"] = ratios(row["pythae"], vae)
        summary[f"epochs={n}"] = row
    summary["samples"] = {key: [asdict(s) for s in samples] for key, samples in runs.items()}
    return summary


def epoch_table(n: int, row: dict[str, Any], repeats: int, threads: int) -> Table:
    """One epoch count's medians, a column per side, and each other side's ratio to vae-run (> 1: vae-run is cheaper)."""
    table = Table(title=f"{n} epoch{'s' * (n != 1)}, {threads} thread{'s' * (threads != 1)}, median of {repeats}", title_justify="left")
    sides = [side for side in ("recipe", "vae-run", "pythae") if side in row]
    # prefix of each side's ratio keys in `row`; recipe keeps the keys it had before pythae joined
    prefixes = {"recipe": "ratio_", "pythae": "pythae_ratio_"}
    for name in ["", *sides]:
        table.add_column(name, justify="right" if name else "left")
    for label, key in (("CPU-s", "cpu"), ("wall-s", "wall")):
        table.add_row(label, *(f"{row[side][f'{key}_s']:.1f}" for side in sides))
    for label, key in (("CPU-s / vae-run", "cpu"), ("wall-s / vae-run", "wall")):
        table.add_row(label, *(f"{row[prefixes[side] + key]:.2f}x" if side in prefixes else "" for side in sides))
    loss_names = {"recipe": "ELBO", "vae-run": "test/nll", "pythae": "ELBO"}
    table.add_row("test loss, nats", *(f"{row[side]['loss']:.2f} ({loss_names[side]})" for side in sides))
    return table


def write_report(summary: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    """A table per epoch count, the fixed cost and the targets."""
    for n in args.epochs:
        console.print(epoch_table(n, summary[f"epochs={n}"], args.repeats, args.threads))
    fixed = summary["fixed"]
    console.print(f"fixed cost (train.max_steps=1): {fixed['cpu_s']:.1f} CPU-s, {fixed['wall_s']:.1f} s wall (target {FIXED_TARGET})", highlight=False, soft_wrap=True)
    console.print(TARGETS, highlight=False, soft_wrap=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` whole or not at all: a temporary file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    """Time every side, print the medians and ratios (and optionally save every number)."""
    args = parse_args(argv)
    raw = Path(args.root) / "MNIST" / "raw"
    if not raw.is_dir():
        print(f"error: --root {args.root} holds no MNIST/raw/ folder; point --root at the folder that holds MNIST/raw/.", file=sys.stderr)
        return 2
    console = Console()
    try:
        warm_up(args.pythae_path)
        runs = measure(args, console)
    except (RunFailed, PythaeMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = summarize(runs, args.epochs)
    summary.update(root=args.root, threads=args.threads, repeats=args.repeats, targets=TARGETS, fixed_target=FIXED_TARGET)
    summary.update(pythae_path=None if args.pythae_path is None else str(args.pythae_path))
    write_report(summary, args, console)
    if args.json is not None:
        write_json(args.json, summary)
        console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
