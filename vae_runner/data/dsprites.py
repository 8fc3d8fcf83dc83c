"""dSprites (Matthey et al. 2017), generated in code: 737,280 binary 64x64 images of every combination of five factors.

The factor grid and its order are the released file's: 3 shapes x 6 scales x 40
orientations x 32 posX x 32 posY, flat index
((((shape*6 + scale)*40 + orientation)*32 + posX)*32 + posY), posY fastest.
Two deliberate differences from the released images:

- orientation k is 2*pi*k/40, k = 0..39; the release uses linspace(0, 2*pi, 40),
  whose first and last orientations are the same angle, so its images at
  orientation 0 and 39 are duplicates;
- the sprites are drawn by the point-in-shape rule below, so pixels differ from
  the release's renderer while the factors mean the same thing.

Geometry: pixel (row r, column c) is the unit square [c, c+1] x [r, r+1]; x is
the column (posX), y the row (posY), and y grows downward. Position index i puts
the shape's centre on the integer point 16 + i, so a move by one position is an
exact shift by one pixel, and each image is one of 120 sprites (shape x scale x
orientation) drawn once and shifted. A pixel is on (255) when its centre lies
inside the shape after undoing the rotation and the scale; no anti-aliasing.
Orientation turns the shape counter-clockwise as displayed. At scale 1 every
shape reaches at most 14.1 px from its centre, so it stays inside the image at
every position and rotation.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from filelock import FileLock
from numpy.lib.stride_tricks import sliding_window_view

from vae_runner.atomic import atomic_write, file_digest, human_bytes, write_json
from vae_runner.data.memory import available_memory
from vae_runner.data.splits import SPLIT_SEED, Split, hold_out, holdout_size, stratified_indices
from vae_runner.errors import UserError

log = logging.getLogger(__name__)

SHAPES = ("square", "ellipse", "heart")
# Each factor's values, in the order of the factor columns and of the flat index; the released file's values.
FACTORS: dict[str, list[float]] = {
    "shape": [1.0, 2.0, 3.0],
    "scale": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "orientation": [2 * math.pi * k / 40 for k in range(40)],
    "posX": [k / 31 for k in range(32)],
    "posY": [k / 31 for k in range(32)],
}
GRID = tuple(len(v) for v in FACTORS.values())  # (3, 6, 40, 32, 32)
N_IMAGES = math.prod(GRID)  # 737,280
SIZE = 64
SPRITE = 32  # the sprite canvas: offsets -15.5 .. 15.5 px from the shape's centre, room for 14.1 px at any angle
FIRST_CENTRE = 16  # position index i puts the centre at pixel coordinate 16 + i: 16 .. 47

# Sizes at scale 1, chosen so each shape reaches about 14 px from its centre (the square's half-diagonal).
SQUARE_HALF_SIDE = 10.0  # area 400 px^2
ELLIPSE_SEMI_AXES = (14.0, 7.0)  # along x and y at orientation 0; area 308 px^2
HEART_UNIT = 10.5  # px per unit of the heart curve: 23.9 px wide, 23.5 px tall, area 403 px^2
# The unit heart spans y in [-1, 1.236]; its centre is the middle of that bounding box.
HEART_CENTRE_Y = 0.118

# Bump when the pixels change: a cache written by another version is regenerated.
GENERATOR_VERSION = 1
CACHE_NAME = "dsprites-64-packed.npy"  # (737280, 512) uint8: each image's 4096 pixels, np.packbits, row-major
# The share of the grid held out as the test split, fixed so that dataset.val_fraction moves only the validation split.
TEST_FRACTION = 0.1


def render_sprite(shape: int, scale: float, orientation: float) -> np.ndarray:
    """The shape (an index into SHAPES) centred on a (32, 32) bool canvas, its centre at the canvas's point (16, 16).

    Shapes are tested in coordinates u (right) and v (up) around the centre:
    square |u|, |v| <= 10 s; ellipse (u / 14 s)^2 + (v / 7 s)^2 <= 1; heart: the
    classic implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with x = u / 10.5 s,
    y = v / 10.5 s + 0.118 (lobes up, point down at orientation 0).
    """
    offsets = np.arange(SPRITE) - SPRITE // 2 + 0.5  # pixel centres relative to the shape's centre
    dx = offsets[None, :]  # columns
    up = -offsets[:, None]  # rows grow downward; v grows upward
    # Undo a counter-clockwise rotation by theta: rotate the pixel centre by -theta.
    c, s = math.cos(orientation), math.sin(orientation)
    u = (c * dx + s * up) / scale
    v = (-s * dx + c * up) / scale
    if SHAPES[shape] == "square":
        return (np.abs(u) <= SQUARE_HALF_SIDE) & (np.abs(v) <= SQUARE_HALF_SIDE)
    if SHAPES[shape] == "ellipse":
        a, b = ELLIPSE_SEMI_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    x, y = u / HEART_UNIT, v / HEART_UNIT + HEART_CENTRE_Y
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def render(shape_idx: int, scale_idx: int, orientation_idx: int, x_idx: int, y_idx: int) -> np.ndarray:
    """One image, (64, 64) uint8 of 0 and 255, from its five factor indices."""
    sprite = render_sprite(shape_idx, FACTORS["scale"][scale_idx], FACTORS["orientation"][orientation_idx])
    image = np.zeros((SIZE, SIZE), dtype=np.uint8)
    # The canvas's point (16, 16) lands on (16 + x_idx, 16 + y_idx): the canvas starts at column x_idx, row y_idx.
    image[y_idx : y_idx + SPRITE, x_idx : x_idx + SPRITE] = sprite * np.uint8(255)
    return image


def _shifted(sprite: np.ndarray) -> np.ndarray:
    """The sprite at all 32 x 32 positions, (1024, 64, 64) bool in posX-major, posY-minor order, as strided views."""
    pad = SIZE - 1  # windows start at 0 .. 31 on a 95 x 95 canvas holding the sprite at (31, 31)
    canvas = np.zeros((pad + SPRITE, pad + SPRITE), dtype=bool)
    start = SPRITE - 1
    canvas[start : start + SPRITE, start : start + SPRITE] = sprite
    windows = sliding_window_view(canvas, (SIZE, SIZE))  # [a, b]: the sprite at row 31 - a, column 31 - b
    return windows[::-1, ::-1].transpose(1, 0, 2, 3).reshape(-1, SIZE, SIZE)  # [posX, posY] -> flat


def generate() -> np.ndarray:
    """Every image of the grid, bit-packed: (737280, 512) uint8, row i = np.packbits of image i's 4096 pixels."""
    packed = np.empty((N_IMAGES, SIZE * SIZE // 8), dtype=np.uint8)
    per_sprite = GRID[3] * GRID[4]
    sprite_idx = 0
    for shape in range(GRID[0]):
        for scale in FACTORS["scale"]:
            for orientation in FACTORS["orientation"]:
                images = _shifted(render_sprite(shape, scale, orientation))  # (1024, 64, 64)
                rows = slice(sprite_idx * per_sprite, (sprite_idx + 1) * per_sprite)
                packed[rows] = np.packbits(images.reshape(per_sprite, -1), axis=1)
                sprite_idx += 1
    return packed


def unpack(packed: np.ndarray) -> np.ndarray:
    """Bit-packed rows (N, 512) as images (N, 64, 64) uint8 of 0 and 255."""
    images = np.unpackbits(packed, axis=1)
    np.multiply(images, 255, out=images)
    return images.reshape(-1, SIZE, SIZE)


def factor_indices(idx: np.ndarray) -> np.ndarray:
    """The factor indices (N, 5) int64 of the images at flat positions idx."""
    return np.stack(np.unravel_index(np.asarray(idx, dtype=np.int64), GRID), axis=1).astype(np.int64)


def factor_grid() -> np.ndarray:
    """Every image's factor indices, (737280, 5) int64, in the images' order."""
    return np.indices(GRID, dtype=np.int64).reshape(len(GRID), -1).T.copy()


# ---------------------------------------------------------------- the cache under dataset.root


def load_packed(root: Path) -> np.ndarray:
    """The packed images from <root>/dsprites/, checked against their recorded sha256; generated and cached when missing or bad.

    Returns a read-only memory map of the cache file. Generation and repair take a
    lock beside the cache, so concurrent runs never write it at once; a valid
    cache is read without the lock, so a read-only copy can be shared.
    """
    folder = root / "dsprites"
    path, meta = folder / CACHE_NAME, folder / (Path(CACHE_NAME).stem + ".json")
    if _verified(path, meta, warn=False):
        return np.load(path, mmap_mode="r")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".dsprites.lock"))
        lock.acquire()
    except OSError as err:
        raise UserError(
            f"dataset.root={root} is not writable ({err.strerror or err}): dSprites is generated there on first use "
            f"({human_bytes(_cache_bytes())}); point dataset.root at a writable folder."
        ) from None
    try:
        # Another process may have written it while this one waited for the lock.
        if not _verified(path, meta, warn=True):
            log.info("generating dSprites (%s images) into %s", f"{N_IMAGES:,}", path)
            packed = generate()
            atomic_write(path, lambda f: np.save(f, packed), elsewhere="dataset.root")
            del packed
            record = {"generator_version": GENERATOR_VERSION, "bytes": path.stat().st_size, "sha256": file_digest(path)}
            write_json(meta, record, elsewhere="dataset.root")
    finally:
        lock.release()
    return np.load(path, mmap_mode="r")


