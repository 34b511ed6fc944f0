"""The local training step: the centre of glcan.

One batch, K blocks. Block k sees block k-1's output *detached*, so no gradient ever crosses a
block boundary; it is updated from its own head's loss alone, and its backward runs (and its
graph is freed) before block k+1's forward starts. That ordering is the whole memory saving:
summing the K losses into one backward gives the same gradients but keeps every block's
activations alive at once, which saves nothing.

The function is plain PyTorch so that the LightningModule, the memory predictor and the
pipeline workers all run exactly the same step; each passes in how to backward and how to
step an optimizer.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from glcan.core.network import SplitNetwork

Backward = Callable[[torch.Tensor], None]
StepFn = Callable[[int], None]
PhaseFn = Callable[[str, int], None]


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def local_step(
    net: SplitNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    step: StepFn,
    backward: Backward = _plain_backward,
    on_phase: Optional[PhaseFn] = None,
    blocks: Optional[Sequence[int]] = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train every block of ``net`` on one batch, one block at a time.

    Args:
        net: the blocks and their heads.
        x: the input batch; y: its labels.
        step: ``step(k)`` clips, steps and zeroes block k's optimizer (it owns block k and head k).
        backward: how to backpropagate a loss (Lightning's ``manual_backward`` in training).
        on_phase: called as ``on_phase("block", k)`` before block k runs, so a memory meter can
            tell which block sets the peak.
        blocks: the block indices to run (a pipeline worker owns a contiguous range); the
            first one's input is ``x``. Default: all.

    Returns:
        ``[(loss, logits), ...]`` per block run, both detached.
    """
    results = []
    h = x
    for k in blocks if blocks is not None else range(net.num_blocks):
        if on_phase is not None:
            on_phase("block", k)
        h = net.blocks[k](h.detach())  # stop-gradient: loss k never reaches block k-1
        loss, logits = net.heads[k].loss(h, y, x)
        backward(loss)  # block k's graph is freed here, before block k+1 runs
        step(k)
        results.append((loss.detach(), logits.detach()))
    return results


def e2e_loss(net: SplitNetwork, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward through every block (no detach) and the last head's loss."""
    h = x
    for block in net.blocks:
        h = block(h)
    return net.heads[-1].loss(h, y, x)
