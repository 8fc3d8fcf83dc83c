"""Data: uint8 tensors in memory, batches by index, image folders in their layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vae_runner.data import Split, StreamingBatches, TensorBatches, load_dataset, make_batches
from vae_runner.errors import DatasetUnavailable

CPU = torch.device("cpu")


def _split(n: int = 50) -> Split:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(images, torch.arange(n) % 10)


def test_an_epoch_visits_every_image_once_in_a_seeded_order() -> None:
    batches = TensorBatches(_split(), batch_size=8, device=CPU, shuffle=True, seed=3)
    assert len(batches) == 7  # ceil(50 / 8)
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in batches.epoch(1)])
    assert sorted((seen * 255).round().long().tolist()) == list(range(50))
    again = torch.cat([x[:, 0, 0, 0] for x, _ in batches.epoch(1)])
    other = torch.cat([x[:, 0, 0, 0] for x, _ in batches.epoch(2)])
    assert torch.equal(seen, again) and not torch.equal(seen, other)


def test_batches_are_normalised_floats_with_matching_labels() -> None:
    x, y = next(iter(TensorBatches(_split(), 16, CPU, shuffle=True, seed=0).epoch(1)))
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 49 / 255 + 1e-7
    assert torch.equal((x[:, 0, 0, 0] * 255).round().long() % 10, y)


def test_mnist_loads_as_uint8_tensors(mnist_root: Path) -> None:
    data = load_dataset("mnist", root=str(mnist_root), train_samples=1000, val_samples=300, test_samples=200)
    assert data.train.images.shape == (1000, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.val.images.shape == (300, 1, 28, 28) and data.train.labels.shape == (1000,)
    assert data.test.images.shape == (200, 1, 28, 28)
    assert data.info.num_classes == 10 and data.info.channels == 1
    resized = load_dataset("mnist", root=str(mnist_root), train_samples=10, val_samples=10, test_samples=10, image_size=32)
    assert resized.train.images.shape == (10, 1, 32, 32) and resized.test.images.shape == (10, 1, 32, 32)
    assert resized.info.image_size == 32


def test_mnist_validation_is_a_tenth_of_the_training_images_and_test_is_t10k(mnist_root: Path) -> None:
    data = load_dataset("mnist", root=str(mnist_root))
    n_train = len(data.train) + len(data.val)  # 60,000 real, 3,000 fake
    assert len(data.val) == round(n_train * 0.1) and len(data.test) == (10_000 if n_train == 60_000 else 500)


def test_fashion_mnist_loads(fashion_root: Path) -> None:
    data = load_dataset("fashion_mnist", root=str(fashion_root), val_samples=100)
    assert data.train.images.shape == (54000, 1, 28, 28) and data.info.class_names[0] == "T-shirt/top"
    assert (len(data.val), len(data.test)) == (100, 10000)
    assert torch.bincount(data.val.labels).tolist() == [10] * 10  # a capped split is balanced over the classes


def _save(path: Path, value: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_flat_folder_is_unlabelled_and_split_by_val_fraction(tmp_path: Path) -> None:
    for i in range(20):
        _save(tmp_path / f"{i:02d}.png", i * 10)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=16, val_fraction=0.25, num_workers=0)
    # test: round(20 * 0.25) = 5; validation: round(15 * 0.25) = 4 of the rest
    assert (len(data.train), len(data.val), len(data.test)) == (11, 4, 5)
    assert data.train.labels is None and data.info.num_classes == 0
    assert data.train.images.shape == (11, 3, 16, 16)


def test_class_subfolders_and_train_test_splits(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 2)):
        for cls, value in (("cat", 10), ("dog", 200)):
            for i in range(n):
                _save(tmp_path / split / cls / f"{i}.jpg", value)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, channels=1, num_workers=0)
    assert (len(data.train), len(data.val), len(data.test)) == (11, 1, 4)  # validation: round(12 * 0.1) = 1 of train/
    assert data.info.class_names == ["cat", "dog"] and data.info.channels == 1
    assert data.train.images.shape == (11, 1, 8, 8)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1]


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(20):
        _save(tmp_path / "train" / f"{i}.png", 100)
    _save(tmp_path / "test" / "0.png", 100)
    (tmp_path / "train" / "broken.png").write_bytes((tmp_path / "test" / "0.png").read_bytes()[:40])  # truncated
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, num_workers=0)
    assert len(data.train) + len(data.val) == 20 and len(data.test) == 1
    assert f"{tmp_path / 'train'}: skipped 1 of 21 files: 1 unreadable" in caplog.text


def test_large_folders_stream_through_a_dataloader(tmp_path: Path) -> None:
    for i in range(12):
        _save(tmp_path / f"{i:02d}.png", 20 * i)
    data = load_dataset("image_folder", path=str(tmp_path), image_size=8, max_memory_mb=0, num_workers=0, val_fraction=0.25)
    batches = make_batches(data.train, 4, CPU, shuffle=True, seed=0, num_workers=0)
    # 12 images: test round(12 * 0.25) = 3, validation round(9 * 0.25) = 2, train 7
    assert isinstance(batches, StreamingBatches) and len(batches) == 2 and (len(data.val), len(data.test)) == (2, 3)
    xs = [x for x, _ in batches.epoch(1)]
    assert sum(x.shape[0] for x in xs) == 7 and xs[0].dtype == torch.float32 and xs[0].max() <= 1.0


def test_cifar10_reads_a_jpeg_image_tree(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("airplane", "cat"):
            for i in range(3):
                _save(tmp_path / "cifar10-jpeg" / split / cls / f"{i:04d}.jpg", 50, size=32)
    data = load_dataset("cifar10", root=str(tmp_path), num_workers=0)
    assert data.train.images.shape == (5, 3, 32, 32) and data.info.class_names == ["airplane", "cat"]
    assert (len(data.val), len(data.test)) == (1, 6)


def test_missing_image_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match=str(tmp_path / "nope")):
        load_dataset("image_folder", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailable, match="holds 0 image"):
        load_dataset("image_folder", path=str(tmp_path / "empty"))
