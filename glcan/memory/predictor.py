"""Predict the training memory of any config without allocating it.

The network, its optimizers and one batch are built under ``FakeTensorMode``: tensors carry
shapes and dtypes but no data, so ResNet-110 at batch 1024 costs nothing to "allocate". Two
training steps run (the first creates gradients and optimizer state, the second is the steady
state that is reported), through the very step training uses (``local_step``, E2E being one
block) and measured by the very meter a training run carries (``PeakMeter``, whose CPU path is
the exact tensor tracker). On real tensors the same code is the CPU meter, which is how the
two are tested against each other.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import (DataDependentOutputException, FakeTensor, FakeTensorMode,
                                           unset_fake_temporarily)
from torch import nn

from glcan.core.step import BlockUpdate, local_step
from glcan.core.task import Classification
from glcan.memory.meter import PeakMeter


@dataclass
class MemoryEstimate:
    """The steady-state peak of one training step, and where it comes from."""

    method: str
    num_blocks: int
    boundaries: list[int]
    peak_bytes: int
    parts: dict[str, int]
    peak_block: Optional[int]
    block_peaks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, meter: PeakMeter, model: Any) -> "MemoryEstimate":
        """The estimate a meter recorded for ``model`` (its method, K and boundaries as built)."""
        r = meter.result()
        net = model.net
        k = net.num_blocks
        return cls(method=model.method, num_blocks=k, boundaries=list(net.boundaries), peak_bytes=int(r["peak_memory_bytes"]),
                   parts=dict(r["memory_parts"] or {}), peak_block=r["memory_peak_block"],
                   block_peaks=[int(b) for b in r["memory_block_peaks"] or [0] * k])


class _FakeTensorMode(FakeTensorMode):
    """FakeTensorMode that asks once whether an accelerator exists. torch asks on every operator
    (``avoid_device_init``), and without a GPU each answer probes NVML again: a fifth of a
    prediction's time. The answer cannot change while one mode runs."""

    @functools.cached_property
    def avoid_device_init(self) -> bool:  # type: ignore[override]
        return FakeTensorMode.avoid_device_init.fget(self)


@contextmanager
def fake_mode() -> Iterator[Optional[FakeTensorMode]]:
    """A FakeTensorMode, or the one already active (the predictor builds models that compute
    their own memory split, and the two must share one mode)."""
    active = detect_fake_mode()
    if active is None:
        # FakeTensorMode's dispatch cache is shared by every mode in the process; an entry left by
        # an earlier prediction has crashed a later backward (heap corruption in torch 2.14's
        # autograd engine), so each new mode starts with an empty cache.
        FakeTensorMode.cache_clear()
    with nullcontext(active) if active is not None else _FakeTensorMode() as mode:
        yield mode


def as_fake(module: nn.Module) -> nn.Module:
    """A fake copy of a real module (call under ``fake_mode()``); a fake module is returned as is.

    Running real modules on fake inputs would let BatchNorm write fake values into real running
    statistics, so the real module is copied outside the fake mode and its tensors converted.
    """
    mode = detect_fake_mode()
    tensors = [*module.parameters(), *module.buffers()]
    if mode is None or not tensors or isinstance(tensors[0], FakeTensor):
        return module
    with unset_fake_temporarily():
        copy = deepcopy(module)
    # Fresh fake tensors of the same shapes (values do not matter to memory); converting the real
    # ones with mode.from_tensor would tie the fake mode to them.
    return copy._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype))


def autocast_for(precision: str, device_type: str = "cpu") -> Any:
    """The autocast a Lightning run of ``precision`` trains under (``bf16-mixed``), else a no-op."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()


def build_fake(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under the active fake mode; a module whose initialisation reads its own values
    (torchvision's ViT draws its patch projection with ``trunc_normal_``, which checks its samples)
    cannot be built fake, so it is built real and copied as fake tensors (:func:`as_fake`)."""
    try:
        return build()
    except DataDependentOutputException:
        with unset_fake_temporarily():
            real = build()
        return as_fake(real)


def measure_steps(model: Any, x: torch.Tensor, y: torch.Tensor, steps: int = 2, precision: str = "32-true") -> MemoryEstimate:
    """Train ``model`` (anything with ``net``, ``method`` and ``build_optimizers()``: a GLCanModule or the
    planner's Trainable) for ``steps`` steps of :func:`~glcan.core.step.local_step` (every method:
    E2E is one block) with the same :class:`BlockUpdate` as training, the last step under the
    same :class:`~glcan.memory.meter.PeakMeter` a training run uses; real or fake tensors.
    ``bf16-mixed`` runs the steps under autocast, as Lightning does."""
    autocast = autocast_for(precision, x.device.type)
    net = model.net
    net.train()
    optimizers = model.build_optimizers()
    update = BlockUpdate(optimizers)
    meter = PeakMeter(x.device)
    for i in range(steps):
        with meter.measure(net, optimizers, [x, y]) if i == steps - 1 else nullcontext(), autocast:
            local_step(net, x, y, step=update)
    return MemoryEstimate.of(meter, model)


def example_batch(module: Any, batch_size: int, image_shape: Sequence[int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the shapes ``module``'s task trains on (its ``task``; classification without one)."""
    return getattr(module, "task", Classification()).example_batch(batch_size, image_shape, num_classes)


def predict(
    build: Callable[[], Any], batch_size: int, image_shape: Sequence[int], num_classes: int, steps: int = 2,
    precision: str = "32-true",
) -> MemoryEstimate:
    """Predict the peak memory of training the model that ``build()`` returns.

    Args:
        build: makes the model (``net`` and ``build_optimizers()``; called under FakeTensorMode:
            nothing is allocated).
        batch_size: the batch size to predict for.
        image_shape: (C, H, W) of one input.
        num_classes: for the fake labels (the targets come from the module's task).
        steps: training steps to run; the last is reported (2: the first creates optimizer state).
        precision: ``32-true`` or ``bf16-mixed`` (autocast).
    """
    with fake_mode():
        module = build()
        x, y = example_batch(module, batch_size, image_shape, num_classes)
        return measure_steps(module, x, y, steps=steps, precision=precision)


def count_step_flops(build: Callable[[], Any], batch_size: int, image_shape: Sequence[int], num_classes: int) -> int:
    """FLOPs of one training step of the module ``build()`` returns (forward, backward, and the
    forward recomputed by checkpointing), counted by ``FlopCounterMode`` under FakeTensorMode:
    the relative step time the memory report quotes when no measurement exists."""
    from torch.utils.flop_counter import FlopCounterMode

    with fake_mode():
        model = build()
        model.net.train()
        update = BlockUpdate(model.build_optimizers())
        x, y = example_batch(model, batch_size, image_shape, num_classes)
        with FlopCounterMode(display=False) as counter:
            local_step(model.net, x, y, step=update)
    return int(counter.get_total_flops())
