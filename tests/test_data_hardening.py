"""Data hardening: fixed train/val/test partitions, class-balanced caps, checked idx files, odd folders, memory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SHARED_DATA, build_fake_mnist
from vae_runner.data import SPLIT_SEED, Split, load_dataset, stratified_subset
from vae_runner.data.folders import list_images
from vae_runner.data.mnist_mirror import write_idx
from vae_runner.errors import DatasetUnavailable, UserError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _numbered_mnist(root: Path, n_train: int = 1000, n_test: int = 200) -> Path:
    """An MNIST-format set whose image i carries its number in its first two pixels, class i % 10."""
    raw = root / "MNIST" / "raw"
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 50_000)):
        ids = np.arange(offset, offset + n)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (ids % 10).astype(np.uint8))
    return root


def _ids(split: Split) -> set[int]:
    return set((split.images[:, 0, 0, 0].long() * 256 + split.images[:, 0, 0, 1].long()).tolist())


def _save(path: Path, value: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("val_fraction", [0.1, 0.25])
def test_validation_is_held_out_of_train_and_test_is_t10k(tmp_path: Path, val_fraction: float) -> None:
    data = load_dataset("mnist", root=str(_numbered_mnist(tmp_path)), val_fraction=val_fraction)
    train, val, test = _ids(data.train), _ids(data.val), _ids(data.test)
    assert len(val) == len(data.val) == round(1000 * val_fraction) and len(train) == 1000 - len(val)
    assert train.isdisjoint(val) and train | val == set(range(1000))
    assert test == set(range(50_000, 50_200))


def test_a_flat_folder_holds_out_test_then_validation_disjointly(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    for i in range(40):
        _save(folder / f"{i:02d}.png", i * 5)
    x = load_dataset("image_folder", path=str(folder), image_size=8, num_workers=0)
    assert (len(x.train), len(x.val), len(x.test)) == (32, 4, 4)  # test round(40 * 0.1), validation round(36 * 0.1)
    assert len({int(v) for v in torch.cat([x.train.images, x.val.images, x.test.images])[:, 0, 0, 0]}) == 40  # disjoint


def test_stratified_subset_balances_classes_and_keeps_order() -> None:
    labels = torch.arange(100) // 10  # sorted by class, as a folder tree is: the first 20 would be classes 0 and 1
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels)
    sub = stratified_subset(split, 20, SPLIT_SEED)
    assert torch.bincount(sub.labels).tolist() == [2] * 10
    kept = sub.images.flatten().tolist()
    assert kept == sorted(kept) and len(set(kept)) == 20
    assert sorted(torch.bincount(stratified_subset(split, 25, SPLIT_SEED).labels).tolist()) == [2] * 5 + [3] * 5
    uneven = Split(torch.zeros(101, 1, 1, 1, dtype=torch.uint8), torch.tensor([0] + [1] * 50 + [2] * 50))
    assert torch.bincount(stratified_subset(uneven, 21, SPLIT_SEED).labels).tolist() == [1, 10, 10]
    unlabelled = stratified_subset(Split(split.images, None), 7, SPLIT_SEED)
    assert len(unlabelled) == 7 and unlabelled.images.flatten().tolist() == sorted(unlabelled.images.flatten().tolist())
    assert stratified_subset(split, None, SPLIT_SEED) is split


def test_capped_folder_tree_draws_every_class(tmp_path: Path) -> None:
    for k in range(4):
        for i in range(10):
            _save(tmp_path / "train" / f"class{k}" / f"{i}.png", 20 * k)
        _save(tmp_path / "test" / f"class{k}" / "0.png", 20 * k)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0, train_samples=8, test_samples=2)
    assert torch.bincount(data.train.labels).tolist() == [2, 2, 2, 2] and len(data.test) == 2
    streamed = load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0, train_samples=8, max_memory_mb=0)
    assert sorted(streamed.train.labels) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_too_small_folders_refuse_with_the_counts(tmp_path: Path) -> None:
    for i in range(2):
        _save(tmp_path / "two" / f"{i}.png", 9)
    with pytest.raises(DatasetUnavailable, match=r"holds 2 image\(s\): too few to hold out a validation image and a test image"):
        load_dataset("image_folder", path=str(tmp_path / "two"), num_workers=0)
    _save(tmp_path / "two" / "2.png", 9)
    data = load_dataset("image_folder", path=str(tmp_path / "two"), image_size=8, num_workers=0)
    assert (len(data.train), len(data.val), len(data.test)) == (1, 1, 1)
    _save(tmp_path / "tree" / "train" / "0.png", 9)
    _save(tmp_path / "tree" / "test" / "0.png", 9)
    with pytest.raises(DatasetUnavailable, match=r"holds 1 image\(s\) in train/, 1 image\(s\) in test/"):
        load_dataset("image_folder", path=str(tmp_path / "tree"), num_workers=0)


def test_train_val_test_subfolders_are_used_as_given_and_labels_follow_train(tmp_path: Path) -> None:
    for split, classes in (("train", "abc"), ("val", "ab"), ("test", "ac")):
        for c in classes:
            _save(tmp_path / split / c / "0.png", 9)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0)
    assert data.val.labels.tolist() == [0, 1] and data.test.labels.tolist() == [0, 2]  # c is class 2 of train/
    _save(tmp_path / "test" / "d" / "0.png", 9)
    with pytest.raises(UserError, match=r"test/ has class folder\(s\) d that train/ lacks"):
        load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0)


# ---------------------------------------------------------------- idx files


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 3000/500-image fake MNIST of conftest, whatever ../shared holds."""
    return build_fake_mnist(tmp_path_factory.mktemp("fake"))


