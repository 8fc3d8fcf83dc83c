"""Around a run: progress on a terminal and plain lines elsewhere, the log's closing table, sweep job numbers, --help."""

from __future__ import annotations

import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import vae_run
from vae_runner import progress
from vae_runner.progress import Meter, duration

TINY = ["dataset.train_samples=600", "dataset.val_samples=100", "eval.test_samples=100", "eval.nll_samples=2", "train.epochs=2"]
BAR_CONTROL = "\x1b[?25l"  # rich hides the cursor while a live bar is drawn


def test_plain_lines_say_where_a_phase_is_how_fast_and_how_long_is_left(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    progress.set_job("job 2/5")
    try:
        with caplog.at_level(logging.INFO, logger="vae_runner.progress"), Meter("epoch 1/2", total=4) as meter:
            meter.note("loss 1.50")
            meter.advance(1, 128)
            meter.advance(1, 128)
    finally:
        progress.set_job("")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and meter.bar is None
    assert lines[1].startswith("job 2/5  epoch 1/2: 2/4 steps (50%), ")
    assert " img/s, loss 1.50, " in lines[1] and lines[1].endswith(" left")


def test_a_phase_shorter_than_the_cadence_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vae_runner.progress"), Meter("test NLL, K=2, 10 images", total=10, unit="images") as meter:
        meter.advance(10, 10)
    assert caplog.records == [] and meter.done == 10


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (130, "2m10s"), (3600 + 5 * 60 + 9, "1h05m"), (-3, "0s")])
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def _run_on_a_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """`vae-run ARGS` with a pseudo-terminal as stdout and stderr, as a person at a terminal runs it."""
    exe = Path(sys.executable).with_name("vae-run")
    main, sub = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([str(exe), *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub, env=env)
    os.close(sub)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([main], [], [], 1.0)[0]:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_bars_and_a_pipe_gets_none(mnist_root: Path, tmp_path: Path) -> None:
    code, shown = _run_on_a_terminal([f"dataset.root={mnist_root}", *TINY, f"hydra.run.dir={tmp_path / 'tty'}"], cwd=tmp_path)
    assert code == 0, shown[-3000:]
    assert BAR_CONTROL in shown and "ETA" in shown and "img/s" in shown
    assert "epoch 2/2" in shown and "test NLL, K=2, 100 images" in shown
    assert "Traceback" not in shown

    piped = vae_run(f"dataset.root={mnist_root}", *TINY, f"hydra.run.dir={tmp_path / 'pipe'}", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert BAR_CONTROL not in piped.stdout + piped.stderr and "ETA" not in piped.stdout + piped.stderr
    assert "epoch 2/2  step" in piped.stdout + piped.stderr  # the epoch's own line


def test_the_log_file_ends_with_the_final_metrics_table(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "vae-run.log").read_text().splitlines()
    assert log[-2:] == [f"run directory: {tmp_path / 'run'}", f"tensorboard:   tensorboard --logdir {tmp_path}"]
    table = "\n".join(log[-40:])
    assert "vae-run: final metrics" in table and "│ val/loss" in table
    nll_row = next(line for line in log if line.startswith("│ test/nll "))
    assert " ± " in nll_row  # the standard error beside the estimate
    assert not any(line.startswith("│ test/nll_se") for line in log)


def test_a_sweep_says_which_job_of_how_many(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run("-m", f"dataset.root={mnist_root}", *TINY, "train.epochs=1", "model.beta=1,2", "seed=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "job 1/2: model.beta=1" in out and "job 2/2: model.beta=2" in out


def test_help_shows_groups_commands_and_no_internal_keys(tmp_path: Path) -> None:
    proc = vae_run("model=cvae", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "model           beta_tcvae, beta_vae, beta_vae_b, cvae, iwae, vae, vae_iaf, vae_planar, vamp   (now: cvae)" in text
    assert "dataset         cifar10, dsprites, fashion_mnist, image_folder, mnist   (now: mnist)" in text
    assert "hydra/launcher  joblib, slurm, stacked, submitit_local, submitit_slurm" in text
    for command in ("vae-run -m model=beta_vae", "vae-run resume=", "vae-eval ", "vae-compare ", "tensorboard --logdir"):
        assert command in text
    assert "conditional=true" in text and "nll_images=auto" in text
    assert "_target_" not in text and "_partial_" not in text
    assert "README: " in text
    assert max(len(line) for line in text.splitlines()) <= 120
    assert not (tmp_path / "outputs").exists()


def test_help_says_when_the_overrides_do_not_compose(tmp_path: Path) -> None:
    proc = vae_run("model=foo", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(now: vae)" in proc.stdout
    assert proc.stdout.rstrip().endswith("(the defaults are shown: model=foo did not compose: model=foo is not a choice for model; use one of: beta_tcvae, beta_vae, beta_vae_b, cvae, iwae, vae, vae_iaf, vae_planar, vamp.)")
