"""Read MNIST, Fashion-MNIST, CIFAR-10, image folders and dSprites into train, validation and test uint8 tensors, once.

The split convention: test is the dataset's own test split; validation is a
`val_fraction` share held out from the training images; which image lands where
depends on `SPLIT_SEED` alone, never on the run's seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vae_runner.data.dsprites import FACTORS, SHAPES, load_dsprites
from vae_runner.data.folders import UNREADABLE, ImageFiles, Listing, collate_images, decode_all, decode_bytes, list_images
from vae_runner.data.idx import FORMATS, missing_files, read_mnist_format
from vae_runner.data.memory import require_memory, resize_plan
from vae_runner.data.splits import SPLIT_SEED, Split, binarize_split, hold_out, holdout_size, select_classes, stratified_indices
from vae_runner.errors import DatasetUnavailable, UserError
from vae_runner.progress import Meter

log = logging.getLogger(__name__)

# Re-exported: older code imports these from here.
__all__ = ["DatasetInfo", "LoadedData", "Split", "binarize_split", "collate_images", "load_dataset", "select_classes"]


@dataclass
class DatasetInfo:
    """What the model must know about the images, whatever split or storage."""

    name: str
    channels: int
    image_size: int
    num_classes: int  # 0 when the images carry no labels
    class_names: list[str]
    # A dataset with known generative factors (dsprites): each factor's name and its grid of values, in the order of Split.factors' columns.
    factors: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class LoadedData:
    """Train, validation and test splits: `Split`s in memory, or torch Datasets of uint8 images that stream."""

    info: DatasetInfo
    train: Split | Dataset
    val: Split | Dataset  # held out from the training images; tuning and sweeps look at this
    test: Split | Dataset  # the dataset's own test split; only the final evaluation looks at this


def load_dataset(
    name: str,
    *,
    root: str = "data",
    path: Optional[str] = None,
    image_size: Optional[int] = None,
    channels: Optional[int] = None,
    train_samples: Optional[int] = None,
    val_samples: Optional[int] = None,
    test_samples: Optional[int] = None,
    val_fraction: float = 0.1,
    max_memory_mb: int = 4096,
    num_workers: int = 2,
) -> LoadedData:
    """Train, validation (held out from the training images) and test splits, each capped by a class-balanced subset.

    The partition and the subsets use SPLIT_SEED, not the run's seed, so runs
    with different seeds see the same images.
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"dataset.val_fraction={val_fraction} must lie strictly between 0 and 1.")
    caps = {"dataset.train_samples": train_samples, "dataset.val_samples": val_samples, "eval.test_samples": test_samples}
    for key, n in caps.items():
        if n is not None and n < 1:
            raise UserError(f"{key}={n} must be at least 1; leave it unset (null) to use every image.")
    root_dir = Path(root).expanduser()
    if name in FORMATS:
        train, test, classes = _load_mnist_like(name, root_dir)
        where = f"{name} in {root_dir / FORMATS[name][0] / 'raw'}"
    elif name == "cifar10":
        jpeg_tree = root_dir / "cifar10-jpeg"
        if (jpeg_tree / "train").is_dir() and not (root_dir / "cifar-10-batches-py").is_dir():
            # The JPEG re-encoding of CIFAR-10 laid out as an image tree (see README).
            return _load_image_folder(
                str(jpeg_tree), "cifar10", image_size or 32, channels or 3, (train_samples, val_samples, test_samples),
                val_fraction, max_memory_mb, num_workers,
            )
        train, test, classes = _load_cifar10(root_dir)
        where = f"cifar10 in {root_dir}"
    elif name == "image_folder":
        if not path:
            raise UserError("dataset=image_folder needs dataset.path: pass dataset.path=/folder/of/images.")
        return _load_image_folder(
            path, "image_folder", image_size or 64, channels or 3, (train_samples, val_samples, test_samples),
            val_fraction, max_memory_mb, num_workers,
        )
    elif name == "dsprites":
        train, val, test = load_dsprites(
            root_dir, train_samples=train_samples, val_samples=val_samples, test_samples=test_samples, val_fraction=val_fraction
        )
        if image_size is not None and image_size != train.images.shape[-1]:
            train, val, test = _resize_splits([train, val, test], image_size)
        info = DatasetInfo(name, 1, train.images.shape[-1], len(SHAPES), list(SHAPES), factors={k: list(v) for k, v in FACTORS.items()})
        return LoadedData(info, train, val, test)
    else:
        raise UserError(f"dataset.name={name!r} is unknown; use mnist, fashion_mnist, cifar10, image_folder or dsprites.")

    if len(train) < 2 or len(test) < 1:
        raise DatasetUnavailable(
            f"{where} holds {len(train)} training and {len(test)} test image(s): too few to hold out a validation "
            f"image and still train; it needs at least 2 training images and 1 test image."
        )
    kept, held = hold_out(len(train), holdout_size(len(train), val_fraction), SPLIT_SEED)
    train, val, test = _pick(train, kept, train_samples), _pick(train, held, val_samples), _pick(test, torch.arange(len(test)), test_samples)
    if image_size is not None and image_size != train.images.shape[-1]:
        train, val, test = _resize_splits([train, val, test], image_size)
    info = DatasetInfo(name, train.images.shape[1], train.images.shape[-1], len(classes), classes)
    return LoadedData(info, train, val, test)


