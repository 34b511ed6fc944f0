"""The costs behind the ``memory`` split policy: cut where the blocks' training memory is most even.

The peak of local learning is the peak of its heaviest block, so the best split minimises the
largest block's training memory. For every unit we measure, under FakeTensorMode at the
configured batch size, the bytes it saves for backward (``saved_tensors_hooks``, storages
counted once), its output size and its parameters; for every possible cut, the training peak of
the head placed there. A block's cost is then

    saved(units) + 2 x largest activation (the gradients in flight during its backward)
    + its parameters' gradients + the head's peak,

additive over units, so an exact dynamic programme (glcan.core.split.balanced_boundaries)
finds the partition with the smallest maximum. With per-unit checkpointing inside the blocks
(``local_recompute``) a block keeps only its units' inputs (the last unit is not checkpointed)
and recomputes one unit at a time:

    inputs(units but the last) + the largest unit's saved bytes + 2 x largest activation
    + gradients + head.

The last block's head is the backbone's classifier by default (for classification global
pooling and one linear layer: nothing worth counting; a task whose classifier is costly, such
as super-resolution's pixel-shuffle tail working at the high resolution, hands it in as
``classifier`` and it is counted like a head). What stays resident (parameters, optimizer state, the batch) is
the same whatever the split and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from glcan.backbones.fcos import feature
from glcan.core.build import probe_shapes
from glcan.core.split import balanced_boundaries
from glcan.core.step import detach
from glcan.core.task import Classification, Task
from glcan.heads import build_head
from glcan.memory.predictor import as_fake, autocast_for, fake_mode
from glcan.memory.tracker import MemoryTracker


def unit_costs(units: Sequence[nn.Module], image_shape: Sequence[int], batch_size: int,
               precision: str = "32-true") -> list[dict[str, int]]:
    """Per unit, at ``batch_size``: ``saved`` bytes kept for backward, ``out`` and ``in`` bytes of
    its output and input, ``grads`` bytes of its parameters' gradients, and ``footprint``: the
    peak of its own forward and backward alone (input, activations, gradients; no head), which
    the memory report's floor is made of. One pass over the units, under FakeTensorMode; a unit
    without parameters (pooling, dropout) is measured like any other. ``bf16-mixed`` runs the
    forward under autocast, as training does (its saved activations are half the size)."""
    costs = []
    with fake_mode():
        x: State = torch.randn(batch_size, *image_shape)
        for unit in units:
            unit = as_fake(unit)
            # Record sizes only (storages are alive while `out` holds the graph, so ids are unique);
            # keeping the tensors here would make a reference cycle through the hook.
            saved: dict[int, int] = {}
            def pack(t: torch.Tensor) -> torch.Tensor:
                st = t.untyped_storage()
                saved[id(st)] = st.nbytes()
                return t
            unit.train()
            params = [p for p in unit.parameters() if p.requires_grad]
            tracker = MemoryTracker()
            with tracker:
                # The input requires a gradient so that what a unit saves inside a block is seen
                # even for a unit without parameters; the footprint's backward asks for the
                # parameters' gradients only, as a block's first unit (detached input) does.
                inp = _map(lambda t: t.requires_grad_(), detach(x))
                tracker.register(list(_tensors(inp)), "input")
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(precision):
                    out = unit(inp)
                if params:
                    param_grads = torch.autograd.grad(feature(out).float().sum(), params)
                    del param_grads
            grads = sum(p.numel() * p.element_size() for p in params)
            costs.append({"saved": sum(saved.values()), "out": _nbytes(out), "grads": grads, "in": _nbytes(x),
                          "footprint": int(tracker.peak)})
            x = detach(out)
    return costs


State = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # a detector's units carry their kept pyramid levels


def _tensors(state: State) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _map(fn: Any, state: State) -> State:
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


def _nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(state))


def head_peak(head: str | nn.Module, shape: Sequence[Any], num_classes: int, image_shape: Sequence[int],
              batch_size: int, head_kwargs: Optional[dict] = None, task: Optional[Task] = None) -> int:
    """The training peak of one head (a registered name, or a head module) on a feature map of
    ``shape``, beyond the map itself (with the targets of ``task``'s example batch; default
    classification). ``shape`` may be a tuple of shapes: a detector's state (its map and the kept
    pyramid levels), which its neck reads."""
    with fake_mode():
        if isinstance(head, nn.Module):
            head = as_fake(head)
        else:
            head = (task or Classification()).block_head(build_head(
                head, tuple(shape), num_classes, image_shape=tuple(image_shape), block_index=0, num_blocks=2,
                **(head_kwargs or {})))
        nested = len(shape) > 0 and isinstance(shape[0], (tuple, list))
        h: State = tuple(torch.randn(batch_size, *s, requires_grad=True) for s in shape) if nested else \
            torch.randn(batch_size, *shape, requires_grad=True)
        x, y = (task or Classification()).example_batch(batch_size, image_shape, num_classes)
        tracker = MemoryTracker()
        with tracker:
            targets = [t for d in y for t in d.values()] if isinstance(y, list) else [y]
            tracker.register([*_tensors(h), x, *targets], "input")  # a head's views of h must not count h again
            base = tracker.current
            tracker.reset_peak()
            loss, _ = head.loss(h, y, x)
            loss.backward()
        return int(tracker.peak - base)


@dataclass
class SplitCosts:
    """What the ``memory`` split weighs, measured once for a model at a batch size and reused
    for every K: each unit's costs (:func:`unit_costs`), each head's peak by the feature shape it
    reads, and the last block's classifier when it counts."""

    units: list[dict[str, int]]
    shapes: list[tuple[int, ...]]
    heads: dict[tuple[int, ...], int]
    tail: int = 0


