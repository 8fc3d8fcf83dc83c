"""Splits in memory, and which images go in each: a held-out share, a subset balanced across classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from vae_runner.errors import UserError

# The seed of every data split: which images are validation and test, and which
# subset a train/val/test_samples cap keeps. Fixed, not the run's `seed`, so that
# runs with different seeds (and every point of a sweep) are tuned and scored on
# the same images. Changing it changes every split: results across a change are
# not comparable.
SPLIT_SEED = 20_170_817


@dataclass
class Split:
    """One split in memory: images (N, C, H, W) uint8, labels (N,) int64 or None when unlabelled, and for a dataset with
    known generative factors (dsprites) each image's factor values as indices into each factor's grid, (N, K) int64."""

    images: Tensor
    labels: Optional[Tensor]
    factors: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def index(self, idx: Tensor) -> Split:
        """The images at these indices (a bool mask or positions), in the order given."""
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        return Split(*(None if t is None else t.index_select(0, idx) for t in (self.images, self.labels, self.factors)))


def hold_out(n: int, n_out: int, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held-out) indices of a seeded random partition of range(n), each in the original order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_out:].sort().values, order[:n_out].sort().values


def holdout_size(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 and at most n - 1, so neither side is empty (for n >= 2)."""
    return min(max(1, round(n * fraction)), n - 1)


def stratified_indices(labels: Optional[Tensor | Sequence[int]], length: int, n: Optional[int], seed: int) -> Tensor:
    """Indices of n of `length` items, balanced over labels (a seeded random n when unlabelled), in the original order."""
    if n is None or n >= length:
        return torch.arange(length)
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(length, generator=g)[:n].sort().values
    labels = torch.as_tensor(labels)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = _balanced_quota(counts, n, g)
    picked = []
    for k in range(len(counts)):
        members = (inverse == k).nonzero().squeeze(1)
        picked.append(members[torch.randperm(len(members), generator=g)[: int(quota[k])]])
    return torch.cat(picked).sort().values


def _balanced_quota(counts: Tensor, n: int, g: torch.Generator) -> Tensor:
    """How many to take of each class: the same number of each, except for classes too small to give it (water-filling)."""
    lo, hi = 0, int(counts.max())
    while lo < hi:  # the largest level L with sum(min(count, L)) <= n
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if int(counts.clamp(max=mid).sum()) <= n else (lo, mid - 1)
    quota = counts.clamp(max=lo)
    # The remainder (fewer than the classes with room left) goes one each to classes drawn at random.
    room = (counts > lo).nonzero().squeeze(1)
    extra = room[torch.randperm(len(room), generator=g)[: n - int(quota.sum())]]
    quota[extra] += 1
    return quota


def stratified_subset(split: Split, n: Optional[int], seed: int) -> Split:
    """n images drawn across classes (balanced over labels; seeded random when unlabelled), kept in their original order."""
    if n is None or n >= len(split):
        return split
    return split.index(stratified_indices(split.labels, len(split), n, seed))


def select_classes(split: Split, classes: Sequence[int], keep: bool) -> Split:
    """The images whose label is (keep=True) or is not (keep=False) among `classes`."""
    if split.labels is None:
        raise UserError("dataset.holdout_classes needs a labelled dataset; this one has no labels.")
    inside = torch.isin(split.labels, torch.tensor(list(classes), dtype=split.labels.dtype))
    return split.index(inside if keep else ~inside)


def binarize_split(split: Split, seed: int) -> Split:
    """Static binarisation: each pixel becomes 0 or 255 with probability intensity/255, sampled once with this seed."""
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(split.images.shape, generator=g) * 255 < split.images.float()
    return Split(on.to(torch.uint8) * 255, split.labels, split.factors)
