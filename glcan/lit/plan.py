"""Plan, then build: the choices that need the memory predictor, made before the model exists.

Two settings of a model are answers to memory questions, not structure:

- ``split: memory``: where to cut the units so that the heaviest block is as light as possible
  (glcan.memory.costs measures every unit and head under FakeTensorMode);
- ``num_blocks: auto``: which method and K fit ``memory_budget``, ranked by ``memory_policy``
  (glcan.memory.budget.frontier: the same frontier ``train.py memory --budget`` prints).

:func:`plan` turns them into explicit ``method``, ``num_blocks`` and ``boundaries``;
``GLCanModule.__init__`` then only builds (``GLCanModule.planned(**arguments)`` does both, and
the command line instantiates the model through it). A planned model records its boundaries
in its hyperparameters, so a checkpoint rebuilds it without planning again.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch._guards import detect_fake_mode

from glcan.core.build import METHODS, build_network, is_local, probe_shapes
from glcan.core.network import SplitNetwork
from glcan.core.task import Task, get_task
from glcan.lit.optim import Spec, block_optimizers, spec_class
from glcan.memory.budget import GIB, BudgetError, frontier, need, parse_bytes
from glcan.memory.costs import SplitCosts, memory_split, split_costs
from glcan.memory.predictor import as_fake, build_fake, count_step_flops, fake_mode, predict
from glcan.memory.report import largest_unit_footprint

@dataclass
class Trainable:
    """A model's plain-PyTorch parts: the network, its task, and how its optimizers are made.

    ``GLCanModule`` is built around one; the memory predictor trains one directly (under
    FakeTensorMode), so it runs the very network and optimizers training uses, without Lightning.
    """

    net: SplitNetwork
    task: Task
    method: str
    backbone_name: str
    optimizer: Spec
    block_lr_scale: Optional[list[float]] = None

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per block (over the block and its head); E2E has one block."""
        return block_optimizers(self.net, self.optimizer, self.block_lr_scale)


def assemble(arguments: dict[str, Any]) -> Trainable:
    """Build the parts that planned ``arguments`` describe (nothing is measured here).

    Under FakeTensorMode (the predictor) a user's own network, given as module objects, is
    copied as fake tensors first, so predicting allocates nothing and leaves it untouched.
    """
    a = arguments
    task = get_task(a.get("task", "classification"))
    method, spec = a.get("method", "local"), a.get("backbone", "resnet20")
    if detect_fake_mode() is not None:
        if isinstance(spec, nn.Module):
            spec = as_fake(spec)
        elif isinstance(spec, (list, tuple)):
            spec = [as_fake(m) for m in spec]
    if is_local(method):
        task.check_head(a.get("head", "glcan"))
    num_classes, image_shape = int(a.get("num_classes", 10)), tuple(a.get("image_shape", (3, 32, 32)))
    built = _backbone({**a, "backbone": spec})
    k = int(a.get("num_blocks", 4)) if is_local(method) else 1
    boundaries = a.get("boundaries")
    net = build_network(built, method, num_blocks=k, split=boundaries if boundaries is not None else a.get("split", "memory"),
                        head=a.get("head", "glcan"), head_kwargs=task.head_kwargs(a.get("head_kwargs")),
                        num_classes=num_classes, image_shape=image_shape, last_head=a.get("last_head", "classifier"),
                        classifier_head=task.classifier_head, block_head=task.block_head,
                        lookahead=int(a.get("lookahead", 0) or 0), lookahead_momentum=float(a.get("lookahead_momentum", 0.9)))
    scale = a.get("block_lr_scale")
    if scale is not None and len(scale) != net.num_blocks:
        raise ValueError(f"model.block_lr_scale has {len(scale)} entries, need one per block ({net.num_blocks})")
    spec_class(a.get("optimizer"), "model.optimizer")  # one line for a class that cannot be imported
    return Trainable(net, task, method, built.name, a.get("optimizer"), scale)




def needs_plan(arguments: dict[str, Any]) -> bool:
    """Whether these model arguments leave a choice to the planner."""
    if not is_local(arguments.get("method", "local")):
        return False
    k = arguments.get("num_blocks", 4)
    return k == "auto" or (arguments.get("split", "memory") == "memory" and arguments.get("boundaries") is None
                           and int(k) > 1)


