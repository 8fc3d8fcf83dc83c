"""`vae-run`: compose the config with Hydra, show it, seed, train, and print a summary."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from vae_runner.config import SWEPT_ENV, config_dir, register_configs, swept_keys, validate
from vae_runner.errors import UserError
from vae_runner.lock import RunLock
from vae_runner.resume import RESUME_ENV, check_resumable, expand_resume
from vae_runner.run_dir import RunDir, read_metrics

log = logging.getLogger("vae_runner")
console = Console()
EXIT_USER_ERROR = 2
PLUGINS = {  # config option -> the pip package that provides it, all in the `sweep` extra
    "hydra/launcher=joblib": "hydra-joblib-launcher",
    "hydra/launcher=submitit_local": "hydra-submitit-launcher",
    "hydra/launcher=submitit_slurm": "hydra-submitit-launcher",
    "hydra/sweeper=optuna": "hydra-optuna-sweeper",
}

# Launcher workers (joblib, submitit) import this module to unpickle the task, and resolve the
# run directory's name there: the resolvers must exist in them too.
register_configs()


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one message to stderr, unwrapped, and exit."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def print_config(cfg: DictConfig) -> None:
    """The resolved config, one line per group (`key=value`, as they would be overridden)."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    loose = []
    for key, node in cfg.items():
        if isinstance(node, DictConfig):
            values = OmegaConf.to_container(node, resolve=True)
            table.add_row(str(key), "  ".join(f"{k}={_flow(v)}" for k, v in values.items() if not str(k).startswith("_")))
        else:
            loose.append(f"{key}={_flow(node)}")
    table.add_row("", "  ".join(loose))
    console.print(Panel(table, title="config", title_align="left"))


