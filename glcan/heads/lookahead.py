"""A head that also looks one block ahead: a momentum copy of the next block (MAN / MLAAN's leap).

A greedy block learns features that suit its own head, not the block after it. The momentum
auxiliary network (MAN) and MLAAN's "leap" path give block k's head a copy of block k+1 whose
parameters follow the real ones as an exponential moving average (no gradient reaches them,
and block k+1 is not changed): block k is trained through its own head *and* through
``next_head(ema(next_block)(h))``, so it learns what the next block can use. No gradient crosses
a block boundary: the copy is block k's private lookahead, refreshed from block k+1 before
each use.

Cost (reported beside the gain in docs/ablation.md): the copy's parameters and buffers are
resident, and each step runs the next block's forward and its input gradient once more.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from glcan.heads.base import AuxHead


def clone_module(module: nn.Module) -> nn.Module:
    """A deep copy whose tensors are cloned by tensor ops, so that it works on real tensors and
    under FakeTensorMode alike (the memory predictor builds networks as fake tensors, which
    ``copy.deepcopy`` cannot copy)."""
    memo: dict[int, torch.Tensor] = {}
    for t in module.parameters():
        memo[id(t)] = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
    for t in module.buffers():
        memo[id(t)] = t.detach().clone()
    return copy.deepcopy(module, memo)


class LookaheadHead(AuxHead):
    """Block k's head plus a momentum copy of block k+1 and its head.

    Args:
        head: block k's own head (its output is the block's prediction).
        next_block: block k+1 (the live one; only read).
        next_head: block k+1's head (a ``LookaheadHead``'s own head is used: one step ahead only).
        momentum: EMA momentum of the copy: ``copy = m * copy + (1 - m) * live`` before each use;
            0 uses the next block's current weights.
    """

    def __init__(self, head: nn.Module, next_block: nn.Module, next_head: nn.Module, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"lookahead momentum must be in [0, 1), got {momentum}")
        inner = next_head.head if isinstance(next_head, LookaheadHead) else next_head
        self.head = head
        self.ema_block, self.ema_head = clone_module(next_block), clone_module(inner)
        for p in [*self.ema_block.parameters(), *self.ema_head.parameters()]:
            p.requires_grad_(False)
        self._live = (next_block, inner)  # a tuple: not registered, so not trained or saved twice
        self.momentum = momentum
        self.needs_input = getattr(head, "needs_input", False)

    @torch.no_grad()
    def refresh(self) -> None:
        """Move the copy towards the live block and head (buffers are copied)."""
        for copy_, live in zip((self.ema_block, self.ema_head), self._live):
            for e, v in zip([*copy_.parameters(), *copy_.buffers()], [*live.parameters(), *live.buffers()]):
                if e.is_floating_point():
                    e.lerp_(v, 1.0 - self.momentum)
                else:
                    e.copy_(v)

    def forward(self, h: torch.Tensor, *x: torch.Tensor) -> torch.Tensor:
        return self.head(h, *x)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block k's own loss plus the loss of the next block's copy on its output."""
        if self.training and torch.is_grad_enabled():
            self.refresh()
        own, out = self.head.loss(h, y, x)
        ahead, _ = self.ema_head.loss(self.ema_block(h), y, x)
        return own + ahead, out
