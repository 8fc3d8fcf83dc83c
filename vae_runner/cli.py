"""`vae-run`: compose the config with Hydra, show it, seed, train, and print a summary."""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import sys
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from vae_runner.atomic import atomic_write
from vae_runner.compare import COUNT_SUFFIXES
from vae_runner.config import STAMP_ENV, SWEPT_ENV, config_dir, register_configs, run_stamp, swept_keys, validate
from vae_runner.errors import UserError
from vae_runner.help import config_rows, help_text
from vae_runner.lock import RunLock
from vae_runner.progress import plus_minus, safe_streams
from vae_runner.resume import RESUME_ENV, check_resumable, check_sweep_folder, expand_resume, quoted
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
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # [key=value] stays text
    sys.exit(code)


def print_config(cfg: DictConfig, note: str = "") -> None:
    """The resolved config, one line per group (`key=value`, as they would be overridden), with a note under it."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for section, values in config_rows(cfg):
        table.add_row(section, values)
    console.print(Panel(table, title="config", title_align="left", subtitle=note or None, subtitle_align="left"))


def print_summary(metrics: dict[str, float], run_dir: Path, title: str = "vae-run: final metrics") -> None:
    """A table of the final metrics, and where to look next; the same text ends the run's log file."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if name.endswith("_se") and name[:-3] in metrics:
            continue  # shown beside its metric
        table.add_row(name, _shown(name, value, metrics.get(f"{name}_se")))
    lines = [f"run directory: {run_dir}", f"tensorboard:   tensorboard --logdir {run_dir.parent}"]
    console.print(table)
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)  # a path on one line, to copy or grep
    _append_to_log_files(table, lines)


def _shown(name: str, value: float, se: Optional[float]) -> str:
    """A metric as the table shows it: counts whole, epochs short, the rest to 3 decimals, `± SE` when it has one."""
    if name.endswith("epochs"):
        return f"{value:.3g}"  # 10, or 0.533 when train.max_steps stopped mid-epoch
    if name.endswith(COUNT_SUFFIXES):
        return f"{value:,.0f}"
    return f"{value:,.3f}" + (f" {plus_minus()} {se:.3f}" if se is not None else "")


_SUMMARY = logging.LogRecord("vae_runner", logging.INFO, __file__, 0, "summary", None, None)  # asks a log file's filters whether it takes the summary


