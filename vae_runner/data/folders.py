"""Image folders: listed by our own walk (symlinks followed once, only regular files), decoded to uint8 tensors."""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vae_runner.data.splits import Split
from vae_runner.progress import Meter

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DECODE_BATCH = 256

# Skip reasons, as they read in the log line.
NOT_REGULAR, BROKEN_LINK, UNREADABLE, NOT_IMAGE, OUTSIDE_CLASSES = (
    "not a regular file", "broken link", "unreadable", "not an image file type", "outside the class folders",
)


@dataclass
class Listing:
    """The image files found under one folder, their labels, and how many entries were skipped and why."""

    folder: Path
    files: list[str]
    labels: Optional[list[int]]  # None: a flat folder, unlabelled
    classes: list[str]
    examined: int = 0  # files looked at, images or not
    skipped: Counter = field(default_factory=Counter)
    repeated_dirs: int = 0  # directories reached a second time through a symlink, not read again

    def report(self) -> None:
        """One warning line for this folder when anything was skipped."""
        if not self.skipped and not self.repeated_dirs:
            return
        parts = []
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} of {self.examined} files: {reasons}")
        if self.repeated_dirs:
            parts.append(f"{self.repeated_dirs} folder(s) reached again through a symlink were not read twice")
        log.warning("%s: %s", self.folder, "; ".join(parts))