def split_costs(
    units: Sequence[nn.Module],
    shapes: Sequence[Sequence[int]],
    *,
    head: str,
    head_kwargs: Optional[dict],
    num_classes: int,
    image_shape: Sequence[int],
    batch_size: int,
    last_head: str = "classifier",
    task: Optional[Task] = None,
    classifier: Optional[nn.Module] = None,
) -> SplitCosts:
    """Measure the costs behind :func:`memory_split` (under FakeTensorMode).

    ``task``: what the heads' targets look like (default classification). ``classifier``: the
    last block's head around the backbone's classifier, when its cost counts (else it is free).
    """
    heads: dict[tuple[int, ...], int] = {}
    for s in shapes:
        if tuple(s) not in heads:
            heads[tuple(s)] = head_peak(head, s, num_classes, image_shape, batch_size, head_kwargs, task)
    tail = 0  # the backbone's classifier, free unless the task hands in a costly one
    if last_head != "classifier":  # the last block trains through an auxiliary head of its own
        tail = heads[tuple(shapes[-1])]
    elif classifier is not None:  # it reads the last unit's whole state (a detector's neck: every kept level)
        state = probe_shapes(units, image_shape, states=True)[-1]
        tail = head_peak(classifier, state, num_classes, image_shape, batch_size, task=task)
    return SplitCosts(unit_costs(units, image_shape, batch_size), [tuple(s) for s in shapes], heads, tail)


def memory_split(costs: SplitCosts, num_blocks: int, recompute: bool = False, shared_gradient: bool = False,
                 lookahead: int = 0) -> list[int]:
    """The boundaries that balance the blocks' predicted training memory (``split: memory``).

    ``lookahead``: that many blocks before the last also hold a momentum copy of their next
    block and its head (glcan.heads.lookahead; -1: every block but the last). A copy's forward
    keeps what the next block's units save, beside the copy's weights and the next head's peak,
    so such a block weighs more the longer its next block is: the split counts it (a rough count,
    so the plan measures this split against the one without the copies).

    ``recompute``: the blocks checkpoint every unit (``local_recompute``). ``shared_gradient``:
    count the gradient a head hands its block once, not in the head's peak and again among the
    two gradients in flight. Neither count is right for every network: under recomputation the
    shared count is closer at ResNet-110 batch 1024 (counted twice, the early blocks looked 60 MB
    heavier than measured, and a later block was let grow past them), the double count elsewhere
    (docs/benchmarks/memory.md). So the plan measures both candidates (glcan.lit.plan).
    """
    c = costs.units
    prefix = [0]
    for u in c:
        prefix.append(prefix[-1] + (u["in"] if recompute else u["saved"]) + u["grads"])

    def block_cost(i: int, j: int) -> float:
        largest = max(u["out"] for u in c[i:j])
        recomputed = max(u["saved"] for u in c[i:j]) - c[j - 1]["in"] if recompute else 0
        head_cost = costs.tail if j == len(c) else costs.heads[costs.shapes[j - 1]]
        shared = min(head_cost, c[j - 1]["out"]) if shared_gradient else 0
        return prefix[j] - prefix[i] + recomputed + 2 * largest + head_cost - shared

    kept = [0]  # a copy keeps what its units save, and holds their weights (no gradients)
    for u in c:
        kept.append(kept[-1] + u["saved"] + u["grads"])

    def copy_cost(j: int, l: int) -> float:  # a copy of block [j, l) and its head, run ahead
        head_cost = costs.tail if l == len(c) else costs.heads[costs.shapes[l - 1]]
        return kept[l] - kept[j] + max(u["out"] for u in c[j:l]) + head_cost

    ahead = num_blocks - 1 if lookahead < 0 else lookahead
    return balanced_boundaries(len(c), num_blocks, block_cost, copy_cost if ahead else None, ahead)
