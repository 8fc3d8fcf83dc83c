"""Inputs and faults that once ended in tracebacks, hangs or wrong data, through the real `vae-run` and `vae-eval`.

Each either works, or is one `error:` line with exit 2 that leaves no run directory,
no temporary file, and the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import build_fake_mnist, compose_config, vae_eval, vae_run, vae_run_background
from vae_runner.build import load_data
from vae_runner.data import Split, TensorBatches
from vae_runner.evaluate import fixed_examples
from vae_runner.train import train

TINY = ["dataset.train_samples=300", "dataset.val_samples=60", "eval.test_samples=60", "eval.nll_samples=2", "train.epochs=1"]


def _one_error_line(proc: subprocess.CompletedProcess, expected: str, code: int = 2) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def _no_temporary_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


def _wait_for(path: Path, proc: subprocess.Popen, text: str = "", timeout: float = 120) -> None:
    """Until `path` exists (and holds `text`), or the process ends."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and (not text or text in path.read_text(errors="replace")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.fixture(scope="module")
def finished(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    return run_dir


# ------------------------------------------------------------------ tiny validation sets, odd optimizers, divergence


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.batch_size=1", "train.max_steps=3"],
        ["dataset.val_samples=1", "eval.test_samples=1"],
        ["optim._target_=torch.optim.RMSprop"],  # no fused kernel: the flag is dropped
        ["optim._target_=torch.optim.SGD", "+optim.momentum=0.9"],  # an argument SGD takes
    ],
    ids=lambda o: " ".join(o),
)
def test_tiny_splits_and_other_optimizers_simply_work(mnist_root: Path, tmp_path: Path, overrides: list[str]) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/steps"] >= 1 and "test/nll" in metrics


def test_an_image_folder_of_a_dozen_images_trains(tmp_path: Path) -> None:
    for i in range(12):
        folder = tmp_path / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)).save(folder / f"{i}.png")
    proc = vae_run("dataset=image_folder", f"dataset.path={tmp_path / 'images'}", "dataset.image_size=16", "train.batch_size=4",
                   "eval.nll_samples=2", "train.epochs=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data/train_images"] + metrics["data/val_images"] + metrics["data/test_images"] == 12


