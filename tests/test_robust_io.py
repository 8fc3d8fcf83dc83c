"""Robust output: a full disk during a checkpoint, a second process in a run directory, NaN and Inf sent to TensorBoard."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import REPO, read_images, read_scalars
from vae_runner.atomic import OutputError, atomic_write, human_bytes
from vae_runner.checkpoint import save_checkpoint
from vae_runner.errors import UserError
from vae_runner.lock import RunLock, check_unlocked
from vae_runner.tracking import Tracker

FREE = r", with [0-9.]+ (B|KiB|MiB|GiB|TiB) free on that filesystem; "
ADVICE = "free some space or choose another output folder (hydra.run.dir=...); the previous file there, if any, is intact."


# A full disk: the temporary file goes, the previous file stays, and the user reads one sentence.


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 512, 12 * 1024, 1536 * 1024, 3 * 1024**3)] == ["0 B", "512 B", "12.0 KiB", "1.5 MiB", "3.0 GiB"]


def test_enospc_names_path_reason_free_space_and_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")

    def full(f: BinaryIO) -> None:
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as caught:
        atomic_write(path, full)
    message = str(caught.value)
    assert re.fullmatch(re.escape(f"could not write {path} (No space left on device)") + FREE + re.escape(ADVICE), message)
    free = shutil.disk_usage(tmp_path).free
    assert human_bytes(free).split()[1] in message  # the unit of this filesystem's free space
    assert path.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "torch_message, reason",
    [
        ("PytorchStreamWriter failed writing file data/0: file write failed", "the write failed: PytorchStreamWriter failed writing file data/0: file write failed"),
        ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", "the write failed: unexpected pos 704 vs 598"),
    ],
)
def test_torch_runtime_error_mid_write_is_an_output_error(tmp_path: Path, torch_message: str, reason: str) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")

    def torch_save_on_a_full_disk(f: BinaryIO) -> None:
        f.write(b"x" * 100_000)
        f.flush()
        raise RuntimeError(torch_message)

    with pytest.raises(OutputError, match=re.escape(f"could not write {path} ({reason})") + FREE):
        atomic_write(path, torch_save_on_a_full_disk)
    assert path.read_bytes() == b"previous" and not (tmp_path / ".last.pt.tmp").exists()


def test_runtime_error_wrapping_an_enospc_gives_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"

    def wrapped(f: BinaryIO) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(OutputError, match=re.escape(f"could not write {path} (No space left on device)")):
        atomic_write(path, wrapped)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [ValueError("not a write failure"), RuntimeError("CUDA error: device-side assert"), KeyboardInterrupt()])
def test_other_errors_propagate_after_the_temporary_file_is_removed(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")

    def fails(f: BinaryIO) -> None:
        f.write(b"x" * 1000)
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, fails)
    assert path.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem (tmpfs), mounted for the test and unmounted after; skips where mounting is not allowed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount are not installed")
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_real_torch_save_onto_a_full_tmpfs(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "last.pt"
    model = nn.Linear(2, 2)
    assert save_checkpoint(path, {"step": 1, "model": model.state_dict()}, model)
    # 100,000 float32 = 400 KB onto a 64 KiB filesystem: torch.save raises RuntimeError, not OSError.
    with pytest.raises(OutputError) as caught:
        save_checkpoint(path, {"step": 2, "model": model.state_dict(), "big": torch.zeros(100_000)}, model)
    message = str(caught.value)
    assert re.fullmatch(
        re.escape(f"could not write {path} (") + r"(No space left on device|the write failed: .+)\)" + FREE + re.escape(ADVICE), message
    ), message
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["last.pt"]  # no .last.pt.tmp left on the full disk
    assert torch.load(path, weights_only=True)["step"] == 1


# A lock on the run directory: one process at a time, released when its holder dies.

HOLDER = """
import sys, time
from pathlib import Path
from vae_runner.lock import RunLock
with RunLock(Path(sys.argv[1]), "the run"):
    if sys.argv[2] == "drop-pid":
        Path(sys.argv[1]).with_suffix(".pid").unlink()
    print("locked", flush=True)
    time.sleep(120)
