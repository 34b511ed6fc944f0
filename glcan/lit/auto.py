"""``num_blocks: auto``: pick K for a memory budget with the predictor, before building the model."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from glcan.memory.budget import BudgetChoice, BudgetError, choose_num_blocks
from glcan.memory.predictor import fake_mode, predict


def choose_for_budget(cls: Any, args: dict[str, Any]) -> BudgetChoice:
    """Predict local training of ``cls(**args)`` for K = 1..num_units and keep the smallest K
    that fits ``args["memory_budget"]``; print the choice in one line."""
    if args.get("memory_budget") is None:
        raise BudgetError("model.num_blocks is 'auto' but model.memory_budget is not set (e.g. --model.memory_budget 4GiB)")
    shape, batch = tuple(args["image_shape"]), args["batch_size"]
    precision = args.get("precision", "32-true")

    def peak(k: int) -> int:
        with fake_mode():
            build = lambda: cls.from_arguments(args, method="local", num_blocks=k, memory_budget=None)  # noqa: E731
            return predict(build, batch, shape, args["num_classes"], precision=precision).peak_bytes

    with fake_mode():
        units = cls.from_arguments(args, method="e2e", num_blocks=1, memory_budget=None).net.blocks[0]
    choice = choose_num_blocks(peak, len(units), args["memory_budget"])
    rank_zero_info(choice.summary_line())
    return choice