def test_divergence_never_reaches_tensorboard_as_a_traceback(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, "optim.lr=1e4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    if proc.returncode == 1:
        assert "training diverged" in proc.stderr


# ------------------------------------------------------------------ full disks, two processes, refused resumes


def test_disk_full_names_the_path_and_space_and_keeps_the_previous_checkpoint(mnist_root: Path, tmp_path: Path) -> None:
    small = ["model.hidden_dims=[32]", "model.latent_dim=2", "train.checkpoint_every_steps=1", "train.max_steps=4"]
    probe = vae_run(f"dataset.root={mnist_root}", *TINY, *small, f"hydra.run.dir={tmp_path / 'probe'}", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    size = (tmp_path / "probe" / "checkpoints" / "last.pt").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for one checkpoint and the records, not for the second (it is written beside the first, then renamed).
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 + 96 * 1024}", "tmpfs", str(disk)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("needs root and tmpfs to fill a real disk (tests/test_robust_io.py simulates the error)")
    try:
        proc = vae_run(f"dataset.root={mnist_root}", *TINY, *small, f"hydra.run.dir={disk / 'run'}", cwd=tmp_path)
        line = _one_error_line(proc, f"could not write {disk / 'run' / 'checkpoints' / 'last.pt'}")
        assert "free" in line and "the previous file there, if any, is intact" in line
        _no_temporary_files(disk)
        assert torch.load(disk / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] >= 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_second_process_in_a_run_directory_is_refused_and_changes_nothing(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = vae_run_background(f"dataset.root={mnist_root}", "dataset.train_samples=2000", "train.epochs=50", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    try:
        _wait_for(run_dir / "vae-run.log", first, text="train /")  # the lock is held, the records are written
        config = (run_dir / ".hydra" / "config.yaml").read_bytes()
        for args in ([f"resume={run_dir}"], [f"dataset.root={mnist_root}", "dataset.train_samples=2000", "train.epochs=50", f"hydra.run.dir={run_dir}"]):
            second = vae_run(*args, cwd=tmp_path)
            _one_error_line(second, f"{run_dir} is in use by PID {first.pid}")
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config
        assert vae_eval(str(run_dir)).returncode == 2  # vae-eval waits its turn too
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_refused_resume_changes_nothing_and_a_finished_run_is_left_alone(finished: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in (finished / ".hydra").iterdir()} | {finished / "metrics.json": (finished / "metrics.json").read_bytes()}
    line = _one_error_line(vae_run(f"resume={finished}", "model.latent_dim=5", cwd=tmp_path), "cannot be resumed with model.latent_dim (20 -> 5)")
    assert str(finished) in line
    _one_error_line(vae_run(f"resume={finished}", cwd=tmp_path), f"{finished} is finished (it has metrics.json) and was left as it is")
    assert {p: p.read_bytes() for p in before} == before
    assert vae_eval(str(finished), "eval.nll_samples=1").returncode == 0  # still a valid run directory


@pytest.mark.parametrize("content", ['{"val/loss": 1.0, "test/nl', "[1, 2, 3]", '{"val/loss": "low"}'])
def test_a_corrupt_metrics_file_is_refused_before_the_work(finished: Path, tmp_path: Path, content: str) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    (run_dir / "metrics.json").write_text(content)
    proc = vae_eval(str(run_dir))
    _one_error_line(proc, f"{run_dir / 'metrics.json'} is not")
    assert (run_dir / "metrics.json").read_text() == content


def test_a_corrupt_metrics_file_in_a_resumed_sweep_is_one_sentence(mnist_root: Path, tmp_path: Path) -> None:
    args = ["-m", "model.beta=1,2", f"dataset.root={mnist_root}", *TINY, "train.max_steps=2"]
    assert vae_run(*args, cwd=tmp_path).returncode == 0
    (metrics,) = (tmp_path / "outputs" / "sweeps").glob("*/model.beta=1/metrics.json")
    metrics.write_text("[]")
    _one_error_line(vae_run(*args, "resume=true", cwd=tmp_path), f"{metrics} is not a vae-run metrics file")


# ------------------------------------------------------------------ corrupted and odd data


@pytest.mark.parametrize("damage", ["magic", "short-labels", "swapped"])
def test_a_wrong_idx_file_names_the_file(tmp_path: Path, damage: str) -> None:
    root = build_fake_mnist(tmp_path / "data", n_train=400, n_test=100)
    raw = root / "MNIST" / "raw"
    if damage == "magic":
        target = raw / "train-images-idx3-ubyte"
        target.write_bytes(b"\x00\x00\x09\x99" + target.read_bytes()[4:])
    elif damage == "short-labels":
        target = raw / "t10k-labels-idx1-ubyte"
        target.write_bytes(target.read_bytes()[:-10])
    else:
        target = raw / "train-labels-idx1-ubyte"
        target.write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())  # another split's file: the counts disagree
    proc = vae_run(f"dataset.root={root}", *TINY, cwd=tmp_path)
    _one_error_line(proc, target.name)
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


def test_an_odd_image_folder_trains_on_its_real_images_and_says_what_it_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "cls").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / "cls" / f"{i}.png")
    (folder / "cls" / "loop").symlink_to(folder)  # a symlink loop
    os.mkfifo(folder / "cls" / "pipe.png")  # would block any reader forever
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(folder / "cls" / "deep.png")  # 16-bit
    frames = [Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 200, 0))]
    frames[0].save(folder / "cls" / "anim.gif", save_all=True, append_images=frames[1:])
    proc = vae_run("dataset=image_folder", f"dataset.path={folder}", "dataset.image_size=8", "train.batch_size=2", "eval.nll_samples=2",
                   "train.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data/train_images"] + metrics["data/val_images"] + metrics["data/test_images"] == 12  # 10 PNGs, the 16-bit one, the GIF
    assert "not a regular file" in " ".join((proc.stdout + proc.stderr).split())


# ------------------------------------------------------------------ signals outside the training loop


