"""Disentanglement on dsprites: VAE, β-VAE (β=4) and β-TCVAE (β=6), several seeds each, their MIG beside their reconstruction.

Each run is a whole `vae-run dataset=dsprites model=<preset> seed=<s>` process with the
same architecture and length; the figures are read back from each run's
metrics.json (the test split's `test/mig`, DCI, SAP, FactorVAE score; `val/recon`
and `test/nll`), then summarised per model as mean ± standard deviation over seeds.
Runs go --jobs at a time, one torch thread each. Chen et al. (2018, Fig. 3) report a
β-TCVAE MIG of about 0.3-0.4 on dSprites and lower for β-VAE, with their own MIG
estimator (sampled q(z|x) over the whole dataset) and far longer training: a
reference point, not a target this benchmark can fail on. It measures and prints.

    .venv/bin/python benchmarks/disentanglement.py --root ~/.cache/vae-runner-data --json disentanglement.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

MODELS = {"vae": ("model=vae",), "beta_vae": ("model=beta_vae", "model.beta=4"), "beta_tcvae": ("model=beta_tcvae", "model.beta=6")}
# Ten latent dimensions, as Chen et al. (2018); their MLP is 4096-1200-1200-10 (--hidden 1200,1200), 2.5x the CPU time of the default 512.
COMMON = ("dataset=dsprites", "model.latent_dim=10", "threads=1")
METRICS = ("test/mig", "test/dci_disentanglement", "test/dci_completeness", "test/dci_informativeness", "test/factorvae_score", "test/sap",
           "val/recon", "val/kl", "test/nll")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("~/.cache/vae-runner-data").expanduser(), help="dataset.root: dsprites is generated there once (default: %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated among %(default)s")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="train.epochs of each run (default: %(default)s)")
    parser.add_argument("--train-samples", type=int, default=None, help="dataset.train_samples (default: all 597,197)")
    parser.add_argument("--hidden", default="512", help="model.hidden_dims, comma-separated (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's metrics to this JSON file")
    parser.add_argument("--from-json", type=Path, default=None, help="print the summary of an earlier --json instead of running")
    return parser.parse_args(argv)


def run_one(model: str, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """One whole run; its metrics.json, plus its wall seconds."""
    run_dir = folder / f"{model}-seed{seed}"
    cmd = [str(Path(sys.executable).parent / "vae-run"), *MODELS[model], *COMMON, f"seed={seed}", f"train.epochs={args.epochs}",
           f"model.hidden_dims=[{args.hidden}]", f"dataset.root={args.root}", f"hydra.run.dir={run_dir}"]
    if args.train_samples:
        cmd.append(f"dataset.train_samples={args.train_samples}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "wall_s": time.perf_counter() - start}


def print_summary(console: Console, results: dict, models: list[str], seeds: list[int], args: argparse.Namespace) -> None:
    """One row per metric, one column per model: mean ± standard deviation over the seeds."""
    images = f"{args.train_samples:,}" if args.train_samples else "all 597,197"
    table = Table(title=f"dsprites, {args.epochs} epochs on {images} training images, MLP [{args.hidden}], seeds {args.seeds}: mean ± sd over seeds")
    table.add_column("metric")
    for m in models:
        table.add_column(m, justify="right")
    for name in METRICS:
        cells = []
        for m in models:
            values = [results[(m, s)][name] for s in seeds if name in results[(m, s)]]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "–")
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"wall seconds per run: {statistics.median(r['wall_s'] for r in results.values()):.0f} (median)")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    console = Console()
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_summary(console, {(m, s): saved[f"{m}/seed{s}"] for m in models for s in seeds}, models, seeds, args)
        return
    # Generate the dataset once before the runs race for it.
    subprocess.run([sys.executable, "-c", f"from vae_runner.data import load_dataset; load_dataset('dsprites', root={str(args.root)!r}, train_samples=1, val_samples=1, test_samples=1)"], check=True)
    with tempfile.TemporaryDirectory(prefix="vae-dsprites-") as tmp:
        folder = args.keep or Path(tmp)
        jobs = [(m, s) for s in seeds for m in models]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = dict(zip(jobs, pool.map(lambda job: run_one(*job, args, folder), jobs)))
    images = f"{args.train_samples:,}" if args.train_samples else "all 597,197"
    print_summary(console, results, models, seeds, args)
    if args.json:
        args.json.write_text(json.dumps({f"{m}/seed{s}": r for (m, s), r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
