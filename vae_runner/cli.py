"""`vae-run`: compose the config with Hydra, show it, seed, train, and print a summary."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from vae_runner.config import config_dir, register_configs, validate
from vae_runner.errors import UserError

log = logging.getLogger("vae_runner")
console = Console()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def print_summary(metrics: dict[str, float], run_dir: Path) -> None:
    """A table of the final metrics, and where to look next."""
    table = Table(title="vae-run: final metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:,.0f}" if name.endswith(("images_per_s", "steps", "epochs")) else f"{value:,.3f}")
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]")
    console.print(f"tensorboard:   tensorboard --logdir {run_dir.parent}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def run(cfg: DictConfig) -> float:
    """One job: returns the final `val/loss`, the objective Hydra sweepers minimise."""
    from vae_runner.train import train  # torch-heavy imports after Hydra has parsed the command line

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        console.print(Panel(Syntax(OmegaConf.to_yaml(cfg), "yaml", background_color="default"), title="config", expand=False))
        seed_everything(cfg.seed)
        metrics = train(cfg, run_dir)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)
    print_summary(metrics, run_dir)
    return metrics["val/loss"]


def main() -> None:
    """Console-script entry point."""
    register_configs()
    run()


if __name__ == "__main__":
    main()