def _flip_magic(raw: Path) -> None:
    data = bytearray((raw / TRAIN_IMAGES).read_bytes())
    data[3] = 0x02
    (raw / TRAIN_IMAGES).write_bytes(bytes(data))


def _truncate(raw: Path) -> None:
    (raw / TRAIN_IMAGES).write_bytes((raw / TRAIN_IMAGES).read_bytes()[:-100])


def _short_labels(raw: Path) -> None:
    write_idx(raw / TRAIN_LABELS, np.zeros(2999, np.uint8))


def _labels_as_images(raw: Path) -> None:
    shutil.copy(raw / TRAIN_LABELS, raw / TRAIN_IMAGES)  # another file of the set in the wrong place


def _label_eleven(raw: Path) -> None:
    data = bytearray((raw / TRAIN_LABELS).read_bytes())
    data[-1] = 11
    (raw / TRAIN_LABELS).write_bytes(bytes(data))


def _trailing_bytes(raw: Path) -> None:
    (raw / TRAIN_IMAGES).write_bytes((raw / TRAIN_IMAGES).read_bytes() + b"\0" * 16)


def _empty(raw: Path) -> None:
    (raw / TRAIN_LABELS).write_bytes(b"")


def _header_only(raw: Path) -> None:
    (raw / TRAIN_IMAGES).write_bytes(bytes([0, 0, 8, 3, 0, 0]))


