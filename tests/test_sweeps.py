"""Sweeps: parallel and cluster launchers, Optuna, resuming a killed sweep, collision-free directories, vae-compare."""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from tests.conftest import console_script, vae_run
from vae_runner.cli import describe_config_error

TINY = ["train.max_steps=3", "dataset.train_samples=500", "dataset.val_samples=100", "eval.test_samples=100", "eval.nll_samples=2"]


def _sweep_dir(cwd: Path) -> Path:
    (sweep,) = (cwd / "outputs" / "sweeps").iterdir()
    return sweep


def _runs(sweep: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "metrics.json").read_text()) for p in sorted(sweep.iterdir()) if (p / "metrics.json").is_file()}


def test_joblib_sweep_then_vae_compare_means(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run("-m", "hydra/launcher=joblib", "model.beta=1,2", "seed=1,2", f"dataset.root={mnist_root}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    runs = _runs(sweep)
    assert sorted(runs) == ["model.beta=1,seed=1", "model.beta=1,seed=2", "model.beta=2,seed=1", "model.beta=2,seed=2"]

    out = tmp_path / "table.json"
    compare = console_script("vae-compare", str(sweep), "--json", str(out), cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr
    rows = {row["model.beta"]: row for row in json.loads(out.read_text())}
    assert sorted(rows) == [1, 2] and all(row["n"] == 2 for row in rows.values())
    for beta in (1, 2):
        losses = [runs[f"model.beta={beta},seed={s}"]["val/loss"] for s in (1, 2)]
        assert rows[beta]["val/loss_mean"] == pytest.approx(statistics.mean(losses), rel=1e-9)
        assert rows[beta]["val/loss_std"] == pytest.approx(statistics.stdev(losses), rel=1e-9)


def test_submitit_local_sweep(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run("-m", "hydra/launcher=submitit_local", "model.beta=1,4", f"dataset.root={mnist_root}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _runs(_sweep_dir(tmp_path))
    assert sorted(runs) == ["model.beta=1", "model.beta=4"]
    assert all(r["train/steps"] == 3 for r in runs.values())


def test_optuna_searches_and_reports_the_best_trial(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run("-m", "+experiment=optuna_lr_latent", "hydra.sweeper.n_trials=2", f"dataset.root={mnist_root}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    runs = _runs(sweep)
    assert len(runs) == 2 and all(name.startswith("model.latent_dim=") and ",optim.lr=" in name for name in runs)
    results = (sweep / "optimization_results.yaml").read_text()
    best = min(r["val/loss"] for r in runs.values())
    assert f"best_value: {best}" in results  # vae-run returned val/loss, and Optuna minimised it


def test_a_killed_sweep_resumes_without_duplicates(mnist_root: Path, tmp_path: Path) -> None:
    args = ["-m", "model.beta=1,4", f"dataset.root={mnist_root}", "dataset.train_samples=6000", "dataset.val_samples=200", "eval.test_samples=200",
            "train.epochs=2", "train.checkpoint_every_steps=10", "eval.nll_samples=2"]
    exe = Path(sys.executable).with_name("vae-run")
    proc = subprocess.Popen([str(exe), *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not list((tmp_path / "outputs").glob("sweeps/*/model.beta=4/checkpoints/last.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the first job is done, the second one is mid-run
    proc.wait()
    sweep = _sweep_dir(tmp_path)
    assert sorted(_runs(sweep)) == ["model.beta=1"]

    resumed = vae_run(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finished earlier" in resumed.stdout.replace("\n", " ") and "resuming from" in resumed.stdout.replace("\n", " ")
    assert [p.name for p in (tmp_path / "outputs" / "sweeps").iterdir()] == [sweep.name]  # the same sweep, no new one
    runs = _runs(sweep)
    assert sorted(runs) == ["model.beta=1", "model.beta=4"]
    assert all(r["train/steps"] == 2 * math.ceil(r["data/train_images"] / 128) for r in runs.values())  # 2 whole epochs, once


def test_runs_launched_in_the_same_second_never_collide(mnist_root: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("vae-run")
    procs = [subprocess.Popen([str(exe), f"dataset.root={mnist_root}", *TINY], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 3 and all((r / "metrics.json").is_file() for r in runs)


def test_a_missing_plugin_names_the_extra_to_install() -> None:
    err = MissingConfigException(
        "In 'config': Could not find 'hydra/launcher/joblib'\n\nAvailable options in 'hydra/launcher':\n\tbasic\nConfig search path:\n\tprovider=hydra",
        missing_cfg_file="hydra/launcher/joblib",
    )
    assert describe_config_error(err) == (
        "hydra/launcher=joblib needs the hydra-joblib-launcher plugin: pip install 'vae-runner[sweep]' (make install does)."
    )
