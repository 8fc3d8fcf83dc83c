"""Test NLL of each preset on the protocols of the published numbers, each row beside its reference.

Protocols (MNIST test set, all 10,000 images unless --test-images says otherwise):
- static: statically binarised MNIST, as pythae reproduces Tomczak & Welling 2018:
  VAE 89.78 nats (K=200), VampPrior 85.79 (K=5000), IWAE 86.82 (K=5000); networks 300-300, 40 latents.
- dynamic: dynamically binarised MNIST, K=5000 (Burda et al. 2015, one stochastic layer, networks
  200-200, 50 latents): VAE 86.76, IWAE k=5 85.54, IWAE k=50 84.78; the issue's target for the best
  combination is 84.0.
- cifar: CIFAR-10 bits/dim with the discretized logistic, every preset on the same conv networks and data
  (the JPEG copy in ../shared/data: not comparable with published figures, so no reference).

Each row trains through the product itself (`vae_runner.train.train`, the code `vae-run` runs) and prints
what it reached, the command that reproduces it, and the time it took. It measures; it never fails.

    .venv/bin/python benchmarks/likelihood.py --protocol dynamic --epochs 10 --json results.json
    .venv/bin/python benchmarks/likelihood.py --protocol dynamic --rows vae,iwae5 --epochs 100   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Row:
    """One preset (or combination) on one protocol, with the published figure it is compared with."""

    name: str
    overrides: tuple[str, ...]
    samples: int  # K of the published figure
    reference: Optional[float]  # nats (bits/dim for cifar); None: no published figure on this data
    source: str


STATIC = ("dataset.binarize=static", "model.hidden_dims=[300,300]", "model.latent_dim=40")
DYNAMIC = ("dataset.binarize=dynamic", "model.hidden_dims=[200,200]", "model.latent_dim=50")
CIFAR = ("dataset=cifar10", "model.likelihood=discretized_logistic")
BEST = ("model=iwae", "model.iwae_samples=5", "model.prior=vamp", "model.posterior=iaf", "model.flow_steps=2", "model.flow_hidden=320")

PROTOCOLS: dict[str, tuple[tuple[str, ...], list[Row]]] = {
    "static": (STATIC, [
        Row("vae", ("model=vae",), 200, 89.78, "pythae's VAE, K=200"),
        Row("vamp", ("model=vamp",), 5000, 85.79, "pythae's VampPrior (Tomczak & Welling 2018), K=5000"),
        Row("iwae", ("model=iwae",), 5000, 86.82, "pythae's IWAE, K=5000"),
    ]),
    "dynamic": (DYNAMIC, [
        Row("vae", ("model=vae",), 5000, 86.76, "Burda et al. 2015, VAE k=1"),
        Row("iwae5", ("model=iwae", "model.iwae_samples=5"), 5000, 85.54, "Burda et al. 2015, IWAE k=5"),
        Row("iwae", ("model=iwae",), 5000, 84.78, "Burda et al. 2015, IWAE k=50"),
        Row("vamp", ("model=vamp",), 5000, None, "no one-layer figure on this protocol"),
        Row("vae_iaf", ("model=vae_iaf",), 5000, None, "no one-layer figure on this protocol"),
        Row("best", BEST, 5000, 84.0, "the issue's target for the best combination"),
    ]),
    "cifar": (CIFAR, [Row(p, (f"model={p}",), 100, None, "same networks and data for every preset") for p in (
        "vae", "beta_vae", "beta_vae_b", "beta_tcvae", "iwae", "vamp", "vae_iaf", "vae_planar")]),
}


def default_root(cifar: bool) -> str:
    """`../shared/data` next to the repository (for CIFAR-10 the unpacked JPEG tree's parent in the cache), else `data`."""
    if cifar:
        cache = Path.home() / ".cache"
        return str(cache) if (cache / "cifar10-jpeg" / "train").is_dir() else "data"
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(shared) if shared.is_dir() else "data"


def run_row(row: Row, base: tuple[str, ...], args: argparse.Namespace) -> dict[str, object]:
    """Train and evaluate one row through `train()`; its metrics, timings and command."""
    from hydra import compose, initialize_config_dir

    from vae_runner.config import config_dir, register_configs, validate
    from vae_runner.train import train

    k = args.samples or row.samples
    images = "all" if args.test_images is None else args.test_images
    overrides = [
        *row.overrides, *base, f"dataset.root={args.root or default_root('dataset=cifar10' in base)}", f"train.epochs={args.epochs}",
        f"eval.nll_samples={k}", f"eval.nll_images={images}", f"eval.nll_chunk={args.chunk}", f"device={args.device}", *args.override,
    ]
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    run_dir = Path(tempfile.mkdtemp(prefix=f"vae-likelihood-{row.name}-", dir=args.out))
    start = time.process_time()
    metrics = train(cfg, run_dir)
    return {
        "row": row.name, "reference": row.reference, "source": row.source, "K": k, "metrics": metrics,
        "cpu_seconds": time.process_time() - start, "command": "vae-run " + " ".join(overrides), "run_dir": str(run_dir),
    }


def main(argv: Optional[list[str]] = None) -> int:
    """Run the chosen rows of a protocol, print one table, optionally save it as JSON."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="dynamic")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all of the protocol's)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=None, help="importance samples K (default: each reference's)")
    parser.add_argument("--test-images", type=int, default=None, help="test images scored (default: all 10,000)")
    parser.add_argument("--chunk", type=int, default=100, help="eval.nll_chunk (default: %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--root", default=None, help="dataset.root (default: ../shared/data, or ~/.cache for CIFAR-10's JPEG tree)")
    parser.add_argument("--override", action="append", default=[], help="an extra vae-run override for every row (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the run directories (default: the system's temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    base, rows = PROTOCOLS[args.protocol]
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - {r.name for r in rows})
        if unknown:
            parser.error(f"--rows {','.join(unknown)} not in protocol {args.protocol}; it has {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in wanted]
    results = []
    for row in rows:
        results.append(run_row(row, base, args))
        if args.json:  # after every row: a long benchmark stopped half-way keeps what it measured
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    cifar = args.protocol == "cifar"
    unit = "bits/dim" if cifar else "nats"
    table = Table(title=f"{args.protocol}: {args.epochs} epochs, test/nll over {args.test_images or 'all'} test images", title_justify="left")
    for column in ("row", f"test NLL ({unit})", "± SE", "-ELBO", "K", "reference", "gap", "train s", "eval s", "CPU s"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for r in results:
        m = r["metrics"]
        nll = m["test/bits_per_dim"] if cifar else m["test/nll"]
        se = m.get("test/nll_se", math.nan) / (3072 * math.log(2) if cifar else 1)
        ref = r["reference"]
        table.add_row(
            r["row"], f"{nll:.2f}", f"{se:.2f}", f"{-m['test/elbo']:.2f}", str(r["K"]), "–" if ref is None else f"{ref:.2f}",
            "–" if ref is None else f"{nll - ref:+.2f}", f"{m['train/seconds']:.0f}", f"{m['test/seconds']:.0f}", f"{r['cpu_seconds']:.0f}",
        )
    Console(width=160).print(table)
    for r in results:
        print(f"{r['row']}: {r['command']}   ({r['source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
