"""Optimizers and LR schedulers: one of each per block in local mode, one for E2E.

A config names them as ``{class_path, init_args}`` (``configs/optim/``); the command line hands
them to the model as such specs (glcan.cli.cli), and they are built with LightningCLI's own
``instantiate_class``, once per block, so every block (and the E2E baseline) is optimized the
same way unless per-block LR scales say otherwise. The specs are plain values: checkpoints
record them, so ``GLCanModule.load_from_checkpoint(path)`` rebuilds optimizer and schedule and
a plain Lightning resume finds the state it saved. From Python, a callable works too
(``lambda params: torch.optim.SGD(params, lr=0.1)``); it is then not recorded.

A schedule's length is the run's, which a config file cannot know (it depends on the data size,
the batch size and the epochs). The two schedules here are torch's, with the length left open:
:class:`OneCycleLR` (``total_steps``) and :class:`CosineAnnealingLR` (``T_max``) take it from
the trainer, in the unit the schedule is stepped in (batches or epochs), and the one-cycle peak
defaults to each parameter group's own learning rate, so ``--model.optimizer.lr`` and per-block
scales mean what they say.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional, Sequence, Union

import torch
from lightning.pytorch.cli import instantiate_class

from glcan.core.network import SplitNetwork

LENGTH_ARGS = ("total_steps", "T_max")
Spec = Optional[Union[dict, Callable]]  # {class_path, init_args}, or (from Python) a callable
#: What ``optimizer: null`` means: SGD with Nesterov momentum, the local-learning papers' choice.
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.SGD",
                     "init_args": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}}


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


def spec_class(spec: Spec, what: str) -> Optional[type]:
    """The class a ``{class_path, init_args}`` spec names (None for a callable); one line if not."""
    if spec is None or callable(spec):
        return None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{what} must be a class_path/init_args mapping or a callable, got {spec!r}")
    module, _, name = str(spec["class_path"]).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{what}: cannot import {spec['class_path']!r}") from None


def build_optimizer(spec: Spec, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """One optimizer over ``params`` from its spec (the default SGD when None)."""
    spec = DEFAULT_OPTIMIZER if spec is None else spec
    if callable(spec):
        return spec(params)
    spec_class(spec, "model.optimizer")
    return instantiate_class((params,), spec)


def build_scheduler(spec: Spec, optimizer: torch.optim.Optimizer, length: Optional[int]) -> Any:
    """The schedule of ``optimizer``, its length filled in where the spec leaves it open."""
    if callable(spec):
        return spec(optimizer)
    cls = spec_class(spec, "model.scheduler")
    init = dict(spec.get("init_args") or {})
    params = inspect.signature(cls).parameters
    arg = next((a for a in LENGTH_ARGS if a in params and init.get(a) is None), None)
    if arg is not None and length is not None:
        init[arg] = length
    return instantiate_class((optimizer,), {"class_path": spec["class_path"], "init_args": init})


def schedule_length(state: Any) -> Optional[int]:
    """The length a schedule was planned for: of a built scheduler or of its saved state (None
    for schedules without one). The one reader of it (resume checks, pipeline shards)."""
    state = state.state_dict() if hasattr(state, "state_dict") else state
    length = state.get("total_steps") or state.get("T_max")
    return int(length) if length else None


def spec_name(spec: Spec) -> Optional[str]:
    """The optimizer's (or schedule's) class name, e.g. ``SGD``, for checks and summaries."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return str(spec["class_path"]).rsplit(".", 1)[-1]
    target = getattr(spec, "func", spec)
    return getattr(target, "__name__", type(target).__name__)


def plain_spec(spec: Spec) -> Optional[dict]:
    """A spec as a plain, safe record (hparams.yaml), or None for a callable."""
    if not isinstance(spec, dict):
        return None
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (spec.get("init_args") or {}).items()}
    return {"class_path": str(spec["class_path"]), "init_args": args}


def block_optimizers(net: SplitNetwork, spec: Spec, lr_scale: Optional[Sequence[float]] = None) -> list[torch.optim.Optimizer]:
    """One optimizer per block, over the block and its head, learning rates scaled per block."""
    scales = lr_scale or [1.0] * net.num_blocks
    optimizers = []
    for k, (block, head) in enumerate(zip(net.blocks, net.heads)):
        # What a block's optimizer updates: its units and its head, not what is frozen (a head's
        # momentum copy of the next block, the avg pooling's fixed scores).
        opt = build_optimizer(spec, [p for p in (*block.parameters(), *head.parameters()) if p.requires_grad])
        for group in opt.param_groups:
            group["lr"] *= scales[k]
        optimizers.append(opt)
    return optimizers


def step_schedulers(schedulers: Sequence[Any], interval: str, boundary: str) -> None:
    """Step every scheduler whose ``interval`` (``step`` or ``epoch``) ends at ``boundary``
    (``batch`` or ``epoch``): the module's one scheduler clock, in every process of every mode."""
    if (interval == "step") == (boundary == "batch"):
        for s in schedulers:
            s.step()


def optimizer_configs(optimizers: Sequence[torch.optim.Optimizer], scheduler: Spec, interval: str,
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
