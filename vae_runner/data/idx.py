"""MNIST-format idx files read with numpy, each checked before use: magic number, sizes, counts, labels, md5."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import torch

from vae_runner.data.mnist_mirror import MNIST_MD5
from vae_runner.data.splits import Split
from vae_runner.errors import DatasetUnavailable

# md5s of Fashion-MNIST's uncompressed files (Zalando publishes those of the .gz files).
# Computed from the Debian package dataset-fashion-mnist and matching the values
# that public loaders list beside the .gz md5s (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# name -> (folder under the root, title in messages, canonical md5s, class names)
FORMATS: dict[str, tuple[str, str, dict[str, str], list[str]]] = {
    "mnist": ("MNIST", "MNIST", MNIST_MD5, MNIST_CLASSES),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST", FASHION_MNIST_MD5, FASHION_MNIST_CLASSES),
}

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Magic numbers: two zero bytes, type code 0x08 (unsigned byte), number of dimensions.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_CANONICAL = {"train": 60_000, "t10k": 10_000}  # images per split in MNIST and Fashion-MNIST, all 28x28


def missing_files(raw_dir: Path) -> list[str]:
    """The idx files not (yet) in raw_dir."""
    return [name for name in IDX_FILES if not (raw_dir / name).exists()]


def read_mnist_format(raw_dir: Path, name: str) -> tuple[Split, Split]:
    """(train, test) from the four idx files in raw_dir, each file checked first; DatasetUnavailable names a bad one."""
    _, title, md5s, _ = FORMATS[name]
    splits = []
    for prefix in ("train", "t10k"):
        images_path, labels_path = raw_dir / f"{prefix}-images-idx3-ubyte", raw_dir / f"{prefix}-labels-idx1-ubyte"
        images, images_canonical = _read_checked(images_path, _IMAGES_MAGIC, title, md5s, _CANONICAL[prefix])
        labels, labels_canonical = _read_checked(labels_path, _LABELS_MAGIC, title, md5s, _CANONICAL[prefix])
        if len(images) != len(labels):
            # A file whose md5 matched is not the wrong one.
            wrong = labels_path if images_canonical else images_path if labels_canonical else None
            blame = (
                f"so {wrong} is the wrong file; {_fix(title)}" if wrong else
                f"so one of the two is from another set; replace both with the original {title} files "
                f"(delete them so they are fetched again)"
            )
            raise DatasetUnavailable(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels, {blame}.")
        if len(labels) and int(labels.max()) >= 10:
            raise DatasetUnavailable(
                f"{labels_path} holds label {int(labels.max())}, but {title} labels are 0 to 9; the file is damaged: "
                f"{_fix(title)}."
            )
        splits.append(Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def _fix(title: str) -> str:
    return f"delete it so it is fetched again, or copy the original {title} file there"


def _read_checked(path: Path, magic: int, title: str, md5s: dict[str, str], canonical_count: int) -> tuple[np.ndarray, bool]:
    """The array in one idx file after its header, size and (for the canonical set) md5 were checked; and whether md5 was."""
    kind = "images" if magic == _IMAGES_MAGIC else "labels"
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DatasetUnavailable(f"{path} cannot be read ({exc.strerror}); {_fix(title)}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetUnavailable(f"{path} is not a regular file; {_fix(title)}.")
    ndim = magic & 0xFF
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
        found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
        if found != magic:
            what = "it is shorter than 4 bytes" if found is None else f"its magic number is 0x{found:08x}, not 0x{magic:08x}"
            raise DatasetUnavailable(f"{path} is not an MNIST-format {kind} file ({what}); {_fix(title)}.")
        if len(head) < 4 + 4 * ndim:
            raise DatasetUnavailable(f"{path} is {st.st_size} bytes, too short for its own header, so it is truncated; {_fix(title)}.")
        dims = tuple(int(d) for d in np.frombuffer(head, ">u4", offset=4))
        expected = len(head) + int(np.prod(dims, dtype=np.int64))
        # Checked against the size on disk before reading: a wrong file is refused without being read whole.
        if st.st_size != expected:
            shape = "x".join(map(str, dims))
            problem = "truncated" if st.st_size < expected else "longer than its header says"
            raise DatasetUnavailable(
                f"{path} is {st.st_size:,} bytes but its header promises {expected:,} ({shape} {kind}), so it is "
                f"{problem}; {_fix(title)}."
            )
        body = np.fromfile(f, dtype=np.uint8)  # one read; the md5 below hashes these same bytes
    if len(body) != expected - len(head):
        raise DatasetUnavailable(f"{path} changed size while it was read; {_fix(title)}.")
    canonical = dims[0] == canonical_count and dims[1:] in ((), (28, 28))
    if canonical:
        digest = hashlib.md5(head)
        digest.update(body.data)
        actual = digest.hexdigest()
        if actual != md5s[path.name]:
            raise DatasetUnavailable(
                f"{path} has md5 {actual}, not the canonical {title} {md5s[path.name]}, so it is damaged or from "
                f"another dataset; {_fix(title)}."
            )
    return body.reshape(dims), canonical