def test_sigterm_during_the_final_evaluation_says_so_and_exits_143(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = vae_run_background(f"dataset.root={mnist_root}", *TINY, "eval.test_samples=null", "eval.nll_samples=5000", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _wait_for(run_dir / "vae-run.log", proc, text="epoch 1/1")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM during the final evaluation" in " ".join(stderr.split()) and "vae-eval" in stderr
    assert "Traceback" not in stderr and not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_a_second_sigterm_is_reported_as_sigterm_not_ctrl_c(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = vae_run_background(f"dataset.root={mnist_root}", "dataset.train_samples=2000", "train.epochs=50", "train.checkpoint_every_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped" in stderr and "SIGTERM" in stderr and "Traceback" not in stderr
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] >= 5


# ------------------------------------------------------------------ numbers that mean what they say


def test_validation_uses_the_target_beta_whatever_the_schedule(mnist_root: Path, tmp_path: Path) -> None:
    # The cyclical schedule is at 0 on the last step; validation must still weigh the KL by beta.
    cfg = compose_config([f"dataset.root={mnist_root}", *TINY, "model.kl_schedule=cyclical", "model.beta=2", "train.max_steps=8"])
    metrics = train(cfg, tmp_path / "run")
    assert metrics["val/kl"] > 0.1
    assert metrics["val/loss"] == pytest.approx(metrics["val/recon"] + 2 * metrics["val/kl"], rel=1e-5)


def test_splits_are_disjoint_recorded_and_the_binarised_test_set_is_the_same_for_every_seed(mnist_root: Path) -> None:
    loaded = {seed: load_data(compose_config([f"dataset.root={mnist_root}", "dataset.binarize=dynamic", f"seed={seed}"])) for seed in (0, 3)}
    assert torch.equal(loaded[0].test.images, loaded[3].test.images) and torch.equal(loaded[0].val.images, loaded[3].val.images)
    data = loaded[0]
    n_train_file = len(data.train) + len(data.val)
    assert len(data.val) == round(0.1 * n_train_file)  # dataset.val_fraction of the training file, never the test split


def test_fixed_examples_are_drawn_across_classes(mnist_root: Path) -> None:
    sorted_split = Split(torch.zeros(100, 1, 4, 4, dtype=torch.uint8), torch.arange(10).repeat_interleave(10))  # class-sorted, like a folder tree
    batches = TensorBatches(sorted_split, 16, torch.device("cpu"), shuffle=False)
    examples = fixed_examples(sorted_split, batches, "none", 0.0, seed=0)
    assert examples.x.shape[0] == 8 and len(set(examples.y.tolist())) == 8  # not the first 8 (all class 0)


def test_a_cvae_reports_conditional_likelihoods_by_name_and_scores_anomalies_without_their_label(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, "model=cvae", "dataset.holdout_classes=[0]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"test/nll_given_label", "test/elbo_given_label", "test/bits_per_dim_given_label", "test/anomaly_auroc"} <= set(metrics)
    assert "test/nll" not in metrics and 0.0 <= metrics["test/anomaly_auroc"] <= 1.0


def test_a_streaming_image_folder_gets_the_same_test_metrics(tmp_path: Path) -> None:
    for i in range(40):
        folder = tmp_path / "images" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 5 * i, np.uint8)).save(folder / f"{i}.png")
    common = ["dataset=image_folder", f"dataset.path={tmp_path / 'images'}", "dataset.image_size=8", "train.batch_size=8", "eval.nll_samples=2", "train.epochs=1", "dataset.num_workers=0"]
    metrics = {}
    for name, memory in (("memory", 4096), ("stream", 0)):
        proc = vae_run(*common, f"dataset.max_memory_mb={memory}", f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    # The sample-quality classifier trains on images in memory: a streamed folder skips test/fd, and says so.
    in_memory_only = {"test/seconds", "test/fd", "test/fd_samples", "test/classifier_accuracy"}
    assert {k for k in metrics["memory"] if k.startswith("test/")} - in_memory_only == {k for k in metrics["stream"] if k.startswith("test/")} - in_memory_only
    assert {"test/fd", "test/classifier_accuracy"} <= set(metrics["memory"])
    assert "test/fd skipped: the sample-quality classifier trains on images in memory" in (tmp_path / "stream" / "vae-run.log").read_text()
    assert metrics["stream"]["data/test_images"] == metrics["memory"]["data/test_images"] > 0


# ------------------------------------------------------------------ found by an adversarial pass


def test_a_refused_run_never_deletes_a_folder_it_did_not_create(mnist_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "tensorboard" / "old").mkdir(parents=True)
    (folder / "tensorboard" / "old" / "events").write_text("precious")
    proc = vae_run(f"dataset.root={mnist_root}", *TINY, "dataset.holdout_classes=[0,1,2,3,4,5,6,7,8,9]", f"hydra.run.dir={folder}", cwd=tmp_path)
    _one_error_line(proc, "leaves no images to train or validate on; hold out fewer classes")
    assert (folder / "tensorboard" / "old" / "events").read_text() == "precious"
    assert not (folder / ".hydra").exists()  # what Hydra wrote there is gone again


def test_of_two_runs_started_together_in_one_folder_the_records_are_the_winners(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    procs = {beta: vae_run_background(f"dataset.root={mnist_root}", *TINY, f"model.beta={beta}", f"hydra.run.dir={run_dir}", cwd=tmp_path) for beta in (1, 4)}
    codes = {beta: p.wait(timeout=120) for beta, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], codes
    (winner,) = [beta for beta, code in codes.items() if code == 0]
    assert f"beta: {float(winner)}" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["val/loss"] > 0


def test_a_resume_refused_while_loading_puts_the_records_back(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = vae_run_background(f"dataset.root={mnist_root}", "dataset.train_samples=2000", "train.epochs=50", "train.checkpoint_every_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    bad = build_fake_mnist(tmp_path / "bad", n_train=400, n_test=100) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x99" + bad.read_bytes()[4:])
    _one_error_line(vae_run(f"resume={run_dir}", f"dataset.root={tmp_path / 'bad'}", cwd=tmp_path), "train-images-idx3-ubyte")
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == records
    assert vae_run(f"resume={run_dir}", "train.epochs=1", cwd=tmp_path).returncode == 0  # still resumable as it was


def test_vae_eval_changes_only_how_a_run_is_evaluated(finished: Path) -> None:
    before = (finished / "metrics.json").read_bytes()
    _one_error_line(vae_eval(str(finished), "model.beta=4"), "vae-eval cannot apply model.beta=4: it may change only eval.*")
    _one_error_line(vae_eval(str(finished), "dataset.holdout_classes=[0]"), "vae-eval cannot apply dataset.holdout_classes=[0]")
    assert (finished / "metrics.json").read_bytes() == before
    assert vae_eval(str(finished), "+eval.nll_samples=3").returncode == 0  # the same `+` syntax as vae-run


@pytest.mark.parametrize(("swept", "expected"), [("model.latent_dim=5,abc", "model.latent_dim=abc"), ("model=vae,foo", "model=foo is not a choice"), ("model.beta=1,-1", "model.beta=-1.0 is negative")])
def test_every_value_of_a_sweep_is_checked_before_any_job_runs(mnist_root: Path, tmp_path: Path, swept: str, expected: str) -> None:
    _one_error_line(vae_run("-m", f"dataset.root={mnist_root}", *TINY, swept, cwd=tmp_path), expected)
    assert not (tmp_path / "outputs").exists()


def test_sighup_checkpoints_and_exits_129(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = vae_run_background(f"dataset.root={mnist_root}", "dataset.train_samples=2000", "train.epochs=50", "train.checkpoint_every_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 129, stderr
    step = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"stopped by SIGHUP at step {step}" in " ".join(stderr.split())


def test_a_run_named_by_its_overrides_resumes(mnist_root: Path, tmp_path: Path) -> None:
    assert vae_run(f"dataset.root={mnist_root}", *TINY, "model.beta=2", cwd=tmp_path).returncode == 0
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "model.beta=2" in run_dir.name  # `=` and `,` in the folder name: passed on quoted
    resumed = vae_run(f"resume={run_dir}", "train.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["train/epochs"] == 2


def test_a_finished_run_is_not_shortened_nor_given_new_optimizer_arguments(finished: Path, tmp_path: Path) -> None:
    records = {p: p.read_bytes() for p in (finished / ".hydra").iterdir()}
    _one_error_line(vae_run(f"resume={finished}", "train.max_steps=1", cwd=tmp_path), "is finished (it has metrics.json) and was left as it is")
    _one_error_line(vae_run(f"resume={finished}", "train.epochs=3", "+optim.amsgrad=true", cwd=tmp_path), "cannot be resumed with optim.amsgrad (None -> True)")
    assert {p: p.read_bytes() for p in records} == records


def test_a_sweep_into_a_folder_that_holds_one_is_refused(mnist_root: Path, tmp_path: Path) -> None:
    args = ["-m", f"dataset.root={mnist_root}", *TINY, "train.max_steps=2", "model.beta=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert vae_run(*args, cwd=tmp_path).returncode == 0
    records = (tmp_path / "sweep" / "model.beta=1" / ".hydra" / "config.yaml").read_bytes()
    _one_error_line(vae_run(*args, "optim.lr=0.05", cwd=tmp_path), f"hydra.sweep.dir={tmp_path / 'sweep'} already holds 2 run(s); add resume=true")
    assert (tmp_path / "sweep" / "model.beta=1" / ".hydra" / "config.yaml").read_bytes() == records
