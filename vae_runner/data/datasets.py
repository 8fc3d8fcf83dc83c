"""Read MNIST, Fashion-MNIST, CIFAR-10 and image folders into uint8 tensors, once."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vae_runner.errors import DatasetUnavailable, UserError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split in memory: images (N, C, H, W) uint8 and labels (N,) int64, or None when unlabelled."""

    images: Tensor
    labels: Optional[Tensor]

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DatasetInfo:
    """What the model must know about the images, whatever split or storage."""

    name: str
    channels: int
    image_size: int
    num_classes: int  # 0 when the images carry no labels
    class_names: list[str]


@dataclass
class LoadedData:
    """Train and validation splits: `Split`s in memory, or torch Datasets of uint8 images that stream."""

    info: DatasetInfo
    train: Split | Dataset
    val: Split | Dataset
    test: Optional[Split | Dataset] = None  # the final evaluation's split; None: the same as val


def load_dataset(
    name: str,
    *,
    root: str = "data",
    path: Optional[str] = None,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    train_samples: Optional[int] = None,
    val_samples: Optional[int] = None,
    val_fraction: float = 0.1,
    max_memory_mb: int = 4096,
    num_workers: int = 2,
    seed: int = 0,
) -> LoadedData:
    """Load a dataset's train and test splits; validation uses the test split."""
    if name in ("mnist", "fashion_mnist"):
        train, val, classes = _load_mnist_like(name, Path(root).expanduser())
    elif name == "cifar10":
        jpeg_tree = Path(root).expanduser() / "cifar10-jpeg"
        if (jpeg_tree / "train").is_dir() and not (Path(root).expanduser() / "cifar-10-batches-py").is_dir():
            # The JPEG re-encoding of CIFAR-10 laid out as an image tree (see README).
            return _load_image_folder(
                str(jpeg_tree), "cifar10", image_size or 32, channels or 3, train_samples, val_samples,
                val_fraction, max_memory_mb, num_workers, seed,
            )
        train, val, classes = _load_cifar10(Path(root).expanduser())
    elif name == "image_folder":
        if not path:
            raise UserError("dataset=image_folder needs dataset.path: pass dataset.path=/folder/of/images.")
        return _load_image_folder(
            path, "image_folder", image_size or 64, channels or 3, train_samples, val_samples,
            val_fraction, max_memory_mb, num_workers, seed,
        )
    else:
        raise UserError(f"dataset.name={name!r} is unknown; use mnist, fashion_mnist, cifar10 or image_folder.")

    train, val = take(train, train_samples), take(val, val_samples)
    if image_size is not None and image_size != train.images.shape[-1]:
        train, val = _resize(train, image_size), _resize(val, image_size)
    info = DatasetInfo(name, train.images.shape[1], train.images.shape[-1], len(classes), classes)
    return LoadedData(info, train, val)


def binarize_split(split: Split, seed: int) -> Split:
    """Static binarisation: each pixel becomes 0 or 255 with probability intensity/255, sampled once with this seed."""
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(split.images.shape, generator=g) * 255 < split.images.float()
    return Split(on.to(torch.uint8) * 255, split.labels)


def select_classes(split: Split, classes: Sequence[int], keep: bool) -> Split:
    """The images whose label is (keep=True) or is not (keep=False) among `classes`."""
    if split.labels is None:
        raise UserError("dataset.holdout_classes needs a labelled dataset; this one has no labels.")
    inside = torch.isin(split.labels, torch.tensor(list(classes), dtype=split.labels.dtype))
    mask = inside if keep else ~inside
    return Split(split.images[mask], split.labels[mask])


def take(split: Split, n: Optional[int]) -> Split:
    """The first n images (all when n is None)."""
    if n is None or n >= len(split):
        return split
    return Split(split.images[:n], None if split.labels is None else split.labels[:n])


