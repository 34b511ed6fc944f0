"""A shuffling sampler whose order depends only on (seed, epoch), that says where it is, and
that gives each DDP replica its share (when told which replica it serves).

The training loader is torchdata's ``StatefulDataLoader``, whose state Lightning saves in every
checkpoint. This sampler is part of that state: it records the epoch it is drawing and how many
indices it has handed out, so a run resumed mid-epoch continues the same order from the same
place, and one resumed at an epoch's end starts the next epoch. Epoch e's permutation is drawn
from ``seed + e`` alone (Lightning calls ``set_epoch`` at the start of every epoch, as it does for
DistributedSampler). A seeded ``shuffle=True`` would not do: its generator advances epoch after
epoch, and a loader that only counts batches replays them under whatever epoch it was left at.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch, reproducible from ``(seed, epoch)``, and resumable."""

    def __init__(self, data_source: Sized, seed: int = 0, rank: int = 0, replicas: int = 1) -> None:
        # The replica is given, not read from torch.distributed: a pipeline's process group joins
        # stages that all read the same batches, not replicas that split them.
        self.data_source, self.seed, self.epoch = data_source, seed, 0
        self.rank, self.replicas = rank, replicas
        self.position = 0  # indices of this epoch handed out so far

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return math.ceil(len(self.data_source) / self.replicas)

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is drawn at the first index asked for, from the epoch then set.
        rank, world = self.rank, self.replicas
        start = self.position
        order = torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.tolist()
        order = (order + order[: len(self) * world - len(order)])[rank::world]
        for i in order[start:]:
            self.position += 1
            yield i
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the saved loader was; after a finished epoch, at the next one's start."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