def _append_to_log_files(table: Table, lines: list[str]) -> None:
    """The summary, as plain text, at the end of the log file (`vae-run.log`), as the terminal shows it."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler) and all(f.filter(_SUMMARY) for f in h.filters)]
    if not files:
        return
    plain = Console(file=io.StringIO(), width=100, color_system=None)
    plain.print(table)
    text = plain.file.getvalue() + "\n".join(lines) + "\n"
    for handler in files:
        if handler.stream is None:  # opened lazily and never written
            continue
        with suppress(OSError, ValueError):  # a full disk or a closed log: the terminal has the table
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.flush()
            finally:
                handler.release()


JOBS_ENV = "VAE_RUNNER_JOBS"  # how many jobs the sweep launches, for "job 2/5"
FRESH_ENV = "VAE_RUNNER_FRESH_DIR"  # the run or sweep folder this command creates (absent before it started)
# Set by `main` for a single run: the lock it took before Hydra wrote anything, and the records Hydra is
# about to overwrite in an existing run directory (put back if the run is refused before it trains).
_held_lock: Optional[RunLock] = None
_previous_records: dict[Path, bytes] = {}


def run(cfg: DictConfig) -> float:
    """One job: returns the final `val/loss`, the objective Hydra sweepers minimise."""
    # torch-heavy imports after Hydra parsed the command line
    from vae_runner import distributed
    from vae_runner.train import Interrupted, TrainingDiverged

    run_dir = RunDir(Path(HydraConfig.get().runtime.output_dir))
    try:
        earlier = _finished_earlier(run_dir)
        if earlier is not None:
            return earlier
        safe_streams()  # a launcher's worker process too
        _announce_job()
        if distributed.world_size() > 1 and not distributed.is_main():  # one voice on the terminal and in the log: rank 0's
            logging.getLogger().setLevel(logging.WARNING)
        set_threads(cfg.threads, HydraConfig.get().launcher)
        # A sweep's jobs lock their own folders; a single run's lock was taken in `main`.
        locked = _held_lock is None and distributed.is_main()
        with RunLock(run_dir.lock, str(run_dir.root)) if locked else nullcontext():
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


def run_members(cfgs: list[DictConfig], dirs: list[Path], vectorize: object) -> list[float]:
    """The jobs of a stacked sweep (`hydra/launcher=stacked`), trained together in this process; returns each one's final `val/loss`."""
    from vae_runner.stacked import check_stackable, member_logs, speaking, train_members
    from vae_runner.train import Interrupted

    runs = [RunDir(d) for d in dirs]
    values = [_finished_earlier(r) for r in runs]
    todo = [i for i, value in enumerate(values) if value is None]
    values = [math.nan if v is None else v for v in values]
    if not todo:
        return values
    cfgs, runs = [cfgs[i] for i in todo], [runs[i] for i in todo]
    started = False
    with member_logs(runs):
        try:
            for cfg in cfgs:
                validate(cfg)
            check_stackable(cfgs)
            set_threads(cfgs[0].threads, HydraConfig.get().launcher)
            print_config(cfgs[0], f"{len(runs)} stacked jobs, the first's shown: {', '.join(r.root.name for r in runs)}")
            with ExitStack() as locks:
                for run_dir in runs:
                    locks.enter_context(RunLock(run_dir.lock, str(run_dir.root)))
                started = True
                metrics, failed = train_members(cfgs, runs, vectorized(vectorize, cfgs[0]))
        except (UserError, Interrupted) as err:
            if not started:
                for run_dir in runs:
                    _undo(run_dir)
            fail(str(err), getattr(err, "exit_code", EXIT_USER_ERROR))
        for member, (i, run_dir, result) in enumerate(zip(todo, runs, metrics)):
            if result is not None:
                with speaking(member):
                    print_summary(result, run_dir.root)
                values[i] = result["val/loss"]
    if failed:
        index, err = next(iter(failed.items()))
        fail(f"{runs[index].root.name}: {err} The other jobs finished.", 1)
    return values


def _finished_earlier(run_dir: RunDir) -> Optional[float]:
    """In a resumed sweep, a job with metrics.json is skipped: its `val/loss`; None for a job still to train."""
    if not (os.environ.get(RESUME_ENV) and run_dir.metrics.is_file()):
        return None
    value = read_metrics(run_dir.metrics).get("val/loss", math.nan)
    log.info("%s finished earlier (val/loss %.3f); skipping it", run_dir.root, value)
    return value


def vectorized(setting: object, cfg: DictConfig) -> bool:
    """Whether a stacked sweep takes its steps as one vmap over the stack: `auto` on CUDA (not with fp16's loss scaling)."""
    from vae_runner.build import resolve_device, resolve_precision

    device = resolve_device(cfg.device)
    fp16 = resolve_precision(cfg.precision, device) == "fp16"
    if setting == "auto":
        return device.type == "cuda" and not fp16
    if setting is True and fp16:
        raise UserError("hydra.launcher.vectorize=true cannot scale fp16 losses per member; use precision=bf16 or fp32, or hydra.launcher.vectorize=false.")
    if not isinstance(setting, bool):
        raise UserError(f"hydra.launcher.vectorize={setting!r} is not a choice; use auto, true or false.")
    return setting


def _announce_job() -> None:
    """In a sweep, say which job of how many this is, and show it on every progress line."""
    from hydra.types import RunMode

    from vae_runner.progress import set_job

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    job = f"job {hc.job.num + 1}/{os.environ.get(JOBS_ENV, '?')}"
    side_by_side = "n_jobs" in hc.launcher or "submitit" in str(hc.launcher.get("_target_", ""))
    set_job(job, bars=not side_by_side)
    swept = set(filter(None, os.environ.get(SWEPT_ENV, "").split(",")))
    varied = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    log.info("%s: %s", job, " ".join(varied or hc.overrides.task) or "the defaults")


def _validate_and_train(cfg: DictConfig, run_dir: RunDir) -> dict[str, float]:
    """Check the config, show it, train; a run refused or stopped before it trains leaves its folder as it found it."""
    from vae_runner import distributed
    from vae_runner.train import Interrupted, train

    started = False

    def mark_started() -> None:
        nonlocal started
        started = True

    try:
        validate(cfg)
        if distributed.is_main():
            print_config(cfg)
        return train(cfg, run_dir.root, on_start=mark_started)
    except (UserError, Interrupted):
        if not started and distributed.is_main():
            _undo(run_dir)
        raise


