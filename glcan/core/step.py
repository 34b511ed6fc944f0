"""The local training step: the centre of glcan.

One batch, K blocks. Block k sees block k-1's output *detached*, so no gradient ever crosses a
block boundary; it is updated from its own head's loss alone, and its backward runs (and its
graph is freed) before block k+1's forward starts. That ordering is the whole memory saving:
summing the K losses into one backward gives the same gradients but keeps every block's
activations alive at once, which saves nothing.

Every method runs this step: end-to-end training is the network as one block whose head is the
backbone's classifier (``e2e_recompute`` and ``local_recompute`` only recompute inside their
blocks). Everything here is plain PyTorch, so the LightningModule (in every process and every
pipeline stage), the memory predictor and the benchmarks all run exactly the same step and the
same block update; each only says how to backward and how to step an optimizer.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from glcan.core.network import SplitNetwork

Backward = Callable[[torch.Tensor], None]
StepFn = Callable[[int], None]
State = Union[torch.Tensor, tuple[torch.Tensor, ...]]
PhaseFn = Callable[[str, int], None]


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def detach(h: State) -> State:
    """A block's output cut from its graph. Usually one map; a detector's blocks also carry the
    pyramid levels kept so far (``(h, C3, ...)``, glcan.backbones.fcos), and all are cut."""
    return tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()


def local_step(
    net: SplitNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    step: StepFn,
    backward: Backward = _plain_backward,
    on_phase: Optional[PhaseFn] = None,
    blocks: Optional[Sequence[int]] = None,
    h: Optional[torch.Tensor] = None,
    send: Optional[Callable[[torch.Tensor], None]] = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train every block of ``net`` on one batch, one block at a time.

    Args:
        net: the blocks and their heads.
        x: the input batch; y: its targets.
        step: ``step(k)`` updates block k and head k (a :class:`BlockUpdate`).
        backward: how to backpropagate a loss (Lightning's ``manual_backward`` in training).
        on_phase: called as ``on_phase("block", k)`` before block k runs, so a meter can tell
            which block sets the peak, or a timer what each block costs.
        blocks: the block indices to run (a pipeline stage owns a contiguous range). Default: all.
        h: the first block's input when it is not ``x``: a pipeline stage's, received from the
            stage before (the heads still get ``x``, the network's input, for InfoPro and SR).
        send: called with the last block's output as soon as its forward has made it, before
            the backward: a pipeline stage passes it on, so the next stage starts at once.

    Returns:
        ``[(loss, output), ...]`` per block run, both detached.
    """
    results = []
    h = x if h is None else h
    run = list(blocks) if blocks is not None else list(range(net.num_blocks))
    for k in run:
        if on_phase is not None:
            on_phase("block", k)
        h = net.blocks[k](detach(h))  # stop-gradient: loss k never reaches block k-1
        if send is not None and k == run[-1]:
            send(detach(h))
        loss, out = net.heads[k].loss(h, y, x)
        backward(loss)  # block k's graph is freed here, before block k+1 runs
        step(k)
        results.append((loss.detach(), out.detach()))
    return results


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the gradient norm of the parameters one optimizer updates (plain PyTorch)."""
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm)


class BlockUpdate:
    """Clip, step and zero block k's optimizer: the one update every path applies.

    Zeroing right after the step frees block k's gradients before block k+1 runs, which is
    part of the memory saving. Lightning passes its own ``clip`` (precision-aware) and
    ``step`` (it counts only one optimizer step per batch); elsewhere plain PyTorch is used.

    Args:
        optimizers: one per block, indexed by block.
        clip_val: clip each block's gradient norm to this value (None: no clipping).
        average: ``average(params)`` before clipping: data-parallel replicas average the
            block's gradients (glcan.lit.pipeline); default: nothing.
        clip: ``clip(optimizer, clip_val)``; default :func:`clip_grad_norm`.
        step: ``step(optimizer, k)``; default ``optimizer.step()``.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], clip_val: Optional[float] = None,
                 clip: Optional[Callable[[torch.optim.Optimizer, float], None]] = None,
                 step: Optional[Callable[[torch.optim.Optimizer, int], None]] = None,
                 average: Optional[Callable[[list], None]] = None) -> None:
        self.optimizers, self.clip_val, self._average = optimizers, clip_val, average
        self._clip = clip or clip_grad_norm
        self._step = step or (lambda opt, k: opt.step())

    def __call__(self, k: int) -> None:
        opt = self.optimizers[k]
        if self._average is not None:
            self._average([p for g in opt.param_groups for p in g["params"]])
        if self.clip_val:
            self._clip(opt, self.clip_val)
        self._step(opt, k)
        opt.zero_grad(set_to_none=True)


class NonFiniteLoss(FloatingPointError):
    """A block's loss became NaN or infinite; the message names the block and the step."""


def check_finite(losses: Sequence[torch.Tensor], step: int, blocks: Optional[Sequence[int]] = None) -> None:
    """Raise :class:`NonFiniteLoss` naming the first block whose loss is not finite.

    One check per batch, not per block: on a GPU each check waits for the device.
    """
    finite = torch.isfinite(torch.stack([loss.float() for loss in losses]))
    if bool(finite.all()):
        return
    i = int((~finite).nonzero()[0, 0])
    k = blocks[i] if blocks is not None else i
    raise NonFiniteLoss(
        f"the loss of block {k} is {float(losses[i])} at step {step}: training stopped and the last checkpoint "
        "was kept; lower the learning rate (model.optimizer.lr), clip gradients (model.gradient_clip_val) "
        "or, under 16-bit precision, use trainer.precision 32-true")