# ---------------------------------------------------------------- measured once per process
# Planning measures models under FakeTensorMode: seconds per measurement. With a named backbone
# every measurement is a pure function of plain arguments, and a process asks for the same ones
# many times (the budget frontier tries each K, then `memory` reports the same methods; a compare
# grid and its seeds plan one model again and again). So each is measured once per process.
_MEASURED: dict[tuple[str, str], Any] = {}
# How a model is chosen, not what it is: the same model measured under another budget or policy
# is the same measurement.
_PLANNING_ONLY = ("memory_budget", "memory_policy")


@contextmanager
def _one_fake_mode(arguments: dict[str, Any]) -> Iterator[None]:
    """Run all of one planning question's measurements in one FakeTensorMode. Each prediction
    would otherwise open its own mode and start with an empty dispatch cache (see
    ``glcan.memory.predictor.fake_mode``); the candidates of a budget frontier run the same
    operators on the same shapes, so one mode's cache serves them all: the same bytes, in
    less time. A user's own network (module objects, real tensors) is
    measured as before, each prediction in its own mode."""
    with fake_mode() if isinstance(arguments.get("backbone", "resnet20"), str) else nullcontext():
        yield


def _once(kind: str, arguments: dict[str, Any], measure: Callable[[], Any], *extra: Any) -> Any:
    """``measure()``, remembered under ``kind`` and the plain ``arguments``; a copy is returned.
    A user's own network (a module or class_path rather than a name) is measured every time."""
    if not isinstance(arguments.get("backbone", "resnet20"), str):
        return measure()
    model = {k: v for k, v in arguments.items() if k not in _PLANNING_ONLY}
    try:
        key = (kind, json.dumps([model, *extra], sort_keys=True))
    except TypeError:  # an option given as an object
        return measure()
    if key not in _MEASURED:
        if len(_MEASURED) > 512:
            _MEASURED.clear()
        _MEASURED[key] = measure()
    return copy.deepcopy(_MEASURED[key])


# What the memory split's costs depend on (K and the method only choose among them).
_COST_KEYS = ("task", "image_shape", "num_classes", "backbone", "small_input", "head", "head_kwargs", "last_head",
              "batch_size")


def memory_boundaries(arguments: dict[str, Any]) -> list[int]:
    """The ``split: memory`` boundaries for these arguments (method, K, head, batch size, ...)."""
    k = int(arguments["num_blocks"])
    if k == 1:
        return []
    costs = _once("split costs", {key: arguments.get(key) for key in _COST_KEYS}, lambda: _split_costs(arguments))
    ahead = int(arguments.get("lookahead", 0) or 0)
    recompute = arguments["method"] == "local_recompute"
    # The additive cost model ranks blocks less well in two cases (glcan.memory.costs): under
    # recomputation its two counts of the head's gradient can disagree, and a lookahead's copy of
    # the next block is a rough count. Where the model's candidates differ (each count; with and
    # without the copies), the predictor measures them and the lower peak wins; the chosen
    # split's measurement is the one the report reuses.
    candidates: list[list[int]] = []
    for shared in ((False, True) if recompute else (False,)):
        for copies in dict.fromkeys((ahead, 0)):
            split = memory_split(costs, k, recompute=recompute, shared_gradient=shared, lookahead=copies)
            if split not in candidates:
                candidates.append(split)
    if len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=lambda b: predicted_peak({"image_shape": [3, 32, 32], **arguments, "boundaries": b}).peak_bytes)


def _backbone(arguments: dict[str, Any]) -> Any:
    """The backbone that ``arguments`` name (fake tensors under a fake mode: build_fake)."""
    task = get_task(arguments.get("task", "classification"))
    return build_fake(lambda: task.backbone(arguments.get("backbone", "resnet20"), int(arguments.get("num_classes", 10)),
                                            tuple(arguments.get("image_shape", (3, 32, 32))), arguments.get("small_input")))


def _split_costs(arguments: dict[str, Any]) -> SplitCosts:
    task = get_task(arguments.get("task", "classification"))
    image_shape = tuple(arguments.get("image_shape", (3, 32, 32)))
    num_classes = int(arguments.get("num_classes", 10))
    backbone = _backbone(arguments)
    units = list(backbone.units)
    head = arguments.get("head", "glcan")
    task.check_head(head)
    # The last block's classifier counts where it is costly (super-resolution's tail at HR).
    classifier = task.classifier_head(backbone.classifier) if task.costly_classifier else None
    return split_costs(units, probe_shapes(units, image_shape), head=head,
                       head_kwargs=task.head_kwargs(arguments.get("head_kwargs")), num_classes=num_classes,
                       image_shape=image_shape, batch_size=int(arguments.get("batch_size", 128)),
                       last_head=arguments.get("last_head", "classifier"), task=task, classifier=classifier)


