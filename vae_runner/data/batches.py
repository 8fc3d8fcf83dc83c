"""Batches on the training device: index slices of an in-memory uint8 tensor, normalised there."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vae_runner.data.folders import collate_images
from vae_runner.data.splits import Split

Batch = tuple[Tensor, Optional[Tensor]]  # images (B, C, H, W) float in [0, 1], labels (B,) or None


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1], on whatever device the images are."""
    return images.float().div_(255)


class TensorBatches:
    """Batches drawn by index from one uint8 tensor that lives on the device.

    No per-sample Python work and no host-to-device copy per batch: the speed of
    this path comes from that (as in KellerJordan's airbench).
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, shuffle: bool, seed: int = 0, binarize: bool = False):
        self.images = split.images.to(device)
        self.labels = None if split.labels is None else split.labels.to(device)
        self.batch_size, self.shuffle, self.seed, self.device = batch_size, shuffle, seed, device
        self.binarize = binarize  # dynamic binarisation: fresh Bernoulli pixels every batch (Burda et al. 2015)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """One pass from batch `start_batch`; the order depends only on (seed, epoch), so a resumed run sees the same batches."""
        n = self.num_samples
        if self.shuffle:
            order = epoch_order(n, self.seed, epoch).to(self.device)
        for start in range(start_batch * self.batch_size, n, self.batch_size):
            if self.shuffle:
                idx = order[start : start + self.batch_size]
                # index_select, not images[idx]: 7x faster for a (128, 1, 28, 28) uint8 gather on the CPU
                images = self.images.index_select(0, idx)
                labels = None if self.labels is None else self.labels.index_select(0, idx)
            else:
                images = self.images[start : start + self.batch_size]
                labels = None if self.labels is None else self.labels[start : start + self.batch_size]
            x = to_unit_float(images)
            yield (torch.bernoulli(x) if self.binarize else x), labels


class StreamingBatches:
    """Batches decoded from disk by DataLoader workers, for image folders too large for memory."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, shuffle: bool, seed: int = 0, num_workers: int = 2):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.shuffle, self.seed, self.num_workers = shuffle, seed, num_workers
        self.labelled = getattr(dataset, "labels", None) is not None

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """One pass from batch `start_batch` in a (seed, epoch)-determined order; unreadable files drop out of their batch."""
        order = epoch_order(len(self.dataset), self.seed, epoch) if self.shuffle else torch.arange(len(self.dataset))
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order[start_batch * self.batch_size :].tolist(),
            num_workers=self.num_workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            if images.shape[0] == 0:
                continue
            images = images.to(self.device, non_blocking=True)
            yield to_unit_float(images), labels.to(self.device) if self.labelled else None


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of an epoch, a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def make_batches(
    data: Split | Dataset,
    batch_size: int,
    device: torch.device,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 2,
    binarize: bool = False,
) -> TensorBatches | StreamingBatches:
    """In-memory splits become device tensors; Datasets stream through a DataLoader (binarising needs the former)."""
    if isinstance(data, Split):
        return TensorBatches(data, batch_size, device, shuffle, seed, binarize)
    return StreamingBatches(data, batch_size, device, shuffle, seed, num_workers)


def corrupt(x: Tensor, noise: str, level: float) -> Tensor:
    """Noisy inputs for denoising: additive Gaussian (std `level`) or salt-and-pepper (a `level` fraction of pixels), in [0, 1]."""
    if noise == "gaussian":
        return (x + level * torch.randn_like(x)).clamp_(0.0, 1.0)
    if noise == "salt_pepper":
        hit = torch.rand_like(x[:, :1]) < level  # (B, 1, H, W): a pixel is hit in all its channels
        salt = (torch.rand_like(x[:, :1]) < 0.5).to(x.dtype)
        return torch.where(hit, salt, x)
    return x
