"""A small image classifier for the sample-quality measures, trained once per training split and cached on disk.

Its penultimate activations are the features of `test/fd` (a Fréchet distance like
FID's, in a space fitted to the dataset) and its predictions score a CVAE's samples
against the labels they were drawn for (`vae_runner.sample_quality`). Training costs
about 35 CPU-seconds on MNIST, so each (dataset, training split) trains it once: the
weights go to `<eval.cache_dir>/classifiers/` under a fingerprint of the exact
training images, verified by a checksum when read back.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torch import Tensor, nn

from vae_runner.atomic import OutputError, atomic_write
from vae_runner.data import Split, stratified_indices, to_unit_float
from vae_runner.data.batches import epoch_order
from vae_runner.progress import Meter

log = logging.getLogger(__name__)

# Bump whenever LabelNet or the training recipe changes: the fingerprint includes it, so old cache files are never loaded.
VERSION = 1
FEATURE_DIM = 128
# The recipe, tuned on the CPU (2 threads): MNIST 99.2% and Fashion-MNIST 91.1-91.3% test accuracy in about 35 CPU-s each.
WIDTH, EPOCHS, BATCH_SIZE, LR = 16, 3, 128, 6e-3
# Small training sets get more epochs, up to this many steps: MNIST's 1,000-image subsets reach 96.5% test accuracy in
# 105 steps (5 CPU-s) but 27% in 3 epochs (21 steps), too few for the batch norms' running statistics to settle.
MIN_STEPS = 120
MAX_IMAGES = 60_000  # training images at most (a class-balanced subset), at 28x28 px; see image_budget
MIN_IMAGE_SIZE = 4  # the smallest side LabelNet takes: its two 2x2 poolings bring 4 px to 1 (3 px would reach 0)
LOCK_WAIT_S = 3600.0  # how long a second process waits for the first to finish training before it trains uncached
_warned_uncached: set[str] = set()  # cache folders already reported unwritable by this process


# ------------------------------------------------------------------ the network


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """3x3 convolution, 2x2 max pooling when `pool`, batch norm, ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]  # the batch norm's shift is the bias
    if pool:
        # Pooling before the batch norm and ReLU gives them a quarter of the pixels: a third less CPU time per step.
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LabelNet(nn.Module):
    """A small CNN: conv blocks halving the image to at most 8x8, a 3x3 pooled map, a 128-d feature layer, the logits."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = WIDTH, feature_dim: int = FEATURE_DIM):
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"LabelNet needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px, got {image_size}x{image_size}")
        # The constructor's arguments, saved with the weights so that a cached copy is rebuilt exactly.
        self.kwargs = {"channels": channels, "image_size": image_size, "num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        # 28 and 32 pixels get two halvings (to 7 or 8), 64 pixels three: the last block always sees a map of about 8x8.
        halvings = max(2, math.ceil(math.log2(image_size / 8)))
        widths = [width * 2**i for i in range(halvings + 1)]  # 16, 32, 64 for MNIST
        blocks, c = [], channels
        for i, w in enumerate(widths):
            blocks.append(conv_block(c, w, pool=i < halvings))
            c = w
        self.body = nn.Sequential(*blocks)
        # A 3x3 map keeps where a stroke is (global average pooling loses it and costs MNIST about a point of accuracy).
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(c * 9, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations, (B, feature_dim), of images (B, C, H, W) in [0, 1]."""
        return self.feature(self.pool(self.body(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of images (B, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


@dataclass
class Classifier:
    """A trained LabelNet in eval mode, its accuracy on the test split it was asked with, and its cache file (None: not cached)."""

    net: LabelNet
    test_accuracy: float
    path: Optional[Path]


# ------------------------------------------------------------------ training


def train_classifier(
    train: Split,
    test: Split,
    *,
    num_classes: int,
    seed: int,
    device: torch.device,
    epochs: int = EPOCHS,
    max_images: int = MAX_IMAGES,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    width: int = WIDTH,
) -> tuple[LabelNet, float]:
    """Train a LabelNet on (a class-balanced subset of at most `max_images` of) `train`; return it in eval mode and its `test` accuracy.

    The same images, seed and device give the same weights: the initialisation, the
    subset and each epoch's order all come from `seed`.
    """
    if train.labels is None or test.labels is None:
        raise ValueError("the sample-quality classifier needs labelled training and test images")
    device = torch.device(device)
    keep = stratified_indices(train.labels, len(train), max_images, seed)
    images, labels = train.images.index_select(0, keep).to(device), train.labels.index_select(0, keep).to(device)
    n, (channels, size) = images.shape[0], images.shape[1:3]
    if n < 2:
        raise ValueError(f"the sample-quality classifier needs at least 2 training images, got {n}")
    batch_size = min(batch_size, n)
    epochs = planned_epochs(n, epochs, batch_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's random stream stays as it was
        torch.manual_seed(seed)
        net = LabelNet(channels=channels, image_size=size, num_classes=num_classes, width=width)
    # Channels-last: the CPU's oneDNN convolutions and pooling run about twice as fast on it as on NCHW.
    net = net.to(device, memory_format=torch.channels_last)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped: a batch of 1 would break the batch norm
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # One cycle (Smith & Topin 2018): warm up, then anneal to nearly zero, which gets MNIST past 99% in three epochs.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25)
    net.train()
    for epoch in range(epochs):
        order = epoch_order(n, seed, epoch).to(device)
        with Meter(f"sample-quality classifier, epoch {epoch + 1}/{epochs}", steps_per_epoch) as meter:
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x = to_unit_float(images.index_select(0, idx)).contiguous(memory_format=torch.channels_last)  # (B, C, H, W) in [0, 1]
                loss = F.cross_entropy(net(x), labels.index_select(0, idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                meter.advance(1, x.shape[0])
                if step % 50 == 0:
                    meter.note(f"loss {loss.item():.3f}")
    net.eval()
    return net, accuracy(net, test)


def planned_epochs(n: int, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE) -> int:
    """`epochs`, or more for a training set so small that `epochs` would be fewer than MIN_STEPS steps."""
    return max(epochs, math.ceil(MIN_STEPS / max(1, n // min(batch_size, n))))


@torch.no_grad()
def apply_in_chunks(fn: Callable[[Tensor], Tensor], images: Tensor | Iterable[Tensor], device: torch.device, batch: int = 1000) -> list[Tensor]:
    """`fn`'s outputs, each moved to the CPU, on images (N, C, H, W) taken `batch` at a time (or an iterable of such batches) as float in [0, 1] on `device`."""
    batches = (images[i : i + batch] for i in range(0, images.shape[0], batch)) if isinstance(images, Tensor) else images
    return [fn(as_unit_float(x.to(device))).cpu() for x in batches]


def classify(net: LabelNet, images: Tensor, device: Optional[torch.device] = None, batch: int = 1000) -> Tensor:
    """Predicted labels (N,) on the CPU of images (N, C, H, W), uint8 or float in [0, 1], run `batch` at a time on `device` (the net's by default)."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    out = apply_in_chunks(lambda x: net(x).argmax(1), images, device, batch)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(net: LabelNet, split: Split, batch: int = 1000) -> float:
    """The share of the split's images whose label the net predicts."""
    if split.labels is None or len(split) == 0:
        raise ValueError("accuracy needs a labelled, non-empty split")
    return float((classify(net, split.images, batch=batch) == split.labels.cpu()).double().mean())


def as_unit_float(images: Tensor) -> Tensor:
    """uint8 pixels become float in [0, 1]; float images pass as they are."""
    return to_unit_float(images) if images.dtype == torch.uint8 else images.float()


# ------------------------------------------------------------------ the cache


def cache_dir(setting: Optional[str]) -> Path:
    """`eval.cache_dir` as a path; unset: $XDG_CACHE_HOME/vae-runner, else ~/.cache/vae-runner."""
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae-runner"


def fingerprint(train: Split, seed: int, max_images: int) -> str:
    """sha256 of what decides the weights: the training images and labels (bytes and shape), the seed, the cap and VERSION."""
    h = hashlib.sha256(f"vae-runner LabelNet v{VERSION} seed={seed} max_images={max_images}\n".encode())
    for t in (train.images, train.labels):
        t = torch.zeros(0) if t is None else t.detach().cpu().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy())  # the tensor's own memory: no copy of a 2.4 GB training split
    return h.hexdigest()


def load_or_train(
    train: Split,
    test: Split,
    *,
    dataset: str,
    num_classes: int,
    cache_dir: Path,
    seed: int = 0,
    device: torch.device,
    max_images: Optional[int] = None,
) -> Classifier:
    """The classifier of this training split, with its accuracy on `test`: read from `cache_dir/classifiers/` when a verified copy is there, else trained and stored.

    A second process asking for the same classifier meanwhile waits on a lock
    beside the file and then reads it. A cache that cannot be read is trained
    again; one that cannot be written costs a warning, never the run.
    """
    if train.labels is None or test.labels is None:
        raise ValueError("the sample-quality classifier needs labelled training and test images")
    device = torch.device(device)
    max_images = max_images or image_budget(train.images.shape[1:])
    key = fingerprint(train, seed, max_images)
    path = Path(cache_dir) / "classifiers" / f"{dataset}-{key[:16]}.pt"
    with _cache_lock(path) as writable:
        net = _load(path, key, device)
        if net is None:
            where = path if writable else None
            return _train_and_store(train, test, where, key, dataset=dataset, num_classes=num_classes, seed=seed, device=device, max_images=max_images)
    # Measured here, not read from the cache: the cached accuracy is on the test split of whichever run trained it.
    return Classifier(net, accuracy(net, test), path)


def image_budget(shape: Sequence[int]) -> int:
    """How many training images the classifier gets by default: MNIST's 60,000 at most, and as many pixels for larger images
    (dsprites' 64x64: 11,484; CIFAR-10's 3x32x32: 15,312), so training costs about the same ~35 CPU-s whatever the dataset."""
    return min(MAX_IMAGES, MAX_IMAGES * 28 * 28 // math.prod(shape))


@contextmanager
def _cache_lock(path: Path) -> Iterator[bool]:
    """Hold the lock beside `path` for the block; yield whether the cache folder is writable (False: one warning, no lock)."""
    writable, held = True, None  # held: the lock, once taken
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.with_name(path.name + ".lock")))
        held = lock if _acquire(lock, path) else None
    except OSError as err:
        # Unwritable: a copy already there can still be read (a shared, read-only cache); otherwise train uncached.
        _warn_uncached(path, f"could not write in {path.parent} ({err.strerror or err}); set eval.cache_dir to a writable folder to keep it")
        writable = False
    try:
        yield writable
    finally:
        if held is not None:
            held.release()


def _acquire(lock: FileLock, path: Path) -> bool:
    """Take the lock, waiting up to LOCK_WAIT_S for another process training the same classifier; False when that wait runs out."""
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        log.info("waiting for another process to finish training the sample-quality classifier %s", path)
    try:
        lock.acquire(timeout=LOCK_WAIT_S)
        return True
    except Timeout:
        return False  # trained here too; whichever process writes last leaves a whole, equivalent file


def _train_and_store(
    train: Split, test: Split, path: Optional[Path], key: str, *, dataset: str, num_classes: int, seed: int, device: torch.device, max_images: int,
) -> Classifier:
    """Train the classifier, store it at `path` (None: the cache is unwritable, so not at all) and return it with its `test` accuracy."""
    images = min(len(train), max_images)
    log.info("training the sample-quality classifier for %s on %s images (%s)", dataset, f"{images:,}", f"cached in {path}" if path else "not cached")
    started = time.process_time()
    net, test_accuracy = train_classifier(train, test, num_classes=num_classes, seed=seed, device=device, epochs=EPOCHS, max_images=max_images)
    log.info("sample-quality classifier for %s: test accuracy %.2f%% (%.0f CPU-s)", dataset, 100 * test_accuracy, time.process_time() - started)
    stored = path is not None and _store(
        path, net, key, dataset=dataset, test_accuracy=test_accuracy, images=images, epochs=planned_epochs(images), seed=seed,
    )
    return Classifier(net, test_accuracy, path if stored else None)


def _load(path: Path, key: str, device: torch.device) -> Optional[LabelNet]:
    """The cached net at `path`, in eval mode, if its checksum and fingerprint match; None (with one warning if it existed) otherwise."""
    if not path.is_file():
        return None
    try:
        record = json.loads(_checksum_path(path).read_text())
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise ValueError("its sha256 differs from the one recorded beside it")
        saved = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        if saved["fingerprint"] != key or saved["version"] != VERSION:
            raise ValueError("it was trained on other images or by another version")
        net = LabelNet(**saved["net_kwargs"]).to(device, memory_format=torch.channels_last)  # as trained: the same features
        net.load_state_dict(saved["state_dict"])
    except Exception as err:  # any unreadable cache is retrained: a cache must never end a run's final evaluation
        log.warning("the cached sample-quality classifier %s is unusable (%s); training it again", path, first_line(err))
        return None
    log.info("sample-quality classifier read from %s (test accuracy %.2f%% when trained)", path, 100 * saved["test_accuracy"])
    return net.eval()


def _store(path: Path, net: LabelNet, key: str, **meta: Any) -> bool:
    """Write the weights atomically and their sha256 beside them; False (with one warning) when the folder is unwritable."""
    payload = {
        "version": VERSION,
        "fingerprint": key,
        "net_kwargs": net.kwargs,
        "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
        "torch": str(torch.__version__),  # a plain str: weights_only loading refuses TorchVersion
        **meta,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    record = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "fingerprint": key, **meta}, indent=2).encode()
    elsewhere = "cache folder (eval.cache_dir=...)"
    try:
        atomic_write(path, lambda f: f.write(data), elsewhere=elsewhere)
        # The checksum goes second: a kill between the two leaves a file that fails it and is trained again, never trusted.
        atomic_write(_checksum_path(path), lambda f: f.write(record), elsewhere=elsewhere)
    except OutputError as err:
        _warn_uncached(path, str(err))
        return False
    return True


def first_line(err: BaseException) -> str:
    """An exception's message, first line only and at most 160 characters, for a one-line warning or error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def _checksum_path(path: Path) -> Path:
    """The JSON beside a cache file that records its sha256."""
    return path.with_suffix(".json")


def _warn_uncached(path: Path, why: str) -> None:
    """Warn once per folder, and in one line, that the classifier is trained for this run only."""
    if str(path.parent) in _warned_uncached:
        return
    _warned_uncached.add(str(path.parent))
    log.warning("the sample-quality classifier is not cached: %s", why)