def plan(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with ``num_blocks: auto`` and ``split: memory`` resolved.

    Args:
        arguments: GLCanModule's init arguments (``num_classes``, ``image_shape``, ``task`` and
            ``batch_size`` as the data sets them).

    Returns:
        The same arguments with explicit ``method``, ``num_blocks`` and ``boundaries``.
    """
    args = dict(arguments)
    if not needs_plan(args):
        return args
    # Planning builds networks to measure them; it must not draw from the random generator, or
    # a planned local model would start from other weights than E2E at the same seed.
    with torch.random.fork_rng(devices=[]), _one_fake_mode(args):
        return _plan(args)


def _plan(args: dict[str, Any]) -> dict[str, Any]:
    if args.get("num_blocks") == "auto":
        budget = args.get("memory_budget")
        if budget is None:
            raise ValueError("model.num_blocks is 'auto' but model.memory_budget is not set (e.g. --model.memory_budget 4GiB)")
        answer = budget_frontier(args, budget, args.get("memory_policy", "accuracy"))
        choice = answer["choice"]
        if choice is None:
            raise BudgetError(
                f"model.memory_budget {parse_bytes(budget) / GIB:.2f} GiB is too small even with one unit per block "
                f"and recomputation (local_recompute K={answer['num_units']}): it needs {answer['least_need'] / GIB:.2f} "
                "GiB; lower data.batch_size or data.image_size, or use trainer.precision bf16-mixed")
        rank_zero_info(f"memory budget {parse_bytes(budget) / GIB:.2f} GiB, policy {answer['prefer']}: "
                       f"{choice['method']}" + (f" K={choice['num_blocks']}" if is_local(choice["method"]) else "")
                       + f" fits (predicted peak {choice['peak_bytes'] / GIB:.3f} GiB, {need(choice['peak_bytes']) / GIB:.3f} "
                       f"GiB with margins; step time x{choice['relative_time']:.2f} of E2E by counted FLOPs)")
        args.update(method=choice["method"], num_blocks=choice["num_blocks"], boundaries=choice.get("boundaries"))
        return args
    args["boundaries"] = memory_boundaries(args)
    return args


def variant(arguments: dict[str, Any], method: str, num_blocks: int) -> dict[str, Any]:
    """The planned arguments of another method or K of the same model (its own memory split)."""
    args = {**arguments, "method": method, "num_blocks": num_blocks if is_local(method) else 1, "boundaries": None}
    if not is_local(method):
        return args
    if isinstance(arguments.get("split"), list):  # an explicit split fits one K only
        args["split"] = arguments["split"] if len(arguments["split"]) + 1 == num_blocks else "memory"
    if args.get("split") == "memory" and num_blocks > 1:
        args["boundaries"] = memory_boundaries(args)
    return args


def predicted_peak(arguments: dict[str, Any], precision: Optional[str] = None) -> Any:
    """The predictor's estimate for planned arguments (a MemoryEstimate)."""
    precision = precision or arguments.get("precision", "32-true")
    return _once("peak", arguments, lambda: predict(
        lambda: assemble(arguments), int(arguments.get("batch_size", 128)), arguments["image_shape"],
        int(arguments.get("num_classes", 10)), precision=precision), precision)


def budget_frontier(arguments: dict[str, Any], budget: Any, prefer: str) -> dict[str, Any]:
    """Every method that fits ``budget`` and the one ``prefer`` picks (glcan.memory.budget.frontier),
    each local candidate with its own memory split: the one budget answer of ``memory --budget``
    and ``num_blocks: auto``. The choice carries its ``boundaries``."""
    with _one_fake_mode(arguments):
        return _budget_frontier(arguments, budget, prefer)


def _budget_frontier(arguments: dict[str, Any], budget: Any, prefer: str) -> dict[str, Any]:
    planned: dict[tuple[str, int], dict[str, Any]] = {}
    peaks: dict[tuple[str, int], int] = {}

    def args_of(method: str, k: int) -> dict[str, Any]:
        if (method, k) not in planned:
            planned[(method, k)] = variant(arguments, method, k)
        return planned[(method, k)]

    def peak_of(method: str, k: int) -> int:
        if (method, k) not in peaks:
            peaks[(method, k)] = predicted_peak(args_of(method, k)).peak_bytes
        return peaks[(method, k)]

    def flops(method: str, k: int) -> int:
        a = args_of(method, k)
        return _once("flops", a, lambda: count_step_flops(lambda: assemble(a), int(a.get("batch_size", 128)),
                                                          a["image_shape"], int(a.get("num_classes", 10))))

    e2e = flops("e2e", 1)
    num_units = _backbone(arguments).num_units
    answer = frontier(budget, peak_of, num_units, lambda m, k: flops(m, k) / e2e, prefer)
    answer["num_units"] = num_units
    if answer["choice"] is None:
        answer["least_need"] = need(peak_of("local_recompute", num_units))
    else:
        c = answer["choice"]
        c["boundaries"] = args_of(c["method"], c["num_blocks"]).get("boundaries")
    return answer