def _dir_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _entries(folder: Path, listing: Listing) -> list[tuple[os.DirEntry, Optional[os.stat_result]]]:
    """A folder's entries, sorted by name, each with its stat after following symlinks (None: broken link or unreadable)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        listing.skipped[f"{UNREADABLE} folder"] += 1
        return []
    out = []
    for entry in entries:
        try:
            st = entry.stat()  # follows symlinks; never opens the file, so a FIFO cannot block here
        except OSError:
            st = None
        out.append((entry, st))
    return out


def _classify(entry: os.DirEntry, st: Optional[os.stat_result], listing: Listing) -> bool:
    """True for a regular image file; anything else is counted in listing.skipped."""
    listing.examined += 1
    if st is None:
        listing.skipped[BROKEN_LINK if entry.is_symlink() else UNREADABLE] += 1
    elif not stat.S_ISREG(st.st_mode):
        listing.skipped[NOT_REGULAR] += 1
    elif not entry.name.lower().endswith(IMG_EXTENSIONS):
        listing.skipped[NOT_IMAGE] += 1
    else:
        return True
    return False


def _walk(top: Path, visited: set[tuple[int, int]], listing: Listing) -> list[str]:
    """Image files under `top`, depth first in name order; a directory already in `visited` is not entered again."""
    files: list[str] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        subdirs = []
        for entry, st in _entries(folder, listing):
            if st is not None and stat.S_ISDIR(st.st_mode):
                key = _dir_id(st)
                if key in visited:  # a symlink loop, or a second link to the same folder
                    listing.repeated_dirs += 1
                    continue
                visited.add(key)
                subdirs.append(Path(entry.path))
            elif _classify(entry, st, listing):
                files.append(entry.path)
        stack.extend(reversed(subdirs))
    return files


def list_images(folder: Path) -> Listing:
    """Images under `folder`: labelled by class subfolder (sorted names), or, with no subfolder holding images, flat and unlabelled."""
    listing = Listing(folder, [], None, [])
    root_entries = _entries(folder, listing)
    visited = {_dir_id(os.stat(folder))}
    class_dirs: list[Path] = []
    for entry, st in root_entries:
        if st is not None and stat.S_ISDIR(st.st_mode):
            if _dir_id(st) in visited:
                listing.repeated_dirs += 1
            else:
                visited.add(_dir_id(st))
                class_dirs.append(Path(entry.path))
    # Every class folder is marked visited before any is walked: a link from one class
    # into another is then not followed, so no image is read twice or under the wrong label.
    tree = Listing(folder, [], [], [])
    for class_dir in class_dirs:
        found = _walk(class_dir, visited, tree)
        if found:
            tree.classes.append(class_dir.name)
            tree.files += found
            tree.labels += [len(tree.classes) - 1] * len(found)
    if tree.files:
        for entry, st in root_entries:
            if st is None or not stat.S_ISDIR(st.st_mode):
                tree.examined += 1
                tree.skipped[OUTSIDE_CLASSES] += 1
        tree.skipped.update(listing.skipped)
        tree.repeated_dirs += listing.repeated_dirs
        return tree
    for entry, st in root_entries:
        if (st is None or not stat.S_ISDIR(st.st_mode)) and _classify(entry, st, listing):
            listing.files.append(entry.path)
    return listing


# ---------------------------------------------------------------- decoding


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and wider greyscale scaled to 8 bits (Pillow's convert() would clip it, turning most of it white)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img)
        if img.mode == "F" and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            out = a * 255.0
        elif img.mode != "F" and a.min() >= 0 and a.max() <= 65535:
            out = a.astype(np.float64) / 257.0  # 16-bit: 65535 -> 255, the inverse of 8-to-16-bit's v * 257
        else:  # 32-bit integers or floats of any range: stretch the image's own range
            a = np.nan_to_num(a.astype(np.float64))
            span = a.max() - a.min()
            out = (a - a.min()) * (255.0 / span if span else 0.0)
        return Image.fromarray(np.rint(out).clip(0, 255).astype(np.uint8))  # (H, W) uint8: mode L
    return img


def decode_image(path: str, mode: str) -> Image.Image:
    """The first frame of an image file, in `mode` ("L" or "RGB") with 8 bits per channel."""
    # O_NONBLOCK: were the file swapped for a FIFO after listing, open() would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        with Image.open(f) as img:
            img.seek(0)  # GIF, WebP, TIFF: the first frame
            return _to_8bit(img).convert(mode)


class ImageFiles(Dataset):
    """Image files decoded to uint8 (C, S, S) tensors; unreadable files yield None and are skipped."""

    def __init__(self, files: Sequence[str], labels: Optional[Sequence[int]], image_size: int, channels: int, warn_each: bool = True):
        from torchvision.transforms import v2

        self.files, self.labels = list(files), None if labels is None else list(labels)
        self.image_size, self.channels, self.mode = image_size, channels, "L" if channels == 1 else "RGB"
        self.warn_each = warn_each  # streaming: say which file failed; decoding all at once: count them instead
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: Tensor) -> ImageFiles:
        """The same decoding, for the files at these indices."""
        out = ImageFiles([], None, self.image_size, self.channels, self.warn_each)
        out.files = [self.files[i] for i in idx.tolist()]
        out.labels = None if self.labels is None else [self.labels[i] for i in idx.tolist()]
        return out

    def __getitem__(self, i: int) -> Optional[tuple[Tensor, int]]:
        try:
            image = self.transform(decode_image(self.files[i], self.mode))
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... on bad files
            log.log(logging.WARNING if self.warn_each else logging.DEBUG, "skipping unreadable image %s (%s)", self.files[i], exc)
            return None
        return image, (-1 if self.labels is None else self.labels[i])


def collate_images(batch: list[Optional[tuple[Tensor, int]]]) -> tuple[Tensor, Tensor]:
    """Stack decoded images into a uint8 batch, dropping the ones that failed to decode."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


def decode_bytes(n_images: int, channels: int, image_size: int, num_workers: int) -> int:
    """Peak bytes of decode_all: the result, plus the batches in flight between workers and the result."""
    in_flight = (2 * max(1, num_workers) + 1) * DECODE_BATCH  # DataLoader prefetches 2 batches per worker
    return (n_images + in_flight) * channels * image_size * image_size


def decode_all(files: ImageFiles, num_workers: int, meter: Optional[Meter] = None) -> tuple[Split, int]:
    """Every image decoded once, in parallel workers, into one preallocated uint8 tensor; and how many failed. `meter` counts them."""
    images = torch.empty((len(files), files.channels, files.image_size, files.image_size), dtype=torch.uint8)
    labels = torch.empty(len(files), dtype=torch.long)
    loader = DataLoader(files, batch_size=DECODE_BATCH, num_workers=num_workers, collate_fn=collate_images)
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "This DataLoader will create N workers" on small machines
        for batch_images, batch_labels in loader:
            images[n : n + len(batch_images)] = batch_images
            labels[n : n + len(batch_labels)] = batch_labels
            n += len(batch_images)
            if meter is not None:
                meter.advance(len(batch_images), len(batch_images))
    return Split(images[:n], None if files.labels is None else labels[:n]), len(files) - n
