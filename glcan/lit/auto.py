"""``num_blocks: auto``: pick the method and K for a memory budget with the predictor, before
building the model (policy: ``memory_policy``, see glcan.memory.budget.rank)."""

from __future__ import annotations

from typing import Any, Optional

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
    def smallest(method: str, max_k: Optional[int] = None) -> Optional[Candidate]:
        try:
            choice = choose_num_blocks(lambda k: predict(lambda: build(method, k), batch, shape, classes,
                                                         precision=precision).peak_bytes,
                                       len(units), args["memory_budget"], max_k)
        except BudgetError:
            return None
        return Candidate(method, choice.num_blocks, choice.peak_bytes)

    # Without recomputation first; recomputation is worth a look only where it could use fewer
    # blocks (accuracy), or where nothing fits without it.
    candidates = [c for c in [smallest("local")] if c is not None]
    if not candidates or (prefer == "accuracy" and candidates[0].num_blocks > 1):
        recomputed = smallest("local_checkpoint", candidates[0].num_blocks - 1 if candidates else None)
        candidates += [recomputed] if recomputed is not None else []
    if not candidates:
        smallest_need = predict(lambda: build("local_checkpoint", len(units)), batch, shape, classes,
                                precision=precision).peak_bytes
        raise BudgetError(
            f"model.memory_budget {parse_bytes(args['memory_budget']) / GIB:.2f} GiB is too small even with one unit "
            f"per block (K={len(units)}): it needs {need(smallest_need) / GIB:.2f} GiB; lower data.batch_size or "
            "data.image_size, or use trainer.precision bf16-mixed")
    e2e_flops = count_step_flops(lambda: build("e2e", 1), batch, shape, classes)
    for c in candidates:
        c.relative_time = count_step_flops(lambda c=c: build(c.method, c.num_blocks), batch, shape, classes) / e2e_flops
    best = rank(candidates, prefer)[0]
    rank_zero_info(f"memory budget {parse_bytes(args['memory_budget']) / GIB:.2f} GiB, policy {prefer}: {best.method} K={best.num_blocks} "
                   f"fits (predicted peak {best.peak_bytes / GIB:.3f} GiB, {need(best.peak_bytes) / GIB:.3f} GiB with "
                   f"margins; step time x{best.relative_time:.2f} of E2E by counted FLOPs)")
    return best
