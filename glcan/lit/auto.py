"""``num_blocks: auto``: pick the method and K for a memory budget with the predictor, before
building the model (policy: ``memory_policy``, see glcan.memory.budget.rank)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from glcan.memory.budget import GIB, BudgetError, Candidate, choose_num_blocks, need, parse_bytes, rank
from glcan.memory.predictor import count_step_flops, fake_mode, predict


def choose_for_budget(cls: Any, args: dict[str, Any]) -> Candidate:
    """The smallest K that fits ``args["memory_budget"]``, with or without recomputation inside
    the blocks as ``args["memory_policy"]`` prefers; print the choice in one line."""
    if args.get("memory_budget") is None:
        raise BudgetError("model.num_blocks is 'auto' but model.memory_budget is not set (e.g. --model.memory_budget 4GiB)")
    shape, batch, classes = tuple(args["image_shape"]), args["batch_size"], args["num_classes"]
    precision, prefer = args.get("precision", "32-true"), args.get("memory_policy", "accuracy")

    def build(method: str, k: int) -> Any:
        return cls.from_arguments(args, method=method, num_blocks=k, memory_budget=None)

    with fake_mode():
        units = build("e2e", 1).net.blocks[0]
    candidates, last_error = [], None
    for method in ("local", "local_checkpoint"):
        try:
            choice = choose_num_blocks(lambda k, m=method: predict(lambda: build(m, k), batch, shape, classes,
                                                                   precision=precision).peak_bytes,
                                       len(units), args["memory_budget"])
            candidates.append(Candidate(method, choice.num_blocks, choice.peak_bytes))
        except BudgetError as e:
            last_error = e
    if not candidates:
        raise last_error  # type: ignore[misc]
    e2e_flops = count_step_flops(lambda: build("e2e", 1), batch, shape, classes)
    for c in candidates:
        c.relative_time = count_step_flops(lambda c=c: build(c.method, c.num_blocks), batch, shape, classes) / e2e_flops
    best = rank(candidates, prefer)[0]
    rank_zero_info(f"memory budget {parse_bytes(args['memory_budget']) / GIB:.2f} GiB, policy {prefer}: {best.method} K={best.num_blocks} "
                   f"fits (predicted peak {best.peak_bytes / GIB:.3f} GiB, {need(best.peak_bytes) / GIB:.3f} GiB with "
                   f"margins; step time x{best.relative_time:.2f} of E2E by counted FLOPs)")
    return best
