"""Optimizers and LR schedulers: one of each per block in local mode, one for E2E.

Both come from LightningCLI's OptimizerCallable / LRSchedulerCallable in the config, so every
block (and the E2E baseline) is optimized the same way unless per-block LR scales say otherwise.

A schedule's length is the run's, which a config file cannot know (it depends on the data size,
the batch size and the epochs). The two schedules here are torch's, with the length left open:
:class:`OneCycleLR` (``total_steps``) and :class:`CosineAnnealingLR` (``T_max``) take it from
the trainer, in the unit the schedule is stepped in (batches or epochs), and the one-cycle peak
defaults to each parameter group's own learning rate, so ``--model.optimizer.lr`` and per-block
scales mean what they say.

Checkpoints record the optimizer and scheduler as ``{class_path, init_args}`` (see
:func:`factory_spec`), so ``GLCanModule.load_from_checkpoint(path)`` rebuilds them and a plain
Lightning resume finds the optimizer state it saved.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, Optional, Sequence

import torch

from glcan.core.network import SplitNetwork

LENGTH_ARGS = ("total_steps", "T_max")


class OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's one-cycle schedule whose length and peak default to the run's.

    Args:
        optimizer: the optimizer.
        max_lr: the peak learning rate; default: each parameter group's ``lr``.
        total_steps: the schedule's length in steps; filled in from the trainer.
        **kwargs: the other arguments of ``torch.optim.lr_scheduler.OneCycleLR``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: Optional[float] = None,
                 total_steps: Optional[int] = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        if total_steps is None:
            raise ValueError("OneCycleLR needs total_steps (glcan fills it in from the trainer)")
        peak = max_lr if max_lr is not None else [g["lr"] for g in optimizer.param_groups]
        super().__init__(optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start,
                         anneal_strategy=anneal_strategy, div_factor=div_factor, final_div_factor=final_div_factor,
                         three_phase=three_phase, last_epoch=last_epoch)


class CosineAnnealingLR(torch.optim.lr_scheduler.CosineAnnealingLR):
    """torch's cosine annealing whose length (``T_max``) defaults to the run's.

    Args:
        optimizer: the optimizer.
        T_max: the schedule's length in steps; filled in from the trainer.
        eta_min: the final learning rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: Optional[int] = None, eta_min: float = 0.0,  # noqa: N803
                 last_epoch: int = -1) -> None:
        if T_max is None:
            raise ValueError("CosineAnnealingLR needs T_max (glcan fills it in from the trainer)")
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min, last_epoch=last_epoch)


def _unwrap(factory: Callable) -> tuple[Any, dict[str, Any]]:
    """(class or function, keyword arguments) behind a factory.

    LightningCLI's callables are ``partial(call, instantiator, Class, **init_args)``; a plain
    ``partial(Class, **kw)`` or a class works too.
    """
    keywords: dict[str, Any] = {}
    target = factory
    while isinstance(target, functools.partial):
        keywords = {**target.keywords, **keywords}
        classes = [a for a in target.args if inspect.isclass(a)]
        target = classes[0] if classes else target.func
    return target, keywords


def schedule_length_arg(factory: Callable) -> Optional[str]:
    """The length argument (``total_steps`` or ``T_max``) the factory leaves for the trainer."""
    target, keywords = _unwrap(factory)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    return next((a for a in LENGTH_ARGS if a in params and keywords.get(a) is None), None)


def build_scheduler(factory: Callable, optimizer: torch.optim.Optimizer, length: Optional[int]) -> Any:
    """``factory(optimizer)``, with the schedule's length filled in when the factory leaves it open."""
    arg = schedule_length_arg(factory)
    if arg is not None and length is not None:
        return factory(optimizer, **{arg: length})
    return factory(optimizer)


def schedule_length(scheduler: Any) -> Optional[int]:
    """The length a built scheduler was planned for (None for schedules without one)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return scheduler.total_steps
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        return scheduler.T_max
    return None


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


def step_schedulers(schedulers: Sequence[Any], interval: str, boundary: str) -> None:
    """Step every scheduler whose ``interval`` (``step`` or ``epoch``) ends at ``boundary``
    (``batch`` or ``epoch``): the one scheduler clock of the module and the pipeline workers."""
    if (interval == "step") == (boundary == "batch"):
        for s in schedulers:
            s.step()


def optimizer_configs(optimizers: Sequence[torch.optim.Optimizer], scheduler: Optional[Callable], interval: str,
                      length: Optional[int]) -> Any:
    """What ``configure_optimizers`` returns; schedulers are named ``lr/block{k}`` (``lr`` for one)."""
    configs = []
    for k, opt in enumerate(optimizers):
        config: dict[str, Any] = {"optimizer": opt}
        if scheduler is not None:
            name = f"lr/block{k}" if len(optimizers) > 1 else "lr"
            config["lr_scheduler"] = {"scheduler": build_scheduler(scheduler, opt, length), "name": name,
                                      "interval": interval}
        configs.append(config)
    return configs if len(configs) > 1 else configs[0]


# ---------------------------------------------------------------- checkpoints describe their optimizer
def factory_spec(factory: Optional[Callable]) -> Optional[dict[str, Any]]:
    """``{"class_path": ..., "init_args": {...}}`` for a class-based factory, else None.

    The arguments are those given (jsonargparse includes the class's defaults), all plain
    values, so the spec is safe in hparams.yaml and rebuilds the same factory.
    """
    if factory is None:
        return None
    if isinstance(factory, dict):
        return factory
    target, keywords = _unwrap(factory)
    if not inspect.isclass(target):
        return None
    plain = (bool, int, float, str, type(None))
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in keywords.items()}
    if not all(isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v)) for v in args.values()):
        return None
    return {"class_path": f"{target.__module__}.{target.__qualname__}", "init_args": args}


def factory_from_spec(spec: Any, what: str) -> Optional[Callable]:
    """The factory a :func:`factory_spec` describes (a callable is returned as it is)."""
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{what} must be a class_path/init_args mapping or a callable, got {spec!r}")
    module, _, name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{what}: cannot import {spec['class_path']!r}") from None
    return functools.partial(cls, **(spec.get("init_args") or {}))


def optimizer_name(factory: Optional[Callable]) -> Optional[str]:
    """The optimizer's class name, e.g. ``SGD``, for checkpoint checks and summaries."""
    if factory is None:
        return None
    target, _ = _unwrap(factory) if not isinstance(factory, dict) else (factory["class_path"], {})
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else getattr(target, "__name__", None)
