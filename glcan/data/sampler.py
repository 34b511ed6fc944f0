"""A shuffling sampler whose order depends only on (seed, epoch).

A DataLoader with ``shuffle=True`` and a seeded generator gives the same order for the same
seed, but the order of epoch e depends on every epoch before it having been drawn from the
same loader. A run resumed from a checkpoint builds a new loader and would replay epoch 0's
order in epoch 1, so resumed runs would diverge from uninterrupted ones. Lightning calls
``set_epoch`` on the sampler at the start of every epoch (as it does for DistributedSampler),
so this sampler draws epoch e's permutation from ``seed + e`` alone.
"""

from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch, reproducible from ``(seed, epoch)``."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source, self.seed, self.epoch = data_source, seed, 0
        self._skip: tuple[int, int] = (-1, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, count: int) -> None:
        """Leave out the first ``count`` indices of ``epoch``'s order, once (a resumed epoch)."""
        self._skip = (epoch, count)

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=g).tolist()
        if self._skip[0] == self.epoch:
            order, self._skip = order[self._skip[1]:], (-1, 0)
        return iter(order)
