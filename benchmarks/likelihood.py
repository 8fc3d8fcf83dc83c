"""Test NLL of the conv VAE on dynamically binarised MNIST, importance-sampled with K=5000, against the IWAE paper.

Reference: a one-stochastic-layer VAE scores 86.76 nats on dynamically
binarised MNIST with K=5000 (Burda et al. 2015, Table 1, k=1 row); pythae
reproduces 89.78 on statically binarised MNIST with 200 samples. This trains
through the product itself (`vae_runner.train.train`, the same code as
`vae-run model.arch=conv dataset.binarize=dynamic eval.nll_samples=5000`) and
prints what it reached and how long it took. It measures; it never fails.

    .venv/bin/python benchmarks/likelihood.py --epochs 10 --test-samples 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REFERENCE_NLL = 86.76  # Burda et al. 2015, Table 1: VAE, one stochastic layer, k=1, dynamically binarised MNIST


def default_root() -> str:
    """`../shared/data` next to the repository when it exists, else `data`."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(shared) if shared.is_dir() else "data"


def main(argv: Optional[list[str]] = None) -> int:
    """Train, evaluate with K importance samples, print the comparison."""
    from hydra import compose, initialize_config_dir
    from rich.console import Console
    from rich.table import Table

    from vae_runner.config import config_dir, register_configs, validate
    from vae_runner.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5000, help="importance samples K (default: %(default)s)")
    parser.add_argument("--test-samples", type=int, default=1000, help="test images scored (default: %(default)s; all: 10000)")
    parser.add_argument("--latent-dim", type=int, default=50, help="50, as in the IWAE paper (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    args = parser.parse_args(argv)

    overrides = [
        f"dataset.root={args.root}", "model.arch=conv", "dataset.binarize=dynamic", f"model.latent_dim={args.latent_dim}",
        f"train.epochs={args.epochs}", f"eval.nll_samples={args.samples}", f"eval.test_samples={args.test_samples}",
        "eval.nll_chunk=250",
    ]
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="vae-likelihood-"))
    start = time.perf_counter()
    metrics = train(cfg, run_dir)
    seconds = time.perf_counter() - start

    table = Table(title=f"conv VAE, dynamically binarised MNIST, {args.epochs} epochs, K={args.samples} on {args.test_samples} test images", title_justify="left")
    table.add_column("")
    table.add_column("nats", justify="right")
    table.add_row("test NLL (IWAE estimate)", f"{metrics['test/nll']:.2f}")
    table.add_row("test -ELBO", f"{-metrics['test/elbo']:.2f}")
    table.add_row("reference (Burda et al. 2015, VAE k=1)", f"{REFERENCE_NLL:.2f}")
    table.add_row("gap to reference", f"{metrics['test/nll'] - REFERENCE_NLL:+.2f}")
    Console().print(table)
    print(f"time: {seconds:.0f} s in all ({metrics['train/seconds']:.0f} s training, {metrics['test/seconds']:.0f} s final evaluation), run directory {run_dir}")
    print(f"command: vae-run {' '.join(overrides)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