def memory_report(module: Any, batch_size: int, image_shape: Sequence[int], num_classes: int,
                  precision: str = "32-true", budget: Optional[Union[int, str]] = None,
                  prefer: str = "accuracy") -> dict[str, Any]:
    """Predict E2E, E2E with checkpointing, and local learning with and without recomputation
    (each with its own memory split) at ``module``'s K, and the floor (glcan.memory.report).

    Args:
        module: a GLCanModule (its arguments are planned again for each method).
        batch_size, image_shape, num_classes: the data the prediction is for.
        precision: ``32-true`` or ``bf16-mixed``.
        budget: a GPU memory budget: the report then lists what fits it (the same frontier
            ``num_blocks: auto`` chooses from).
        prefer: the budget's policy, ``accuracy`` or ``speed``.

    Returns:
        The report; ``peak_bytes`` and ``ratio_to_e2e`` are the config's own method's.
    """
    base = {**module.init_arguments, "batch_size": batch_size, "image_shape": list(image_shape),
            "num_classes": num_classes, "precision": precision}
    with _one_fake_mode(base):
        return _memory_report(module, base, budget, prefer)


def _memory_report(module: Any, base: dict[str, Any], budget: Optional[Union[int, str]], prefer: str) -> dict[str, Any]:
    batch_size, image_shape, num_classes, precision = base["batch_size"], base["image_shape"], base["num_classes"], base["precision"]
    answer = budget_frontier(base, budget, prefer) if budget is not None else None
    # Local learning is reported at the model's K; for an E2E config (or an auto plan that chose
    # E2E), at the K the budget's frontier found for local learning, else at 4.
    local = next((c for c in (answer or {}).get("candidates", []) if c["method"] == "local"), None)
    k = module.net.num_blocks if module.is_local else base.get("num_blocks", 4)
    if k == "auto" or int(k) < 2:
        if k == "auto" and local is None:
            raise ValueError("model.num_blocks is 'auto': give a budget (--budget or --model.memory_budget) to choose "
                             "K, or set --model.num_blocks")
        k = local["num_blocks"] if local else 4
    k = int(k)
    estimates = {m: predicted_peak(variant(base, m, k), precision) for m in METHODS}
    units = _backbone(base).units
    unit_index, unit_bytes = largest_unit_footprint(list(units), image_shape, batch_size, precision)
    local = estimates["local"]
    resident = sum(local.parts.get(c, 0) for c in ("parameters", "optimizer_state", "input"))
    floor = resident + unit_bytes
    own = estimates[module.hparams.method]
    e2e = estimates["e2e"].peak_bytes
    return {
        "config_method": module.hparams.method,
        "backbone": module.backbone_name,
        "batch_size": batch_size,
        "image_shape": list(image_shape),
        "precision": precision,
        "peak_bytes": own.peak_bytes,
        "ratio_to_e2e": own.peak_bytes / e2e,
        "e2e_bytes": e2e,
        "e2e_recompute_bytes": estimates["e2e_recompute"].peak_bytes,
        "local_bytes": local.peak_bytes,
        "local_recompute_bytes": estimates["local_recompute"].peak_bytes,
        "local_ratio_to_e2e": local.peak_bytes / e2e,
        "recompute_ratio_to_e2e": estimates["e2e_recompute"].peak_bytes / e2e,
        "local_recompute_ratio_to_e2e": estimates["local_recompute"].peak_bytes / e2e,
        "floor_bytes": floor,
        "floor_unit": unit_index,
        "local_to_floor": local.peak_bytes / floor,
        "num_blocks": local.num_blocks,
        "boundaries": local.boundaries,
        "peak_block": local.peak_block,
        "block_peaks": local.block_peaks,
        "parts": own.parts,
        "methods": {m: e.as_dict() for m, e in estimates.items()},
        "budget": answer,
    }
