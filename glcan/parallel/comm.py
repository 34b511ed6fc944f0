"""Point-to-point messages between neighbouring pipeline workers (forward only).

A message is a fixed-size int64 header (kind, batch size, dtype, epoch, step, then the labels,
padded to the configured batch size) and, for a batch, the activation tensor, whose shape the
receiver knows from the network (N x block output shape). Sends are ``isend``: at most
``depth`` messages may be outstanding; the sender waits for the oldest one beyond that. A gloo
or NCCL send completes only once the receiver has taken it, so ``depth`` bounds the activations
queued between two workers. Every wait is bounded by the process group's timeout: a neighbour
that died or hangs makes this worker stop with a :class:`PeerLost` naming it.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

BATCH, EPOCH_END, FINAL = 1, 2, 3
HEADER = 6  # kind, n, dtype code, epoch, step, reserved
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class PeerLost(RuntimeError):
    """A neighbouring worker closed the connection or went silent past the timeout."""


def short_error(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[path/to/file.cc:561] " prefix
    return line.split(". This is typically")[0][:200]


class Link:
    """This worker's connection to one neighbour.

    Args:
        peer: the neighbour's rank.
        max_batch: the batch size (labels are padded to it in the header).
        feature_shape: the shape of one activation sample the neighbour sends or receives.
        device: where messages live (cuda for NCCL, cpu for gloo).
        depth: sends in flight before waiting.
        name: ``name(rank)`` names a worker for error messages.
    """

    def __init__(self, peer: int, max_batch: int, feature_shape: Sequence[int], device: torch.device, depth: int = 2,
                 name: Callable[[int], str] = lambda r: f"worker {r}") -> None:
        self.peer, self.max_batch, self.feature_shape = peer, max_batch, tuple(feature_shape)
        self.device, self.depth, self.worker_name = device, max(1, depth), name
        self.inflight: deque = deque()
        self.wait_s = 0.0  # time blocked in waits (recv, or send back-pressure)

    def _lost(self, e: BaseException, doing: str) -> PeerLost:
        return PeerLost(f"{self.worker_name(self.peer)} stopped responding while {doing}: {short_error(e)}")

    # ---------------------------------------------------------------- sending
    def send(self, kind: int, epoch: int, step: int, y: Optional[torch.Tensor] = None,
             h: Optional[torch.Tensor] = None) -> None:
        """Post one message; first wait until fewer than ``depth`` are outstanding."""
        while len(self.inflight) >= self.depth:
            self._wait_oldest()
        header = torch.zeros(HEADER + self.max_batch, dtype=torch.int64, device=self.device)
        n = 0 if y is None else int(y.shape[0])
        header[:5] = torch.tensor([kind, n, DTYPES.index(h.dtype) if h is not None else 0, epoch, step])
        if y is not None:
            header[HEADER:HEADER + n] = y.detach().to(self.device, torch.int64)
        tensors = [header]
        if h is not None:
            tensors.append(h.detach().contiguous())
        try:
            works = [dist.isend(t, self.peer, tag=i) for i, t in enumerate(tensors)]
        except RuntimeError as e:
            raise self._lost(e, "receiving") from None
        self.inflight.append((works, tensors))  # the tensors must live until the sends complete

    def _wait_oldest(self) -> None:
        works, _ = self.inflight.popleft()
        t0 = time.perf_counter()
        try:
            for w in works:
                w.wait()
        except RuntimeError as e:
            raise self._lost(e, "receiving") from None
        finally:
            self.wait_s += time.perf_counter() - t0

    def drain(self) -> None:
        while self.inflight:
            self._wait_oldest()

    def pending(self) -> list[torch.Tensor]:
        """The activations still held for sends in flight (the memory meter counts them)."""
        return [t for _, tensors in self.inflight for t in tensors]

    # ---------------------------------------------------------------- receiving
    def recv(self) -> tuple[int, int, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(kind, epoch, step, y, h); y and h are None for the end-of-epoch markers."""
        header = torch.empty(HEADER + self.max_batch, dtype=torch.int64, device=self.device)
        t0 = time.perf_counter()
        try:
            dist.recv(header, self.peer, tag=0)
            kind, n, code, epoch, step = (int(v) for v in header[:5].tolist())
            if kind != BATCH:
                return kind, epoch, step, None, None
            h = torch.empty((n, *self.feature_shape), dtype=DTYPES[code], device=self.device)
            dist.recv(h, self.peer, tag=1)
        except RuntimeError as e:
            raise self._lost(e, "sending") from None
        finally:
            self.wait_s += time.perf_counter() - t0
        y = header[HEADER:HEADER + n].clone()
        return kind, epoch, step, y, h
