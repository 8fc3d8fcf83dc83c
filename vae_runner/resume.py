"""Continuing a run or a sweep: what `resume=` expands to, and what a resume may change, checked before Hydra writes anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_runner.errors import UserError
from vae_runner.lock import check_unlocked
from vae_runner.run_dir import RunDir

RESUME_ENV = "VAE_RUNNER_RESUME_SWEEP"  # set by `-m ... resume=true`: finished jobs are skipped

# What a resumed run may change: how long it trains, how often it logs, how it is evaluated and where
# things are. Anything else (the model, the data, the optimizer, the seed, the batch) would make the
# checkpoint mean something else, or be silently overridden by the optimizer state it holds.
# `vae-eval` may change how a run is evaluated and where things are, nothing that would make the
# metrics describe another model or other data than the run trained on.
EVALUATION_CHANGES = ("eval.", "device", "precision", "dataset.root", "dataset.path", "dataset.num_workers", "dataset.max_memory_mb")
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.log_every_steps", "train.image_every_epochs", "train.pictures_every_epochs",
    "train.checkpoint_every_steps", "train.max_skipped_steps", *EVALUATION_CHANGES,
)


def expand_resume(argv: list[str]) -> list[str]:
    """`resume=<run_dir>` becomes that run's saved overrides plus `hydra.run.dir=<run_dir>` (later overrides win).

    In a multirun, `resume=true` points the sweep at the latest earlier sweep with
    the same overrides (or at the `hydra.sweep.dir` given): finished jobs are skipped,
    unfinished ones resume.
    """
    resume = [a for a in argv if a.split("=", 1)[0].lstrip("+") == "resume"]
    if not resume:
        return argv
    rest = [a for a in argv if a not in resume]
    value = resume[-1].split("=", 1)[1]
    if value.lower() == "true":
        if not {"-m", "--multirun"} & set(argv):
            raise UserError("resume=true resumes a sweep: add -m, or pass resume=<run_dir> to resume one run.")
        os.environ[RESUME_ENV] = "1"
        if any(a.startswith("hydra.sweep.dir=") for a in rest):  # the sweep's folder, named
            return rest
        return [*rest, f"hydra.sweep.dir={_previous_sweep(rest)}"]
    run = RunDir(Path(value).expanduser())
    if not run.overrides.is_file():
        raise UserError(f"resume={run.root} is not a vae-run run directory (no .hydra/overrides.yaml); pass a folder under outputs/runs/.")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(run.overrides))
    except Exception as err:  # YAML errors
        saved = err
    if not isinstance(saved, list) or not all(isinstance(o, str) and "=" in o for o in saved):
        raise UserError(f"{run.overrides} is not a YAML list of key=value overrides; restore it (vae-compare and resume read it), or start a new run.")
    previous = [o for o in saved if not o.startswith(("hydra.", "resume=", "+resume="))]
    return [*previous, *rest, f"hydra.run.dir={quoted(run.root)}"]


def quoted(path: Path) -> str:
    """A path as a quoted Hydra override value: run folders are named like `model.beta=4,seed=1`, which Hydra would parse."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _previous_sweep(argv: list[str]) -> Path:
    """The newest sweep under outputs/sweeps/ launched with these overrides."""
    overrides = sorted(a for a in argv if not a.startswith("-"))
    candidates = sorted(Path("outputs", "sweeps").glob("*/multirun.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for multirun in candidates:
        if sorted(str(o) for o in OmegaConf.load(multirun).hydra.overrides.task) == overrides:
            return multirun.parent
    raise UserError(
        f"resume=true found no earlier sweep with the overrides {' '.join(overrides)} under {Path('outputs', 'sweeps').absolute()}; "
        f"run the same command from the same folder, or drop resume=true to start a new sweep."
    )


def check_resumable(run: RunDir, cfg: DictConfig) -> None:
    """Before Hydra rewrites `run`'s records: it is not in use, not finished, and `cfg` changes only what a resume may change."""
    check_unlocked(run.lock, str(run.root))
    if not run.config.is_file():
        return  # a fresh folder, or a run killed before Hydra wrote its records
    try:
        saved = _flat(OmegaConf.to_container(OmegaConf.load(run.config), resolve=False))
    except Exception as err:  # YAML errors, unreadable file
        raise UserError(f"{run.config} is not readable ({str(err).splitlines()[0]}); restore it, or start a new run directory.") from None
    new = _flat(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True))
    # Keys on one side only are schema keys of another version, or optimizer arguments added with + or dropped with ~.
    compared = (saved.keys() & new.keys()) | {k for k in saved.keys() ^ new.keys() if k.startswith("optim.")}
    changed = sorted(k for k in compared if saved.get(k) != new.get(k) and not k.startswith(("hydra.", *RESUMABLE_CHANGES)))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {new.get(k)!r})" for k in changed[:3])
        raise UserError(
            f"{run.root} was trained with other settings and cannot be resumed with {shown}; a resume may change only "
            f"train.epochs, train.max_steps, eval.*, device and where the data is; start a new run for the rest."
        )
    if run.metrics.is_file() and not _longer(saved, new):
        raise UserError(
            f"{run.root} is finished (it has metrics.json) and was left as it is; to train it longer pass a larger "
            f"train.epochs, to recompute its metrics run vae-eval {run.root}."
        )


def check_sweep_folder(sweep_dir: Path, resuming: bool) -> None:
    """A sweep starts in a new folder; `resume=true` continues one whose jobs are not running any more."""
    runs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")] if sweep_dir.is_dir() else []
    if runs and not resuming:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} already holds {len(runs)} run(s); add resume=true to continue that sweep, "
            f"or choose a new folder."
        )
    for run in runs:
        check_unlocked(RunDir(run).lock, str(run))


def _longer(saved: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` trains longer than `saved`: more epochs, or a higher (or no) step limit."""
    more_epochs = (new.get("train.epochs") or 0) > (saved.get("train.epochs") or 0)
    old_steps, new_steps = saved.get("train.max_steps"), new.get("train.max_steps")
    more_steps = old_steps is not None and (new_steps is None or new_steps > old_steps)
    return more_epochs or more_steps


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"beta": 4}} -> {"model.beta": 4}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out