def _pick(split: Split, idx: Tensor, n: Optional[int]) -> Split:
    """The images at `idx`, capped at n by a subset balanced over classes; one copy."""
    labels = None if split.labels is None else split.labels[idx]
    return split.index(idx[stratified_indices(labels, len(idx), n, SPLIT_SEED)])


def _resize_splits(splits: list[Split], size: int) -> list[Split]:
    """Resize uint8 images with antialiasing, once at load time, in float chunks; refused up front when it cannot fit."""
    n, (c, h, w) = sum(len(s) for s in splits), splits[0].images.shape[1:]
    needed, chunk = resize_plan(n, c, h, w, size)
    require_memory(
        needed, f"{n:,} images of {c}x{size}x{size}", size,
        f"use a smaller dataset.image_size, or leave it unset for the native {h}x{w}",
    )
    out = []
    for split in splits:
        resized = torch.empty((len(split), c, size, size), dtype=torch.uint8)
        for start in range(0, len(split), chunk):
            x = split.images[start : start + chunk].float()
            y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            resized[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
        out.append(Split(resized, split.labels, split.factors))
    return out


# ---------------------------------------------------------------- MNIST-format and CIFAR-10 files


def _load_mnist_like(name: str, root: Path) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) from <root>/<MNIST|FashionMNIST>/raw/, fetched when missing, checked before use."""
    folder, title, _, classes = FORMATS[name]
    raw = root / folder / "raw"
    if missing_files(raw):
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        _fetch(name, raw, lambda: cls(str(root), train=True, download=True))
        if name == "mnist" and missing_files(raw):
            from vae_runner.data.mnist_mirror import fetch_mnist_from_mirror

            fetch_mnist_from_mirror(root)
        missing = missing_files(raw)
        if missing:
            raise DatasetUnavailable(
                f"{name} could not be found or downloaded: {', '.join(missing)} missing from {raw}; copy the four "
                f"{title} idx files there, or point dataset.root at a folder that holds {folder}/raw/."
            )
    train, test = read_mnist_format(raw, name)
    return train, test, list(classes)


def _load_cifar10(root: Path) -> tuple[Split, Split, list[str]]:
    from torchvision import datasets

    def read(train: bool) -> datasets.CIFAR10:
        return datasets.CIFAR10(str(root), train=train, download=False)

    try:
        splits = read(True), read(False)
    except RuntimeError:
        _fetch("cifar10", root, lambda: datasets.CIFAR10(str(root), train=True, download=True))
        try:
            splits = read(True), read(False)
        except RuntimeError:
            raise DatasetUnavailable(
                f"cifar10 could not be found or downloaded in {root}; put torchvision's cifar-10-batches-py/ "
                f"or a cifar10-jpeg/{{train,test}}/<class>/ image tree there, or point dataset.root at the "
                f"folder that holds one."
            ) from None
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


# ---------------------------------------------------------------- image folders


def _load_image_folder(
    path: str,
    name: str,
    image_size: int,
    channels: int,
    caps: tuple[Optional[int], Optional[int], Optional[int]],
    val_fraction: float,
    max_memory_mb: int,
    num_workers: int,
) -> LoadedData:
    """Train/val/test of an image folder, each capped by a class-balanced subset; decoded now, or streamed when large."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(f"dataset.path={path} is not a folder; point it at a folder of images.")
    whole, sources = _folder_splits(folder, path, image_size, channels, val_fraction)
    splits = {
        key: files.subset(stratified_indices(files.labels, len(files), cap, SPLIT_SEED))
        for (key, files), cap in zip(whole.items(), caps)
    }
    listings = list({id(x): x for x in sources.values()}.values())
    info = DatasetInfo(name, channels, image_size, len(sources["train"].classes), sources["train"].classes)
    n_images = sum(len(s) for s in splits.values())
    pixel_bytes = n_images * channels * image_size**2
    if pixel_bytes > max_memory_mb * 2**20:
        log.info("%s: %.0f MB of pixels exceed dataset.max_memory_mb=%d; streaming from disk", path, pixel_bytes / 2**20, max_memory_mb)
        for listing in listings:
            listing.report()
        return LoadedData(info, splits["train"], splits["val"], splits["test"])

    stream_mb = -(-pixel_bytes // 2**20) - 1  # the largest setting below the pixels' size
    require_memory(
        decode_bytes(n_images, channels, image_size, num_workers), f"{n_images:,} decoded images of {channels}x{image_size}x{image_size}",
        image_size, f"use a smaller dataset.image_size, or dataset.max_memory_mb={stream_mb} so the images stream from disk",
    )
    log.info("decoding %s images from %s", f"{n_images:,}", path)
    decoded = {}
    with Meter(f"decoding {path}", n_images, unit="images") as meter:
        for key, files in splits.items():
            files.warn_each = False  # counted in the folder's one summary line instead
            decoded[key], failed = decode_all(files, num_workers, meter)
            if failed:
                sources[key].skipped[UNREADABLE] += failed
    for listing in listings:
        listing.report()
    for key, split in decoded.items():
        if len(split) == 0:
            raise DatasetUnavailable(
                f"dataset.path={path}: none of the {len(splits[key])} {key} image(s) could be read "
                f"(e.g. {splits[key].files[0]}); check the files' format."
            )
    return LoadedData(info, decoded["train"], decoded["val"], decoded["test"])


def _folder_splits(folder: Path, path: str, image_size: int, channels: int, val_fraction: float) -> tuple[dict[str, ImageFiles], dict[str, Listing]]:
    """The files of each split, and the listing each came from.

    train/ with test/ (or val/): test is that folder and validation is held out
    of train/ (train/, val/ and test/: each as given). One folder: test, then
    validation, are held out of all its images.
    """
    sub = next((s for s in ("test", "val") if (folder / s).is_dir()), None) if (folder / "train").is_dir() else None
    if sub is None:
        listing = list_images(folder)
        n = len(listing.files)
        if n < 3:
            raise DatasetUnavailable(
                f"dataset.path={path} holds {n} image(s): too few to hold out a validation image and a test image "
                f"and still train; it needs at least 3 (png, jpg, ...), directly or in class subfolders."
            )
        files = _files(listing, image_size, channels)
        # Different fixed seeds for the two hold-outs, so they are not the same draw.
        rest, test_idx = hold_out(n, holdout_size(n, val_fraction), SPLIT_SEED + 1)
        kept, held = hold_out(len(rest), holdout_size(len(rest), val_fraction), SPLIT_SEED)
        whole = {"train": files.subset(rest[kept]), "val": files.subset(rest[held]), "test": files.subset(test_idx)}
        return whole, {"train": listing, "val": listing, "test": listing}

    train_list, test_list = list_images(folder / "train"), list_images(folder / sub)
    val_list = list_images(folder / "val") if sub == "test" and (folder / "val").is_dir() else None
    listings = [x for x in (train_list, val_list, test_list) if x is not None]
    need_train = 1 if val_list is not None else 2
    if len(train_list.files) < need_train or min(len(x.files) for x in listings[1:]) < 1:
        held_out = "" if val_list is not None else "hold out a validation image and "
        counts = ", ".join(f"{len(x.files)} image(s) in {x.folder.name}/" for x in listings)
        raise DatasetUnavailable(
            f"dataset.path={path} holds {counts}: too few to {held_out}train; it needs at least {need_train} in "
            f"train/ and 1 in each other split folder."
        )
    for other in listings[1:]:
        _align_classes(other, train_list, path)
    files = _files(train_list, image_size, channels)
    if val_list is not None:
        train, val = files, _files(val_list, image_size, channels)
    else:
        kept, held = hold_out(len(files), holdout_size(len(files), val_fraction), SPLIT_SEED)
        train, val = files.subset(kept), files.subset(held)
    whole = {"train": train, "val": val, "test": _files(test_list, image_size, channels)}
    return whole, {"train": train_list, "val": val_list if val_list is not None else train_list, "test": test_list}


def _files(listing: Listing, image_size: int, channels: int) -> ImageFiles:
    return ImageFiles(listing.files, listing.labels, image_size, channels)


def _align_classes(other: Listing, train: Listing, path: str) -> None:
    """Give `other` train/'s label numbers; refuse class folders train/ lacks, or a flat folder beside a labelled one."""
    if (other.labels is None) != (train.labels is None):
        layouts = ("is flat" if x.labels is None else "has class subfolders" for x in (train, other))
        raise UserError(
            f"dataset.path={path}: train/ {next(layouts)} but {other.folder.name}/ {next(layouts)}; lay both out the same way."
        )
    if other.labels is None:
        return
    extra = sorted(set(other.classes) - set(train.classes))
    if extra:
        raise UserError(
            f"dataset.path={path}: {other.folder.name}/ has class folder(s) {', '.join(extra)} that train/ lacks; "
            f"give train/ the same class subfolders, or remove those."
        )
    number = {c: i for i, c in enumerate(train.classes)}
    other.labels = [number[other.classes[k]] for k in other.labels]
    other.classes = list(train.classes)
