"""The sample-quality classifier's test accuracy per dataset, and the label accuracy and FD of default-length runs.

Part 1 trains the classifier exactly as a run's final report does (`load_or_train`
on the whole training split, into an empty cache) for MNIST and Fashion-MNIST,
and prints its test accuracy and CPU seconds (targets: >= 99 % and >= 90 %).
Part 2 runs `vae-run model=cvae` and `vae-run model=vae` at the default length
(10 epochs) on MNIST and prints `test/cvae_label_accuracy` (goal >= 95 %) and
`test/fd` read from their metrics.json. It measures and prints; it never fails on
a number.

    .venv/bin/python benchmarks/sample_quality.py --root ../shared/data --json sample_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console
from rich.table import Table

from vae_runner.classifier import load_or_train
from vae_runner.data import load_dataset

DATASETS = ("mnist", "fashion_mnist")
RUNS = ("cvae", "vae")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data", help="dataset.root holding MNIST/ and FashionMNIST/ (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs of the part-2 runs (default: the default run's %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads (default: %(default)s)")
    parser.add_argument("--skip-runs", action="store_true", help="part 1 only")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    return parser.parse_args(argv)


def classifier_accuracy(name: str, root: str, cache: Path) -> dict[str, float]:
    """Train the classifier for `name` into an empty cache, as a run's report would: its test accuracy and CPU seconds."""
    data = load_dataset(name, root=root)
    start = time.process_time()
    trained = load_or_train(data.train, data.test, dataset=name, num_classes=data.info.num_classes, cache_dir=cache, seed=0, device=torch.device("cpu"))
    return {"test_accuracy": trained.test_accuracy, "cpu_s": time.process_time() - start, "train_images": float(len(data.train))}


def run(model: str, args: argparse.Namespace, folder: Path, cache: Path) -> dict[str, float]:
    """One default-length run of `model` on MNIST; its metrics.json plus its wall seconds."""
    run_dir = folder / model
    cmd = [str(Path(sys.executable).parent / "vae-run"), f"model={model}", f"dataset.root={args.root}", f"train.epochs={args.epochs}",
           f"threads={args.threads}", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {**json.loads((run_dir / "metrics.json").read_text()), "wall_s": time.perf_counter() - start}


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console, results = Console(), {}
    with tempfile.TemporaryDirectory(prefix="vae-quality-") as tmp:
        table = Table(title=f"the sample-quality classifier ({args.threads} threads)")
        for column in ("dataset", "training images", "test accuracy", "CPU-s"):
            table.add_column(column, justify="right")
        for name in DATASETS:
            r = results[f"classifier/{name}"] = classifier_accuracy(name, args.root, Path(tmp) / "cache-part1")
            table.add_row(name, f"{r['train_images']:,.0f}", f"{100 * r['test_accuracy']:.2f} %", f"{r['cpu_s']:.1f}")
        console.print(table)
        if not args.skip_runs:
            table = Table(title=f"MNIST, {args.epochs} epochs")
            for column in ("model", "cvae_label_accuracy", "fd", "fd_samples", "classifier_accuracy", "nll", "wall s"):
                table.add_column(column, justify="right")
            for model in RUNS:
                m = results[f"run/{model}"] = run(model, args, Path(tmp), Path(tmp) / "cache-part2")
                nll = m.get("test/nll", m.get("test/nll_given_label", float("nan")))
                label = f"{100 * m['test/cvae_label_accuracy']:.2f} %" if "test/cvae_label_accuracy" in m else "–"
                table.add_row(model, label, f"{m['test/fd']:.2f}", f"{m['test/fd_samples']:,.0f}", f"{100 * m['test/classifier_accuracy']:.2f} %",
                              f"{nll:.2f}", f"{m['wall_s']:.0f}")
            console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
