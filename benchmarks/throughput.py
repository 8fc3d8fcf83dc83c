"""Training throughput: the project's device-resident batches against a torchvision DataLoader, on MNIST.

Both paths train the default `vae-run` model (same architecture, seed, batch size
and epochs) with the same `train_step`, in one process; only the input pipeline
differs. Both models are then scored on the same test batches. It measures and
prints; it never fails on a timing.

    .venv/bin/python benchmarks/throughput.py --epochs 2 --json throughput.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import Tensor

from vae_runner.model import VAE

TARGET = "target on a 2-core CPU: ratio >= 3.5 at batch 128, test losses within 1 nat"
WARMUP_STEPS = 20


def default_root() -> str:
    """`../shared/data` next to the repository when it exists, else `data`."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else "data"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_root(), help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs per path (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=0, help="the baseline DataLoader's workers (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def compose_config(batch_size: int, epochs: int, device: str) -> Any:
    """The config `vae-run` would build with no arguments, plus this benchmark's batch size, epochs and device."""
    from hydra import compose, initialize_config_dir

    from vae_runner.config import config_dir, register_configs, validate

    register_configs()
    overrides = [f"train.batch_size={batch_size}", f"train.epochs={epochs}", f"device={device}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


def fresh_model(cfg: Any, info: Any, device: torch.device) -> tuple[VAE, torch.optim.Optimizer, torch.amp.GradScaler]:
    """A newly initialised model, its optimizer and a disabled scaler; re-seeded so every call gives the same weights."""
    from vae_runner.build import build_model, make_optimizer

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, info).to(device)
    optimizer = make_optimizer(cfg.optim, model.parameters())
    # Both paths run in fp32 (train_step's default), where loss scaling does nothing; on the CPU it is not available.
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return model, optimizer, scaler


def baseline_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The conventional loop: float batches from the DataLoader, copied to the device one by one."""
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epoch(model: VAE, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Iterable[tuple[Tensor, Optional[Tensor]]], device: torch.device) -> tuple[int, float]:
    """Train over `batches`; returns (images, seconds), the clock stopped only after the device has finished."""
    from vae_runner.train import train_step

    sync(device)
    start, images = time.perf_counter(), 0
    for x, y in batches:
        train_step(model, optimizer, scaler, x, y)
        images += x.shape[0]
    sync(device)
    return images, time.perf_counter() - start


def write_report(results: dict[str, Any]) -> None:
    """Print the two paths side by side, the ratio, the loss gap and the target."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MNIST training throughput ({results['device']}, batch {results['batch_size']}, {results['epochs']} epoch(s))", title_justify="left")
    table.add_column("path")
    table.add_column("images/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("test val/loss (nats/image)", justify="right")
    for key, label in (("project", "project: TensorBatches on the device"), ("baseline", f"baseline: DataLoader + ToTensor, {results['num_workers']} workers")):
        r = results[key]
        table.add_row(label, f"{r['images_per_s']:,.0f}", f"{r['seconds']:.2f}", f"{r['val_loss']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"ratio project/baseline: [bold]{results['ratio']:.2f}x[/]")
    console.print(f"test loss difference (project - baseline): [bold]{results['val_loss_diff']:+.3f}[/] nats/image")
    console.print(TARGET)


def main(argv: Optional[list[str]] = None) -> int:
    """Train both ways, time the epochs, score both models on the test split, print (and optionally save) the numbers."""
    import torchvision
    from torch.utils.data import DataLoader

    from vae_runner.data import load_dataset, make_batches
    from vae_runner.errors import UserError
    from vae_runner.atomic import write_json
    from vae_runner.build import resolve_device
    from vae_runner.evaluate import validation_terms

    args = parse_args(argv)
    try:
        cfg = compose_config(args.batch_size, args.epochs, args.device)
        device = resolve_device(cfg.device)
        data = load_dataset("mnist", root=args.root)
        try:
            baseline_set = torchvision.datasets.MNIST(args.root, train=True, transform=torchvision.transforms.ToTensor())
        except RuntimeError:
            raise UserError(f"--root {args.root} holds no MNIST/raw/ idx files for torchvision; point --root at the folder that holds MNIST/.") from None
        if args.num_workers < 0:
            raise UserError(f"--num-workers {args.num_workers} is negative; use 0 or more.")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    bs, seed = cfg.train.batch_size, cfg.seed
    project = make_batches(data.train, bs, device, shuffle=True, seed=seed)
    test_batches = make_batches(data.test, bs, device, shuffle=False, seed=seed)

    def loader(epoch: int) -> DataLoader:
        """A shuffling DataLoader whose order depends only on (seed, epoch), like the project's batches."""
        return DataLoader(
            baseline_set, batch_size=bs, shuffle=True, num_workers=args.num_workers,
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch), pin_memory=device.type == "cuda",
        )

    # Warm-up on throwaway models: kernel selection, allocator growth and the first
    # read of the files happen here, not in whichever path is timed first.
    for batches in (baseline_batches(loader(0), device), project.epoch(0)):
        model, optimizer, scaler = fresh_model(cfg, data.info, device)
        run_epoch(model, optimizer, scaler, itertools.islice(batches, WARMUP_STEPS), device)

    # Epochs alternate, baseline then project: on a shared 2-core machine a burst of
    # load from another process then lands on both paths alike instead of on
    # whichever ran during it, and any cache warmth left by the previous epoch goes to
    # the baseline, so the ratio errs low rather than high.
    base_model, base_opt, base_scaler = fresh_model(cfg, data.info, device)
    proj_model, proj_opt, proj_scaler = fresh_model(cfg, data.info, device)
    timings: dict[str, list[tuple[int, float]]] = {"baseline": [], "project": []}
    for epoch in range(1, cfg.train.epochs + 1):
        timings["baseline"].append(run_epoch(base_model, base_opt, base_scaler, baseline_batches(loader(epoch), device), device))
        timings["project"].append(run_epoch(proj_model, proj_opt, proj_scaler, project.epoch(epoch), device))

    results: dict[str, Any] = {
        "device": str(device), "batch_size": bs, "epochs": cfg.train.epochs, "num_workers": args.num_workers,
        "threads": torch.get_num_threads(), "target": TARGET,
    }
    for key, model in (("project", proj_model), ("baseline", base_model)):
        images = sum(n for n, _ in timings[key])
        seconds = sum(s for _, s in timings[key])
        results[key] = {
            "images": images,
            "seconds": seconds,
            "images_per_s": images / seconds,
            "epoch_images_per_s": [n / s for n, s in timings[key]],
            "val_loss": validation_terms(model, test_batches, seed=seed)["loss"],  # the same seeded noise for both
        }
    results["ratio"] = results["project"]["images_per_s"] / results["baseline"]["images_per_s"]
    results["val_loss_diff"] = results["project"]["val_loss"] - results["baseline"]["val_loss"]

    write_report(results)
    if args.json is not None:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