"""


Holder = Callable[..., subprocess.Popen]


@pytest.fixture
def holder() -> Iterator[Holder]:
    """Start a process that takes the lock and sleeps; it is killed after the test."""
    procs: list[subprocess.Popen] = []

    def start(lock_path: Path, mode: str = "keep-pid") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path), mode], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line == "locked\n", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def in_use(pid: int | None) -> str:
    holder = f"PID {pid}" if pid is not None else "another process"
    return f"runs/a is in use by {holder} (another vae-run or vae-eval); wait for it to finish, or stop it, then run again."


def test_a_second_process_is_told_the_first_ones_pid(tmp_path: Path, holder: Holder) -> None:
    lock_path = tmp_path / "run" / ".lock"
    first = holder(lock_path)
    with pytest.raises(UserError) as caught:
        with RunLock(lock_path, "runs/a"):
            pass
    assert str(caught.value) == in_use(first.pid)
    with pytest.raises(UserError) as checked:
        check_unlocked(lock_path, "runs/a")
    assert str(checked.value) == in_use(first.pid)


def test_without_the_pid_file_the_holder_is_another_process(tmp_path: Path, holder: Holder) -> None:
    lock_path = tmp_path / ".lock"
    holder(lock_path, "drop-pid")
    with pytest.raises(UserError) as caught:
        RunLock(lock_path, "runs/a").__enter__()
    assert str(caught.value) == in_use(None)


def test_sigkill_releases_the_lock_so_a_resume_can_take_it(tmp_path: Path, holder: Holder) -> None:
    lock_path = tmp_path / ".lock"
    proc = holder(lock_path)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert lock_path.with_suffix(".pid").read_text() == f"{proc.pid}\n"  # stale, left by the killed holder
    check_unlocked(lock_path, "runs/a")
    with RunLock(lock_path, "runs/a"):
        assert lock_path.with_suffix(".pid").read_text() == f"{os.getpid()}\n"
        check_unlocked(lock_path, "runs/a")  # held by this very process: not another one
    assert not lock_path.with_suffix(".pid").exists()  # released: the PID file names no one


def test_check_unlocked_creates_nothing(tmp_path: Path) -> None:
    check_unlocked(tmp_path / "missing" / ".lock", "runs/a")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "run").mkdir()
    check_unlocked(tmp_path / "run" / ".lock", "runs/a")
    assert list((tmp_path / "run").iterdir()) == []


def test_enter_creates_the_run_folder_and_the_lock_is_reusable(tmp_path: Path) -> None:
    lock_path = tmp_path / "new" / "run" / ".lock"
    for _ in range(2):
        with RunLock(lock_path, "runs/a"):
            assert lock_path.is_file()


# Non-finite numbers never reach TensorBoard.


def test_non_finite_scalars_are_skipped_with_one_warning_per_tag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = Tracker(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vae_runner.tracking"):
        tracker.scalars("train", {"loss": 1.5, "kl": float("nan")}, step=1)
        tracker.scalars("train", {"loss": torch.tensor(float("inf")), "kl": torch.tensor(0.25)}, step=2)
        tracker.scalars("train", {"loss": float("-inf"), "kl": float("nan")}, step=3)
    tracker.close()
    assert read_scalars(tmp_path) == {"train/loss": [(1, 1.5)], "train/kl": [(2, 0.25)]}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2  # train/kl at step 1, train/loss at step 2; step 3 is silent
    assert warned[0].startswith("train/kl is nan at step 1") and warned[1].startswith("train/loss is inf at step 2")


def test_histograms_keep_the_finite_values_and_skip_all_non_finite(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(tmp_path)
    tracker.histogram("val/posterior_mean", torch.tensor([1.0, float("nan"), 2.0, float("inf"), 3.0]), step=1)
    tracker.histogram("val/posterior_std", torch.tensor([float("nan"), float("-inf")]), step=1)
    tracker.histogram("test/anomaly_score/held_out", torch.zeros(0), step=1)
    tracker.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    assert acc.Tags()["histograms"] == ["val/posterior_mean"]
    (event,) = acc.Histograms("val/posterior_mean")
    value = event.histogram_value
    assert (value.num, value.min, value.max, value.sum) == (3, 1.0, 3.0, 6.0)


def test_non_finite_pixels_are_written_black_or_white(tmp_path: Path) -> None:
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.5]).view(1, 1, 4).expand(3, 2, 4)
    tracker = Tracker(tmp_path)
    tracker.image("samples/prior", grid, step=7)
    tracker.close()
    assert read_images(tmp_path) == {"samples/prior": [(7, 2, 4)]}
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    png = acc.Images("samples/prior")[0].encoded_image_string
    row = np.asarray(Image.open(io.BytesIO(png)).convert("L"))[0].tolist()
    assert row[:3] == [0, 255, 0] and row[3] in (127, 128)  # NaN, +Inf, -Inf, then 0.5