CORRUPTIONS = {
    "empty": (_empty, TRAIN_LABELS, "is not an MNIST-format labels file (it is shorter than 4 bytes)"),
    "cut in the header": (_header_only, TRAIN_IMAGES, "is 6 bytes, too short for its own header"),
    "bad magic": (_flip_magic, TRAIN_IMAGES, "magic number is 0x00000802, not 0x00000803"),
    "truncated": (_truncate, TRAIN_IMAGES, "is 2,351,916 bytes but its header promises 2,352,016 (3000x28x28 images), so it is truncated"),
    "short labels": (_short_labels, TRAIN_LABELS, "holds 3000 images but"),
    "labels file as images": (_labels_as_images, TRAIN_IMAGES, "is not an MNIST-format images file"),
    "label 11": (_label_eleven, TRAIN_LABELS, "holds label 11, but MNIST labels are 0 to 9"),
    "trailing bytes": (_trailing_bytes, TRAIN_IMAGES, "so it is longer than its header says"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_idx_file_is_named(fake_root: Path, tmp_path: Path, case: str) -> None:
    damage, name, why = CORRUPTIONS[case]
    root = tmp_path / "copy"
    shutil.copytree(fake_root, root)
    damage(root / "MNIST" / "raw")
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("mnist", root=str(root))
    message = str(err.value)
    assert str(root / "MNIST" / "raw" / name) in message and why in message
    assert "fetched again" in message and "original MNIST file" in message and "\n" not in message


def test_the_fake_set_loads_without_an_md5(fake_root: Path) -> None:
    data = load_dataset("mnist", root=str(fake_root))
    assert (len(data.train), len(data.val), len(data.test)) == (2700, 300, 500)


needs_real_mnist = pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw" / TRAIN_IMAGES).is_file(), reason="no real MNIST in ../shared/data")


@needs_real_mnist
def test_real_mnist_with_one_flipped_byte_fails_the_md5(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(SHARED_DATA / "MNIST" / "raw", raw)
    data = bytearray((raw / TRAIN_IMAGES).read_bytes())
    data[20_000_000] ^= 0x01
    (raw / TRAIN_IMAGES).write_bytes(bytes(data))
    with pytest.raises(DatasetUnavailable, match=f"{raw / TRAIN_IMAGES} has md5 [0-9a-f]{{32}}, not the canonical MNIST 6bbc9ace898e44ae57da46a324031adb"):
        load_dataset("mnist", root=str(tmp_path))


@needs_real_mnist
def test_fashion_mnist_files_in_place_of_mnist_fail_the_md5(tmp_path: Path) -> None:
    if not (SHARED_DATA / "FashionMNIST" / "raw" / TRAIN_IMAGES).is_file():
        pytest.skip("no Fashion-MNIST in ../shared/data")
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(SHARED_DATA / "MNIST" / "raw", raw)
    shutil.copy(SHARED_DATA / "FashionMNIST" / "raw" / TRAIN_LABELS, raw / TRAIN_LABELS)
    with pytest.raises(DatasetUnavailable, match=f"{raw / TRAIN_LABELS} has md5 9018921c3c673c538a1fc5bad174d6f9"):
        load_dataset("mnist", root=str(tmp_path))


# ---------------------------------------------------------------- odd folders


def test_a_symlink_loop_neither_multiplies_nor_mislabels(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "cat" / f"{i}.png", 10)
    for i in range(2):
        _save(tmp_path / "dog" / f"{i}.png", 200)
    (tmp_path / "cat" / "loop").symlink_to(tmp_path)  # back to the root
    (tmp_path / "dog" / "cats").symlink_to(tmp_path / "cat")  # into another class
    (tmp_path / "self").symlink_to(tmp_path)
    listing = list_images(tmp_path)
    assert listing.classes == ["cat", "dog"] and listing.labels == [0, 0, 0, 1, 1]
    assert listing.repeated_dirs == 3
    flat = tmp_path / "flat"
    for i in range(4):
        _save(flat / f"{i}.png", 10)
    (flat / "again").symlink_to(flat)
    assert len(list_images(flat).files) == 4 and list_images(flat).labels is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_png_is_skipped_without_hanging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(20):
        _save(tmp_path / f"{i:02d}.png", 10 * i)
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")

    def hung(*_: object) -> None:
        raise TimeoutError("reading the folder blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with caplog.at_level(logging.WARNING):
            data = load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(data.train) + len(data.val) + len(data.test) == 20
    expected = "skipped 4 of 24 files: 1 broken link, 1 not a regular file, 1 not an image file type, 1 unreadable"
    assert f"{tmp_path}: {expected}" in caplog.text


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / f"{i}.png")  # mode I;16
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, channels=1, num_workers=0)
    assert data.train.images.unique().tolist() == [128]  # 32768 / 257 = 127.5; Pillow's convert("L") gives 255


def test_an_animated_gif_loads_its_first_frame(tmp_path: Path) -> None:
    for i in range(3):
        frames = [Image.fromarray(np.full((10, 10), v, np.uint8)) for v in (200, 50)]
        frames[0].save(tmp_path / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, channels=1, num_workers=0)
    assert len(data.train) + len(data.val) + len(data.test) == 3 and data.train.images.unique().tolist() == [200]


# ---------------------------------------------------------------- memory


def test_an_image_size_too_large_for_memory_is_refused_up_front(fake_root: Path) -> None:
    with pytest.raises(UserError, match=r"^dataset\.image_size=100000 would need [0-9,.]+ GiB of memory to hold 3,500 images of 1x100000x100000, but [0-9.]+ GiB is available; use a smaller dataset\.image_size"):
        load_dataset("mnist", root=str(fake_root), image_size=100_000)


def test_a_folder_too_large_for_memory_suggests_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        _save(tmp_path / f"{i}.png", 9)
    monkeypatch.setattr("vae_runner.data.memory.available_memory", lambda: 2**20)
    # 5 images of 3x256x256 are 0.94 MiB of pixels: max_memory_mb=0 makes them stream
    with pytest.raises(UserError, match=r"dataset\.image_size=256 would need [0-9.]+ GiB .* but 0\.0 GiB is available; .*dataset\.max_memory_mb=0 so"):
        load_dataset("image_folder", path=str(tmp_path), image_size=256, num_workers=0)
