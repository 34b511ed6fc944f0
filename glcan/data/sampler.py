"""A shuffling sampler whose order depends only on (seed, epoch).

The training loader is torchdata's ``StatefulDataLoader``, whose state Lightning saves in every
checkpoint: a run resumed mid-epoch fast-forwards past the batches it already trained on. That
says *where* in an epoch's order a run is; this sampler says *which* order: epoch e's
permutation is drawn from ``seed + e`` alone (Lightning calls ``set_epoch`` at the start of every
epoch, as it does for DistributedSampler), so a run resumed at any point sees the batches an
uninterrupted run sees. A seeded ``shuffle=True`` would not: its generator advances epoch after
epoch, and a loader restored from the end of an epoch draws the finished epoch's order again.
"""

from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch, reproducible from ``(seed, epoch)``."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source, self.seed, self.epoch = data_source, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is drawn at the first index asked for, not when the iterator is
        # made. A resumed loader makes its iterator before Lightning sets the new epoch.
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()