def _verified(path: Path, meta: Path, warn: bool) -> bool:
    """Whether the cache file exists, was written by this generator version and matches its recorded size and sha256."""
    if not path.is_file():
        return False
    try:
        record = json.loads(meta.read_text())
        if record.get("generator_version") != GENERATOR_VERSION:
            if warn:
                log.info("%s was made by dSprites generator version %s, this is %d; regenerating it", path, record.get("generator_version"), GENERATOR_VERSION)
            return False
        # The size first: a truncated file is caught without reading it.
        good = path.stat().st_size == record["bytes"] and file_digest(path) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        good = False
    if not good and warn:
        log.warning("%s is corrupt or incomplete (its size or sha256 differs from %s); regenerating it", path, meta.name)
    return good


def _cache_bytes() -> int:
    return N_IMAGES * SIZE * SIZE // 8


# ---------------------------------------------------------------- splits


def load_dsprites(
    root: Path,
    *,
    train_samples: Optional[int] = None,
    val_samples: Optional[int] = None,
    test_samples: Optional[int] = None,
    val_fraction: float = 0.1,
) -> tuple[Split, Split, Split]:
    """(train, validation, test) Splits: images (N, 1, 64, 64) uint8, labels the shape index, factors (N, 5) int64 indices.

    dSprites has no test split: test (TEST_FRACTION of the grid, whatever
    `val_fraction` is), then validation, are held out of the whole grid as for a
    flat image folder, then each split is capped by a subset balanced over shapes,
    all with SPLIT_SEED.
    """
    n = N_IMAGES
    labels = torch.arange(n) // (n // GRID[0])  # the shape index: the slowest factor
    rest, test_idx = hold_out(n, holdout_size(n, TEST_FRACTION), SPLIT_SEED + 1)
    kept, held = hold_out(len(rest), holdout_size(len(rest), val_fraction), SPLIT_SEED)
    chosen = []
    for idx, cap in ((rest[kept], train_samples), (rest[held], val_samples), (test_idx, test_samples)):
        chosen.append(idx[stratified_indices(labels[idx], len(idx), cap, SPLIT_SEED)])
    _require_memory(sum(len(idx) for idx in chosen), max(len(idx) for idx in chosen))

    packed = load_packed(root)
    splits = []
    for idx in chosen:
        flat = idx.numpy()
        images = torch.from_numpy(unpack(packed[flat])).unsqueeze(1)  # (N, 1, 64, 64)
        splits.append(Split(images, labels[idx], torch.from_numpy(factor_indices(flat))))
    train, val, test = splits
    return train, val, test


def _require_memory(n_images: int, largest: int) -> None:
    """Refuse, naming the caps, when the unpacked images of every split would not fit in memory."""
    # Every split's pixels, plus the largest split's packed copy while it is unpacked.
    needed = n_images * SIZE * SIZE + largest * SIZE * SIZE // 8
    free = available_memory()
    if needed > free:
        raise UserError(
            f"dataset=dsprites would need {needed / 2**30:,.1f} GiB of memory to hold {n_images:,} images of 1x64x64, "
            f"but {free / 2**30:,.1f} GiB is available; use fewer with dataset.train_samples, dataset.val_samples and eval.test_samples."
        )
