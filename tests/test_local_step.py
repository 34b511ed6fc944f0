"""The local training step: gradient isolation, every parameter trained, and the memory it frees."""

from __future__ import annotations

import weakref

import pytest
import torch

from conftest import block_grads
from glcan.core.step import local_step
from glcan.lit import GLCanModule


def make(k: int = 4, head: str = "glcan", split="uniform", backbone: str = "resnet20", **kw) -> GLCanModule:
    torch.manual_seed(0)
    return GLCanModule.planned(backbone=backbone, method="local", num_blocks=k, split=split, head=head,
                               image_shape=(1, 32, 32), num_classes=10, batch_size=8, **kw)


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("target", [0, 2, 3])
def test_block_gradients_come_only_from_its_own_head(target):
    module = make()
    with_all = block_grads(module.net, *batch(), target, silence_others=False)
    only_own = block_grads(make().net, *batch(), target, silence_others=True)
    assert with_all and all(torch.equal(a, b) for a, b in zip(with_all, only_own))
    assert any(g.abs().sum() > 0 for g in with_all)


def test_the_relay_passes_each_heads_state_on_and_no_gradient_back():
    """The collaborative path: head k reads the state head k-1 left for the same batch, and that
    read is detached, so block k-1's gradients still come from its own head only."""
    relay = {"head_kwargs": {"relay": 16}}
    for target in (1, 2):
        with_all = block_grads(make(**relay).net, *batch(), target, silence_others=False)
        only_own = block_grads(make(**relay).net, *batch(), target, silence_others=True)
        assert with_all and all(torch.equal(a, b) for a, b in zip(with_all, only_own))
    net = make(**relay).net
    local_step(net, *batch(), step=lambda k: None)
    box = net.heads[0].mailbox
    assert box is net.heads[2].mailbox and sorted(box) == [0, 1, 2]  # the last block trains through the classifier
    head, context = net.heads[2], torch.randn(8, net.heads[2].relay[0].in_features - 16)
    read = head.relayed(context)
    box[1] = torch.zeros_like(box[1])
    assert not torch.equal(read, head.relayed(context))  # what head 2 computes depends on head 1's state


@pytest.mark.parametrize("head", ["glcan", "linear", "dgl", "infopro"])
def test_every_parameter_of_every_block_and_head_gets_a_gradient(head):
    """timm-style. Two real steps: GCNet's zero-initialised last conv passes zero gradient to
    the layers before it on the very first step, by design, so the check is on the second."""
    module = make(head=head)
    net, optimizers = module.net, module.build_optimizers()
    missing: list[str] = []

    def step(k: int, check: bool) -> None:
        for name, p in [*net.blocks[k].named_parameters(), *net.heads[k].named_parameters()]:
            if p.grad is None or (check and not torch.any(p.grad != 0)):
                missing.append(f"block{k}:{name}")
        optimizers[k].step()
        optimizers[k].zero_grad(set_to_none=True)

    local_step(net, *batch(), step=lambda k: step(k, check=False))
    local_step(net, *batch(), step=lambda k: step(k, check=True))
    assert not missing, missing


class SavedTensorCounter:
    """Bytes of tensors that autograd keeps for backward, alive at once (storages counted once)."""

    def __init__(self) -> None:
        self.current = self.peak = 0
        self._seen: dict[int, list] = {}

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        key = id(st)
        if key not in self._seen:
            entry = self._seen[key] = [st.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry = self._seen[key]
        entry[1] += 1
        box = _Box(t)
        weakref.finalize(box, self._release, key)
        return box

    def _release(self, key: int) -> None:
        entry = self._seen[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._seen[key]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda box: box.t)


class _Box:
    """What autograd holds instead of the saved tensor; it dies when the graph is freed."""

    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def test_local_step_keeps_one_block_of_activations_alive():
    module = make(k=4, head="linear", split="memory")
    net = module.net
    x, y = batch(16)

    def no_update(k: int) -> None:
        for p in module.parameters():
            p.grad = None

    counter = SavedTensorCounter()
    with counter.hooks():
        local_step(net, x, y, step=no_update)
    local_peak = counter.peak

    per_block, h = [], x
    for block, head in zip(net.blocks, net.heads):
        c = SavedTensorCounter()
        with c.hooks():
            h = block(h.detach())
            head.loss(h, y, x)
        per_block.append(c.peak)
    # About the largest block's activations, never the sum of all blocks'.
    assert local_peak <= 1.05 * max(per_block)
    assert local_peak < 0.5 * sum(per_block)


def test_summing_the_losses_would_keep_everything_alive():
    """The counter can tell the difference: one backward over the K losses holds all blocks."""
    module = make(k=4, head="linear", split="memory")
    x, y = batch(16)
    counter = SavedTensorCounter()
    with counter.hooks():
        h, losses = x, []
        for block, head in zip(module.net.blocks, module.net.heads):
            h = block(h.detach())
            losses.append(head.loss(h, y, x)[0])
    single = SavedTensorCounter()
    with single.hooks():
        local_step(module.net, x, y, step=lambda k: None)
    assert counter.peak > 2 * single.peak