def _undo(run_dir: RunDir) -> None:
    """A folder this command created goes, if it holds only records; an existing run gets back the records Hydra overwrote."""
    fresh = os.environ.get(FRESH_ENV)
    root = run_dir.root.absolute()
    if fresh and (root == Path(fresh) or Path(fresh) in root.parents):
        if run_dir.only_records():
            shutil.rmtree(root, ignore_errors=True)
        return
    if _held_lock is None:  # a job of a resumed sweep: its records are the sweep's, left as they are
        return
    for path in run_dir.config.parent.glob("*.yaml"):
        if path not in _previous_records:
            path.unlink(missing_ok=True)
    for path, content in _previous_records.items():
        atomic_write(path, lambda f, content=content: f.write(content))
    if not _previous_records:
        with suppress(OSError):
            run_dir.config.parent.rmdir()


# Decorated apart from `run` itself, so that launchers pickle the task by reference (joblib workers
# import it) instead of by value with the module's globals (a rich Console holds locks).
hydra_run = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(run)


def set_threads(setting: object, launcher: DictConfig) -> int:
    """Set torch's CPU threads from `threads` (a number, or `auto`); returns the count.

    `auto` is the cores this process may use (its CPU affinity, which taskset and
    cgroups narrow), shared among the jobs running side by side: joblib's n_jobs,
    torchrun's processes on this machine; under submitit, the job's cpus_per_task.
    """
    import torch

    from vae_runner import distributed

    if setting != "auto":
        threads = int(setting)  # type: ignore[call-overload]
    elif launcher.get("cpus_per_task"):
        threads = int(launcher.cpus_per_task)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        jobs = (cores if launcher.n_jobs < 0 else launcher.n_jobs) if "n_jobs" in launcher else 1  # joblib: -1 is one per core
        threads = max(1, cores // max(1, jobs) // distributed.local_world_size())
    if threads != torch.get_num_threads():  # left as torch set it otherwise: a run's numbers stay as they were
        torch.set_num_threads(threads)
    return threads


# ------------------------------------------------------------------ before Hydra runs


def preflight(argv: list[str]) -> tuple[Optional[Path], bool]:
    """Compose the config the way Hydra will, so that a bad key, value or group is one sentence and exit 2, before any work.

    For a sweep, every value of each swept key is checked (the other keys at
    their first value); `interval()` sweeps (Optuna) are checked as each job runs.
    Returns the run (or sweep) folder and whether this is a sweep.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.cfg:  # Hydra prints and exits: no run
        return None, False
    fixed, swept = [], {}
    for override in OverridesParser.create().parse_overrides(args.overrides):
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif not args.multirun:
            raise UserError(
                f"{override.input_line} gives several values, which only a sweep runs; add -m "
                f"(vae-run -m {override.input_line}), or pass one value."
            )
        elif not override.is_interval_sweep():
            swept[override.get_key_element()] = list(override.sweep_string_iterator())
    first = {key: values[0] for key, values in swept.items()}
    cfg = _checked(args.config_name, fixed, first)
    if args.multirun:
        os.environ[JOBS_ENV] = str(_job_count(cfg, swept))
    variants = [cfg]
    for key, values in swept.items():
        for value in values[1:]:
            variants.append(_checked(args.config_name, fixed, {**first, key: value}))
    if args.multirun and str(cfg.hydra.launcher.get("_target_", "")).endswith(".StackedLauncher"):
        from vae_runner.stacked import check_stackable

        check_stackable(variants)
        vectorized(cfg.hydra.launcher.get("vectorize", "auto"), cfg)
    # Normalised (`runs/x/../b` is `runs/b`), as Hydra will name it.
    out = Path(os.path.abspath(cfg.hydra.sweep.dir if args.multirun else cfg.hydra.run.dir))
    _check_writable(out, "hydra.sweep.dir" if args.multirun else "hydra.run.dir")
    from vae_runner import distributed
    from vae_runner.build import resolve_device

    if distributed.world_size() > 1:  # too few GPUs for torchrun's processes, refused before Hydra writes
        distributed.device_for_rank(resolve_device(cfg.device))
    if args.multirun:
        check_sweep_folder(out, resuming=bool(os.environ.get(RESUME_ENV)))
    elif out.is_dir() and distributed.is_main():  # torchrun: the other ranks share rank 0's folder
        check_resumable(RunDir(out), cfg)  # before Hydra rewrites its records
    return out, bool(args.multirun)


def _job_count(cfg: DictConfig, swept: dict[str, list[str]]) -> int:
    """How many jobs a sweep launches: Optuna's `n_trials`, else the grid's size."""
    trials = OmegaConf.select(cfg, "hydra.sweeper.n_trials", default=None)
    if trials is not None:
        return int(trials)
    return math.prod(len(values) for values in swept.values())  # 1 when -m sweeps nothing


def _checked(config_name: Optional[str], fixed: list[str], swept: dict[str, str]) -> DictConfig:
    """The composed config for these overrides, refused with one sentence when a run could not use it."""
    from hydra import compose, initialize_config_dir

    from vae_runner.build import check_optimizer

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name or "config", overrides=[*fixed, *(f"{k}={v}" for k, v in swept.items())], return_hydra_config=True)
    validate(cfg)
    check_optimizer(cfg.optim)
    return cfg


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
    safe_streams()
    register_configs()
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:  # started by torchrun: one rank of a DDP run
        from vae_runner import distributed

        distributed.init()  # before Hydra names the run directory: the ranks agree on one
    if {"-h", "--help"} & set(argv):
        cfg, note = _composed_for_help(argv)
        print(help_text(cfg) + note)
        return
    # One stamp for the folder name, so that preflight and Hydra name the same folder.
    os.environ.setdefault(STAMP_ENV, run_stamp())
    try:
        argv = expand_resume(argv)
        out, multirun = preflight(argv)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted before the run started; nothing was written.", 130)
    except Exception as err:  # Hydra's composition and override-parsing errors
        fail(describe_config_error(err))
    os.environ[SWEPT_ENV] = ",".join(sorted(swept_keys(argv)))
    os.environ[FRESH_ENV] = "" if out is None or out.exists() else str(out)
    if out is not None:  # Hydra uses the folder checked and locked here, even with ${now:} in its name
        argv = _with_override(argv, f"hydra.{'sweep' if multirun else 'run'}.dir={quoted(out)}")
    sys.argv = [sys.argv[0], *argv]
    try:
        with _single_run_lock(out, multirun):
            hydra_run()
        if "WORLD_SIZE" in os.environ:
            from vae_runner import distributed

            distributed.leave()
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        fail("interrupted; the last checkpoint in the run directory is intact.", 130)


def _composed_for_help(argv: list[str]) -> tuple[DictConfig, str]:
    """The config that `vae-run ARGV` would run, for --help to show; the defaults, and a line saying why, when the overrides do not compose."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if "=" in a and not a.startswith("-") and not a.startswith(("hydra", "resume="))]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            return compose(config_name="config", overrides=overrides), ""
        except Exception as err:  # a bad override: --help still helps
            return compose(config_name="config"), f"\n\n(the defaults are shown: {' '.join(overrides)} did not compose: {describe_config_error(err)})"


def _with_override(argv: list[str], override: str) -> list[str]:
    """argv with one more override, after the last one: Hydra's parser wants the overrides side by side."""
    last = max((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), default=len(argv) - 1)
    return [*argv[: last + 1], override, *argv[last + 1 :]]


@contextmanager
def _single_run_lock(out: Optional[Path], multirun: bool) -> Iterator[None]:
    """A single run's folder is locked before Hydra writes its records there; the records it will overwrite are kept."""
    global _held_lock
    from vae_runner import distributed

    if multirun or out is None or not distributed.is_main():
        yield
        return
    run_dir = RunDir(out)
    with RunLock(run_dir.lock, str(out)) as lock:
        _held_lock = lock
        _previous_records.update({p: p.read_bytes() for p in run_dir.config.parent.glob("*.yaml")})
        try:
            yield
        finally:
            _held_lock = None


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
    safe_streams()
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
    # `python -m vae_runner.cli` (torchrun, the Python API): run the importable module's main, so that
    # launchers pickle the task by reference to vae_runner.cli rather than by value from __main__.
    from vae_runner.cli import main as importable_main

    importable_main()
