"""Building LR schedulers from LightningCLI's LRSchedulerCallable.

Schedulers such as OneCycleLR need the run's total number of steps, which a config file cannot
know (it depends on the data size, batch size and epochs). If the scheduler accepts
``total_steps`` and the config left it out, we pass Lightning's ``estimated_stepping_batches``
(batches, the same for E2E and local runs: see GLCanModule._block_step).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import torch


def _accepts_total_steps(factory: Callable) -> bool:
    target = factory
    while isinstance(target, functools.partial):
        if target.keywords.get("total_steps") is not None:
            return False
        # LightningCLI's callables are partial(instantiator, SchedulerClass, **init_args)
        classes = [a for a in target.args if inspect.isclass(a)]
        target = classes[0] if classes else target.func
    try:
        return "total_steps" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def build_scheduler(factory: Callable, optimizer: torch.optim.Optimizer, total_steps: Optional[int]) -> Any:
    """``factory(optimizer)``, with ``total_steps`` filled in when the scheduler needs it."""
    if total_steps is not None and _accepts_total_steps(factory):
        return factory(optimizer, total_steps=total_steps)
    return factory(optimizer)