def _resize(split: Split, size: int) -> Split:
    """Resize uint8 images with antialiasing (done once, at load time)."""
    resized = F.interpolate(split.images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return Split(resized.round().clamp(0, 255).to(torch.uint8), split.labels)


# ---------------------------------------------------------------- torchvision datasets


def _load_mnist_like(name: str, root: Path) -> tuple[Split, Split, list[str]]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = root / cls.__name__ / "raw"

    def read(train: bool) -> datasets.MNIST:
        return cls(str(root), train=train, download=False)

    try:
        splits = read(True), read(False)
    except RuntimeError:
        _fetch(name, folder, lambda: cls(str(root), train=True, download=True))
        if name == "mnist" and not _readable(read):
            from vae_runner.data.mnist_mirror import fetch_mnist_from_mirror

            fetch_mnist_from_mirror(root)
        if not _readable(read):
            raise DatasetUnavailable(
                f"{name} could not be found or downloaded: no idx files in {folder}; copy the four "
                f"{cls.__name__} idx files (e.g. train-images-idx3-ubyte) there, or point dataset.root at "
                f"a folder that holds {cls.__name__}/raw/."
            ) from None
        splits = read(True), read(False)
    return (*(Split(s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in splits), list(splits[0].classes))


def _load_cifar10(root: Path) -> tuple[Split, Split, list[str]]:
    from torchvision import datasets

    def read(train: bool) -> datasets.CIFAR10:
        return datasets.CIFAR10(str(root), train=train, download=False)

    try:
        splits = read(True), read(False)
    except RuntimeError:
        _fetch("cifar10", root, lambda: datasets.CIFAR10(str(root), train=True, download=True))
        if not _readable(read):
            raise DatasetUnavailable(
                f"cifar10 could not be found or downloaded in {root}; put torchvision's cifar-10-batches-py/ "
                f"or a cifar10-jpeg/{{train,test}}/<class>/ image tree there, or point dataset.root at the "
                f"folder that holds one."
            ) from None
        splits = read(True), read(False)
    # (N, H, W, C) numpy -> (N, C, H, W) tensor
    return (
        *(Split(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in splits),
        list(splits[0].classes),
    )


def _fetch(name: str, folder: Path, download: Callable[[], object]) -> None:
    """Try torchvision's download; failure is expected offline and handled by the caller."""
    log.info("%s not found in %s; trying to download it", name, folder)
    try:
        download()
    except Exception as exc:  # torchvision raises many kinds (URLError, RuntimeError, ...)
        log.info("download of %s failed: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _readable(read: Callable[[bool], object]) -> bool:
    try:
        read(True), read(False)
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------- image folders


class ImageFiles(Dataset):
    """Image files decoded to uint8 (C, S, S) tensors; unreadable files yield None and are skipped."""

    def __init__(self, files: Sequence[str], labels: Optional[Sequence[int]], image_size: int, channels: int):
        from torchvision.transforms import v2

        self.files, self.labels = list(files), None if labels is None else list(labels)
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Optional[tuple[Tensor, int]]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                image = self.transform(img.convert(self.mode))
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... on bad files
            log.warning("skipping unreadable image %s (%s)", self.files[i], exc)
            return None
        return image, (-1 if self.labels is None else self.labels[i])


def collate_images(batch: list[Optional[tuple[Tensor, int]]]) -> tuple[Tensor, Tensor]:
    """Stack decoded images into a uint8 batch, dropping the ones that failed to decode."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


def _list_images(folder: Path) -> tuple[list[str], Optional[list[int]], list[str]]:
    """Files under `folder`: labelled by class subfolder (ImageFolder's layout) or flat and unlabelled."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if any(p.is_dir() for p in folder.iterdir()):
        try:
            tree = ImageFolder(str(folder), allow_empty=True)
        except (FileNotFoundError, RuntimeError):
            tree = None
        if tree is not None and tree.samples:
            files, labels = zip(*tree.samples)
            return list(files), list(labels), list(tree.classes)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    return files, None, []


def _load_image_folder(
    path: str,
    name: str,
    image_size: int,
    channels: int,
    train_samples: Optional[int],
    val_samples: Optional[int],
    val_fraction: float,
    max_memory_mb: int,
    num_workers: int,
    seed: int,
) -> LoadedData:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(f"dataset.path={path} is not a folder; point it at a folder of images.")
    if (folder / "train").is_dir() and any((folder / s).is_dir() for s in ("test", "val")):
        test_dir = folder / "test" if (folder / "test").is_dir() else folder / "val"
        train_files, train_labels, classes = _list_images(folder / "train")
        val_files, val_labels, _ = _list_images(test_dir)
    else:
        files, labels, classes = _list_images(folder)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, round(len(files) * val_fraction)) if len(files) > 1 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_files, val_files = [files[i] for i in train_idx], [files[i] for i in val_idx]
        train_labels = None if labels is None else [labels[i] for i in train_idx]
        val_labels = None if labels is None else [labels[i] for i in val_idx]
    if not train_files or not val_files:
        raise DatasetUnavailable(
            f"dataset.path={path} holds {len(train_files) + len(val_files)} image(s); it needs at least two "
            f"(png, jpg, ...), directly or in class subfolders."
        )
    train_files, train_labels = _subset(train_files, train_labels, train_samples, seed)
    val_files, val_labels = _subset(val_files, val_labels, val_samples, seed)

    info = DatasetInfo(name, channels, image_size, len(classes), classes)
    train = ImageFiles(train_files, train_labels, image_size, channels)
    val = ImageFiles(val_files, val_labels, image_size, channels)
    n_bytes = (len(train) + len(val)) * channels * image_size * image_size
    if n_bytes > max_memory_mb * 2**20:
        log.info("%s: %.0f MB of pixels exceed dataset.max_memory_mb=%d; streaming from disk", path, n_bytes / 2**20, max_memory_mb)
        return LoadedData(info, train, val)
    log.info("decoding %d images from %s", len(train) + len(val), path)
    return LoadedData(info, _decode_all(train, num_workers), _decode_all(val, num_workers))


def _subset(files: list[str], labels: Optional[list[int]], n: Optional[int], seed: int) -> tuple[list[str], Optional[list[int]]]:
    """A seeded random subset of n files, in their original order (folders are sorted by class, so not the first n)."""
    if n is None or n >= len(files):
        return files, labels
    keep = sorted(torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return [files[i] for i in keep], None if labels is None else [labels[i] for i in keep]


def _decode_all(files: ImageFiles, num_workers: int) -> Split:
    """Decode every image once, in parallel workers, into one uint8 tensor."""
    loader = DataLoader(files, batch_size=256, num_workers=num_workers, collate_fn=collate_images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "This DataLoader will create N workers" on small machines
        parts = list(loader)
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    skipped = len(files) - images.shape[0]
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, len(files))
    if images.shape[0] == 0:
        raise DatasetUnavailable(f"none of the {len(files)} images could be read; check the files' format.")
    return Split(images, None if files.labels is None else labels)