def _flow(value: object) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, list):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def print_summary(metrics: dict[str, float], run_dir: Path, title: str = "vae-run: final metrics") -> None:
    """A table of the final metrics, and where to look next."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        integer = name.endswith(("images_per_s", "steps", "epochs", "units", "_images"))
        table.add_row(name, f"{value:,.0f}" if integer else f"{value:,.3f}")
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]")
    console.print(f"tensorboard:   tensorboard --logdir {run_dir.parent}")


def run(cfg: DictConfig) -> float:
    """One job: returns the final `val/loss`, the objective Hydra sweepers minimise."""
    # torch-heavy imports after Hydra parsed the command line
    from vae_runner import distributed
    from vae_runner.train import Interrupted, TrainingDiverged

    run_dir = RunDir(Path(HydraConfig.get().runtime.output_dir))
    try:
        if os.environ.get(RESUME_ENV) and run_dir.metrics.is_file():
            metrics = read_metrics(run_dir.metrics)
            log.info("%s finished earlier (val/loss %.3f); skipping it", run_dir.root, metrics.get("val/loss", math.nan))
            return metrics.get("val/loss", math.nan)
        if distributed.world_size() > 1:
            if not distributed.is_main():  # one voice on the terminal and in the log: rank 0's
                logging.getLogger().setLevel(logging.WARNING)
        else:
            _share_cores(HydraConfig.get().launcher)
        with RunLock(run_dir.lock, str(run_dir.root)) if distributed.is_main() else nullcontext():
            metrics = _validate_and_train(cfg, run_dir)
    except UserError as err:
        fail(str(err))
    except Interrupted as stop:
        fail(str(stop), stop.exit_code)
    except TrainingDiverged as err:
        fail(str(err), 1)
    if not distributed.is_main():
        return math.nan
    print_summary(metrics, run_dir.root)
    return metrics["val/loss"]


def _validate_and_train(cfg: DictConfig, run_dir: RunDir) -> dict[str, float]:
    """Check the config, show it, train; a run stopped before it produced anything leaves no directory behind."""
    from vae_runner import distributed
    from vae_runner.train import Interrupted, train

    try:
        validate(cfg)
        if distributed.is_main():
            print_config(cfg)
        return train(cfg, run_dir.root)
    except (UserError, Interrupted):
        if run_dir.only_records():
            shutil.rmtree(run_dir.root, ignore_errors=True)
        raise


# Decorated apart from `run` itself, so that launchers pickle the task by reference (joblib workers
# import it) instead of by value with the module's globals (a rich Console holds locks).
hydra_run = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(run)


def _share_cores(launcher: DictConfig) -> None:
    """Jobs running side by side share the machine's cores: torch threads per job = cores // parallel jobs."""
    import torch

    cores = os.cpu_count() or 1
    if "n_jobs" in launcher:  # joblib: -1 means one job per core
        jobs = cores if launcher.n_jobs < 0 else launcher.n_jobs
        torch.set_num_threads(max(1, cores // max(1, jobs)))
    elif launcher.get("cpus_per_task"):  # submitit: the cores the job was given
        torch.set_num_threads(int(launcher.cpus_per_task))


# ------------------------------------------------------------------ before Hydra runs


def preflight(argv: list[str]) -> None:
    """Compose the config the way Hydra will, so that a bad key, value or group is one sentence and exit 2, before any work.

    For a sweep, the first value of each swept key stands for all; every job is
    validated again when it runs.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = []
    for override in OverridesParser.create().parse_overrides(args.overrides):
        if override.is_sweep_override() and not args.multirun:
            raise UserError(
                f"{override.input_line} gives several values, which only a sweep runs; add -m "
                f"(vae-run -m {override.input_line}), or pass one value."
            )
        if override.is_sweep_override():
            try:
                overrides.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
            except Exception:  # interval() sweeps (Optuna) have no first value: checked when each job runs
                continue
        else:
            overrides.append(override.input_line)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=args.config_name or "config", overrides=overrides, return_hydra_config=True)
    out = cfg.hydra.sweep.dir if args.multirun else cfg.hydra.run.dir
    _check_writable(Path(out), "hydra.sweep.dir" if args.multirun else "hydra.run.dir")
    validate(cfg)
    from vae_runner.build import check_optimizer

    check_optimizer(cfg.optim)
    if not args.multirun and Path(out).is_dir():
        check_resumable(RunDir(Path(out)), cfg)  # before Hydra rewrites its records


def _check_writable(folder: Path, key: str) -> None:
    """The run directory can be created: its nearest existing ancestor is a writable folder."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the output folder {folder}: {existing} is a file; pass {key}=<a writable folder>.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the output folder {folder}: {existing} is not writable; pass {key}=<a writable folder> or run from a writable directory.")


def describe_config_error(err: BaseException) -> str:
    """Hydra's composition errors, as one sentence naming the key or option."""
    from hydra.errors import MissingConfigException

    text = str(err)
    if isinstance(err, MissingConfigException) and "Could not find" in text:
        missing = text.split("Could not find '", 1)[1].split("'", 1)[0]  # e.g. model/foo
        group, _, option = missing.rpartition("/")
        if f"{group}={option}" in PLUGINS:
            return f"{group}={option} needs the {PLUGINS[f'{group}={option}']} plugin: pip install 'vae-runner[sweep]' (make install does)."
        listing = text.split("Available options", 1)[-1].split("Config search path", 1)[0]
        options = [line.strip() for line in listing.splitlines()[1:] if line.startswith("\t")]
        if group:
            return f"{group}={option} is not a choice for {group}; use one of: {', '.join(options)}."
    cause = err.__cause__ or err.__context__
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if cause is not None and str(cause).strip():
        detail = str(cause).strip().splitlines()[0]
        key = next((line.split("full_key:", 1)[1].strip() for line in str(cause).splitlines() if "full_key:" in line), "")
        where = f" ({key})" if key and key not in first else ""
        return f"{first.rstrip('.')}: {detail}{where}; check the key and value against README's config table."
    return f"{first.rstrip('.')}; check the key and value against README's config table."


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:  # started by torchrun: one rank of a DDP run
        from vae_runner import distributed

        distributed.init()  # before Hydra names the run directory: the ranks agree on one
    try:
        argv = expand_resume(argv)
        preflight(argv)
    except UserError as err:
        fail(str(err))
    except Exception as err:  # Hydra's composition and override-parsing errors
        fail(describe_config_error(err))
    os.environ[SWEPT_ENV] = ",".join(sorted(swept_keys(argv)))
    sys.argv = [sys.argv[0], *argv]
    try:
        hydra_run()
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        fail("interrupted; the last checkpoint in the run directory is intact.", 130)


EVAL_USAGE = """usage: vae-eval RUN_DIR [KEY=VALUE ...]

Recompute a run's final metrics from checkpoints/last.pt and its saved config:
test/nll (importance sampled), test/elbo, test/bits_per_dim, val/active_units,
anomaly AUROC and denoising PSNR when the run had them. Writes them to the run's
TensorBoard and metrics.json. Overrides apply to the saved config, e.g.
  vae-eval outputs/runs/<run> eval.nll_samples=5000
  vae-eval outputs/runs/<run> dataset.root=/elsewhere device=cpu"""


def eval_main(argv: Optional[list[str]] = None) -> None:
    """`vae-eval` entry point."""
    from vae_runner.evaluate import evaluate_run
    from vae_runner.train import Interrupted, StopSignals

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        sys.exit(0 if argv else EXIT_USER_ERROR)
    run_dir, overrides = Path(argv[0]), argv[1:]
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False, console=console)])
    try:
        with StopSignals(at_once=f"during vae-eval; {run_dir / 'metrics.json'} is unchanged."):
            metrics = evaluate_run(run_dir, overrides)
    except UserError as err:
        fail(str(err))
    except Interrupted as stop:
        fail(str(stop), stop.exit_code)
    print_summary(metrics, run_dir, title="vae-eval: metrics recomputed from checkpoints/last.pt")


if __name__ == "__main__":
    main()
