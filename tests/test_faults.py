"""Faults: kills, signals, NaNs, unwritable outputs and untrusted checkpoints lose nothing and explain themselves."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config, read_scalars, vae_run, vae_run_background
from vae_runner.atomic import OutputError, atomic_write
from vae_runner.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.train import StopSignals, train

RUN = ["train.epochs=2", "dataset.train_samples=6000", "dataset.val_samples=500", "eval.test_samples=500", "train.checkpoint_every_steps=10", "train.log_every_steps=1"]


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            try:
                step = torch.load(path, weights_only=True)["step"]
            except Exception:  # being replaced right now
                step = 0
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {min_step} (process exit code {proc.poll()})")


@pytest.fixture(scope="module")
def uninterrupted(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    proc = vae_run(f"dataset.root={mnist_root}", *RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads((run_dir / "metrics.json").read_text())


def test_sigkill_then_resume_equals_an_uninterrupted_run(mnist_root: Path, tmp_path: Path, uninterrupted: dict) -> None:
    run_dir = tmp_path / "run"
    args = (f"dataset.root={mnist_root}", *RUN, f"hydra.run.dir={run_dir}")
    proc = vae_run_background(*args, cwd=tmp_path)
    killed_after = _wait_for_checkpoint(run_dir / "checkpoints" / "last.pt", proc, min_step=20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "metrics.json").exists()

    resumed = vae_run(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run_dir / 'checkpoints' / 'last.pt'}" in " ".join(resumed.stdout.split())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Exactly equal on the CPU: same data order, RNG states, optimizer state and deterministic kernels.
    for key in ("val/loss", "val/recon", "val/kl"):
        assert metrics[key] == uninterrupted[key], (key, killed_after)
    total = 2 * math.ceil(metrics["data/train_images"] / 128)  # 2 epochs of the training images this data holds
    assert metrics["train/steps"] == uninterrupted["train/steps"] == total
    # The curves continue at the right step, each step once.
    steps = [s for s, _ in read_scalars(run_dir)["train/loss"]]
    assert steps == list(range(1, total + 1))


def test_sigterm_sigint_and_preemption_checkpoint_and_exit_143_130_140(mnist_root: Path, tmp_path: Path) -> None:
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR2, 140)):
        run_dir = tmp_path / sig.name
        proc = vae_run_background(f"dataset.root={mnist_root}", *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        _wait_for_checkpoint(run_dir / "checkpoints" / "last.pt", proc, min_step=10)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        assert f"stopped by {sig.name} at step {saved['step']}" in stderr
        assert f"vae-run resume={run_dir}" in stderr


def test_kill_during_checkpoint_write_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    model = VAE(in_channels=1, image_size=28)
    save_checkpoint(path, {"step": 1, "model": model.state_dict()}, model)
    code = (
        "import os, signal, sys; from pathlib import Path; from vae_runner.atomic import atomic_write\n"
        "def half(f):\n    f.write(b'x' * 100000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write(Path({str(path)!r}), half)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".last.pt.tmp").stat().st_size == 100000  # the half-written file is the temporary one
    assert torch.load(path, weights_only=True)["step"] == 1


def test_disk_full_names_the_path_and_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("previous")

    def full(f: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=f"could not write {path} \\(No space left on device\\)"):
        atomic_write(path, full)
    assert path.read_text() == "previous" and not (tmp_path / ".metrics.json.tmp").exists()


def test_a_non_finite_model_never_overwrites_a_good_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    model = VAE(in_channels=1, image_size=28)
    assert save_checkpoint(path, {"step": 5}, model)
    with torch.no_grad():
        model.posterior.head.weight[0, 0] = float("nan")
    assert not save_checkpoint(path, {"step": 6}, model)
    assert torch.load(path, weights_only=True)["step"] == 5


def test_nan_steps_are_skipped_then_the_run_stops_with_remedies(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(
        f"dataset.root={mnist_root}", "optim.lr=1e6", "train.max_skipped_steps=3", "train.checkpoint_every_steps=1",
        "dataset.train_samples=1000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert "training diverged: 3 steps in a row" in message and "last finite loss was" in message
    assert "optim.lr" in message and "train.grad_clip" in message and "Traceback" not in message
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert read_scalars(tmp_path / "run")["train/skipped_steps"][-1][1] == 3


def test_same_seed_gives_identical_metrics(mnist_root: Path, tmp_path: Path) -> None:
    cfg = compose_config([f"dataset.root={mnist_root}", "dataset.train_samples=1500", "dataset.val_samples=300", "eval.test_samples=300", "train.epochs=1"])
    first, second = (train(cfg, tmp_path / name) for name in ("a", "b"))
    for key in ("val/loss", "val/recon", "val/kl", "train/steps"):
        assert first[key] == second[key]
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert "git_commit" in env or not (Path(__file__).parents[1] / ".git").exists()


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("evil", "asks to run code while loading and was refused"),
        ("truncated", "is not a readable checkpoint"),
        ("text", "is not a readable checkpoint"),
        ("other-shape", "holds a model of a different shape"),
    ],
)
def test_bad_checkpoints_are_refused_with_one_sentence(mnist_root: Path, tmp_path: Path, content: str, expected: str) -> None:
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    if content == "evil":
        ckpt.write_bytes(pickle.dumps(_Evil()))
    elif content == "text":
        ckpt.write_text("hello")
    else:
        model = VAE(in_channels=1, image_size=28, latent_dim=3 if content == "other-shape" else 20)
        torch.save({"model": model.state_dict(), "optimizer": {}, "scaler": {}, "step": 1, "epoch": 1, "batches_done": 1, "config": {}}, ckpt)
        if content == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[:5000])
    proc = vae_run(f"dataset.root={mnist_root}", "dataset.train_samples=500", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and str(ckpt) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the crafted pickle's protocol, not ours
def test_load_checkpoint_refuses_code_in_process(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_preemption_signal_is_handed_on_to_the_previous_handler_after_the_checkpoint() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))  # stands in for submitit's requeue
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.signum == signal.SIGUSR2 and seen == []  # the loop checkpoints first ...
            stop.forward()
        assert seen == [signal.SIGUSR2]  # ... then submitit requeues the job
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_weights_from_before_the_composable_model_are_refused_in_one_sentence(tmp_path: Path) -> None:
    old = {"encoder.1.0.weight": torch.zeros(512, 784), "decoder_in.0.weight": torch.zeros(512, 20), "to_posterior.weight": torch.zeros(40, 512)}
    with pytest.raises(UserError, match="saved by a vae-runner from before the composable model"):
        load_model_state(VAE(in_channels=1, image_size=28), old, tmp_path / "last.pt")
