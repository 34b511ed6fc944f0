"""The network as glcan trains it: K blocks, each followed by its head.

End-to-end training is the special case of one block whose head is the backbone's own
classifier, so every method shares this one structure and a comparison differs only in how
the step updates it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from glcan.heads.base import AuxHead


class RecomputedSequential(nn.Sequential):
    """Units run under per-unit gradient checkpointing while training.

    Only each unit's input is kept during the forward pass; a unit's activations are recomputed
    when its backward runs. The last unit is not checkpointed (as in
    ``torch.utils.checkpoint.checkpoint_sequential``): its backward comes first, right after the
    forward, so recomputing it would cost time and save nothing. This is the memory-saving
    alternative users weigh local learning against (``e2e_recompute``), and, inside each block,
    local learning's lowest-memory variant (``local_recompute``).

    Why not ``checkpoint_sequential`` itself: its replay is an ordinary training-mode forward,
    so every BatchNorm would update its running statistics twice per step and the evaluated
    network would differ from a plain run's. ``checkpoint``'s ``context_fn`` separates the two
    forwards, and the replay runs under :func:`frozen_running_stats`; ``checkpoint_sequential``
    does not pass ``context_fn`` on.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.training and torch.is_grad_enabled()
        for i, unit in enumerate(self):
            if recompute and i < len(self) - 1:
                x = checkpoint(unit, x, use_reentrant=False,
                               context_fn=lambda u=unit: (nullcontext(), frozen_running_stats(u)))
            else:
                x = unit(x)
        return x


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` run exactly as in training (batch statistics, the same ops
    and saved tensors) but update copies of their running statistics and batch counter, which
    are dropped afterwards: the replay of a checkpointed forward leaves the model's state alone."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [(m, {n: getattr(m, n) for n in names}) for m in module.modules()
             if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m, buffers in saved:
        for n, t in buffers.items():
            setattr(m, n, None if t is None else t.clone())
    try:
        yield
    finally:
        for m, buffers in saved:
            for n, t in buffers.items():
                setattr(m, n, t)


class SplitNetwork(nn.Module):
    """Blocks and their heads.

    Args:
        blocks: K modules applied in order; block k's input is block k-1's output.
        heads: K heads; head k maps block k's output to logits (or, for super-resolution, an
            image: see :func:`head_output`). The last one is the network's classifier.
        boundaries: the unit index at which each block after the first starts (for summaries).
    """

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[AuxHead], boundaries: Sequence[int] = ()) -> None:
        super().__init__()
        if len(blocks) != len(heads):
            raise ValueError(f"{len(blocks)} blocks but {len(heads)} heads: need one head per block")
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.boundaries = list(boundaries)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the last head: the network's prediction."""
        h = x
        for block in self.blocks:
            h = block(h)
        return head_output(self.heads[-1], h, x)

    def all_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits, for the layer-wise accuracy curve (evaluation only)."""
        out = []
        h = x
        for block, head in zip(self.blocks, self.heads):
            h = block(h)
            out.append(head_output(head, h, x))
        return out


def head_output(head: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A head's output for block output ``h``; heads that say ``needs_input`` (super-resolution's,
    whose prediction is a residual on the bicubic upsampling of the input) also get the network
    input ``x``, as their ``loss`` does."""
    return head(h, x) if getattr(head, "needs_input", False) else head(h)


class DeployedNetwork(nn.Module):
    """Units then the last head, for a head that also reads the network input (``needs_input``)."""

    def __init__(self, units: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.units = nn.Sequential(*units)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_output(self.head, self.units(x), x)
