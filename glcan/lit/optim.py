"""Optimizers and LR schedulers: one of each per block in local mode, one for E2E.

Both come from LightningCLI's OptimizerCallable / LRSchedulerCallable in the config, so every
block (and the E2E baseline) is optimized the same way unless per-block LR scales say otherwise.

Schedulers such as OneCycleLR need the run's total number of steps, which a config file cannot
know (it depends on the data size, batch size and epochs). If the scheduler accepts
``total_steps`` and the config left it out, we pass Lightning's ``estimated_stepping_batches``
(batches, the same for E2E and local runs: see GLCanModule._block_step).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Sequence

import torch

from glcan.core.network import SplitNetwork


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


def block_optimizers(net: SplitNetwork, factory: Callable, lr_scale: Optional[Sequence[float]] = None) -> list[torch.optim.Optimizer]:
    """One optimizer per block, over the block and its head, learning rates scaled per block."""
    scales = lr_scale or [1.0] * net.num_blocks
    optimizers = []
    for k, (block, head) in enumerate(zip(net.blocks, net.heads)):
        opt = factory([*block.parameters(), *head.parameters()])
        for group in opt.param_groups:
            group["lr"] *= scales[k]
        optimizers.append(opt)
    return optimizers


def optimizer_configs(optimizers: Sequence[torch.optim.Optimizer], scheduler: Optional[Callable], interval: str,
                      total_steps: Optional[int]) -> Any:
    """What ``configure_optimizers`` returns; schedulers are named ``lr/block{k}`` (``lr`` for one)."""
    configs = []
    for k, opt in enumerate(optimizers):
        config: dict[str, Any] = {"optimizer": opt}
        if scheduler is not None:
            name = f"lr/block{k}" if len(optimizers) > 1 else "lr"
            config["lr_scheduler"] = {"scheduler": build_scheduler(scheduler, opt, total_steps), "name": name,
                                      "interval": interval}
        configs.append(config)
    return configs if len(configs) > 1 else configs[0]
