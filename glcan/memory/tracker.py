"""An exact tensor-level memory meter that works on any device, and under FakeTensorMode.

Every tensor produced by an operator is seen by ``__torch_dispatch__``; we count the bytes of
its *storage* once (views share storage) and subtract them when a weak reference to that
storage dies. The running sum is the memory that tensors hold at that instant, and its maximum
is the peak. This is what ``torch.cuda.max_memory_allocated`` measures on a GPU, minus the
allocator's rounding and the kernels' workspaces; process RSS is not used because it mixes in
the allocator, the interpreter and freed-but-cached pages.

Each live storage carries a category (parameters, gradients, optimizer_state, activations,
heads, input), so the peak can be broken into parts, and the meter knows which block was
running when the peak was reached.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from glcan.core.network import SplitNetwork

CATEGORIES = ("parameters", "gradients", "optimizer_state", "input", "activations", "heads")


class MemoryTracker(TorchDispatchMode):
    """Counts the bytes of all tensor storages alive at once while the mode is active.

    Tensors that already exist when the mode starts (parameters, gradients, optimizer state,
    the batch) are not seen by the dispatcher: register them with :meth:`register`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.category = "activations"  # label for storages created from now on
        self.phase: Optional[int] = None  # the block running now
        self.current = 0
        self.by_category: dict[str, int] = defaultdict(int)
        self.reset_peak()

    def reset_peak(self) -> None:
        """Start a new measurement window; the peak restarts from what is alive now."""
        self.peak = getattr(self, "current", 0)
        self.peak_parts = dict(getattr(self, "by_category", {}))
        self.peak_phase = self.phase
        self.phase_peaks: dict[Optional[int], int] = {}

    # ---------------------------------------------------------------- counting
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t, self.category)
        return out

    def register(self, tensors: Iterable[Any], category: str) -> None:
        """Count tensors that were created before the mode started (or relabel them); nested
        containers (a detector's targets: a list of dicts of tensors) are searched for them."""
        for t in tree_leaves(list(tensors)):
            if isinstance(t, torch.Tensor):
                self._add(t, category, relabel=True)

    def _add(self, t: torch.Tensor, category: str, relabel: bool = False) -> None:
        storage = t.untyped_storage()
        entry = self._live.get(storage)
        if entry is not None:
            if relabel and entry[1] != category:
                self.by_category[entry[1]] -= entry[0]
                self.by_category[category] += entry[0]
                entry[1] = category
            return
        entry = [storage.nbytes(), category]
        self._live[storage] = entry
        weakref.finalize(storage, self._free, entry)
        self.current += entry[0]
        self.by_category[category] += entry[0]
        if self.current > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.current
        if self.current > self.peak:
            self.peak, self.peak_phase = self.current, self.phase
            self.peak_parts = dict(self.by_category)

    def _free(self, entry: list) -> None:
        self.current -= entry[0]
        self.by_category[entry[1]] -= entry[0]

    @contextmanager
    def labelled(self, category: str) -> Iterator[None]:
        """Label the storages created inside the block with ``category``."""
        previous, self.category = self.category, category
        try:
            yield
        finally:
            self.category = previous


@contextmanager
def watch_network(tracker: MemoryTracker, net: SplitNetwork, optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """Attach the tracker to a network: register its state, tell it which block runs (so it
    knows which one sets the peak), label head activations, gradients and optimizer state."""
    optimizers = list(optimizers)
    params = list(net.parameters())
    tracker.register(params, "parameters")
    tracker.register(net.buffers(), "parameters")
    tracker.register((p.grad for p in params), "gradients")
    tracker.register(optimizer_state_tensors(optimizers), "optimizer_state")
    handles = []

    def set_phase(k: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            tracker.phase = k
        return hook

    def head_start(module, args):  # noqa: ANN001, ANN202
        tracker.category = "heads"

    def head_end(module, args, output):  # noqa: ANN001, ANN202
        tracker.category = "activations"

    def grad_done(p: torch.Tensor) -> None:
        tracker.register([p.grad], "gradients")

    for k, block in enumerate(net.blocks):
        handles.append(block.register_forward_pre_hook(set_phase(k)))
    for head in net.heads:
        handles.append(head.register_forward_pre_hook(head_start))
        handles.append(head.register_forward_hook(head_end))
    handles += [p.register_post_accumulate_grad_hook(grad_done) for p in params if p.requires_grad]
    # Optimizer state is labelled by what it is, after each step, not by when it was made:
    # Lightning's automatic optimization runs the whole forward and backward inside
    # ``optimizer.step(closure)``, so a label switched on at the step would call E2E's
    # activations optimizer state.
    for opt in optimizers:
        handles.append(opt.register_step_post_hook(
            lambda o, *a: tracker.register(optimizer_state_tensors([o]), "optimizer_state")))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def optimizer_state_tensors(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[torch.Tensor]:
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    yield v
