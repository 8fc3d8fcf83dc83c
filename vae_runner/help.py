"""`vae-run --help`: what the tool does, the groups and their choices, the keys a user sets, the commands people run most."""

from __future__ import annotations

import textwrap
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vae_runner.config import config_dir

INTRO = """vae-run: train a VAE (CVAE, beta-VAE, IWAE, VampPrior, flows, ...) from a config, log to TensorBoard, sweep with -m.

usage: vae-run [-m] [GROUP=OPTION ...] [KEY=VALUE ...]"""

# Options that come from plugins (the `sweep` extra) rather than from configs/.
PLUGIN_OPTIONS = {"hydra/launcher": ["joblib", "submitit_local", "submitit_slurm"], "hydra/sweeper": ["optuna"]}

COMMANDS = """commands people run most:
  vae-run model=cvae dataset=cifar10                  one run; writes outputs/runs/<time>_<overrides>/
  vae-run -m model=beta_vae model.beta=0.5,1,2,4,8    a sweep: one run per value, under outputs/sweeps/<time>/
  vae-run resume=outputs/runs/<run>                   continue a stopped run exactly where it stopped
  vae-eval outputs/runs/<run> eval.nll_samples=5000   recompute a run's final metrics (here a tighter test/nll)
  vae-compare outputs/sweeps/<time>                   one table of a sweep's runs, grouped over seeds
  vae-sample outputs/runs/<run> n=64                  a PNG of samples from a trained run
  tensorboard --logdir outputs                        the curves, pictures and HParams of every run

other flags: --cfg job (print the composed config and stop), --hydra-help (Hydra's own help)"""


def groups() -> dict[str, list[str]]:
    """Each config group and its options, from configs/ and the sweep plugins."""
    root = Path(config_dir())
    folders = sorted((f for f in root.rglob("*") if f.is_dir() and any(f.glob("*.yaml")) and f.name != "job_logging"), key=_group_order)
    found = {str(folder.relative_to(root)): sorted(p.stem for p in folder.glob("*.yaml")) for folder in folders}
    for group, options in PLUGIN_OPTIONS.items():
        found[group] = sorted(set(found.get(group, [])) | set(options))
    return found


def _group_order(folder: Path) -> tuple[int, str]:
    """model and dataset first, then the rest, hydra's last."""
    first = {"model": 0, "dataset": 1}
    return (first.get(folder.name, 3 if "hydra" in folder.parts else 2), str(folder))


def config_rows(cfg: DictConfig) -> list[tuple[str, str]]:
    """(section, `key=value  ...`) for each section of the config, then the loose keys; internal keys (`_target_`, `_partial_`) left out."""
    rows, loose = [], []
    for section, node in cfg.items():
        if isinstance(node, DictConfig):
            values = OmegaConf.to_container(node, resolve=True)
            rows.append((str(section), "  ".join(f"{k}={flow(v)}" for k, v in values.items() if not str(k).startswith("_"))))
        elif not str(section).startswith("_"):
            loose.append(f"{section}={flow(node)}")
    return rows + [("", "  ".join(loose))]


def flow(value: object) -> str:
    """A value as it would be written on the command line: [512], null, true."""
    if isinstance(value, list):
        return "[" + ",".join(flow(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _wrapped(section: str, values: str, width: int = 100) -> str:
    """`  section   key=value  key=value`, wrapped under itself at `width` columns."""
    indent = " " * 12
    return textwrap.fill(values, width, initial_indent=f"  {section:<9} ", subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def readme() -> str:
    """Where README is: the checkout's file when there is one."""
    path = Path(config_dir()).resolve().parent / "README.md"
    return str(path) if path.is_file() else "README.md of the vae-runner repository"


def help_text(cfg: DictConfig) -> str:
    """The whole `vae-run --help` page for this composed config."""
    defaults = {"model": cfg.model.name, "dataset": cfg.dataset.name}
    group_lines = [
        f"  {group:<15} {', '.join(options)}" + (f"   (now: {defaults[group]})" if group in defaults else "")
        for group, options in groups().items()
    ]
    return "\n\n".join(
        [
            INTRO,
            "groups (GROUP=OPTION; experiment as +experiment=NAME; hydra/* with -m):\n" + "\n".join(group_lines),
            "keys (KEY=VALUE, as now set; an unknown key is refused):\n" + "\n".join(_wrapped(s, v) for s, v in config_rows(cfg)),
            COMMANDS,
            f"README: {readme()}",
        ]
    )
