"""``num_blocks: auto``: pick K for a memory budget with the predictor, before building the model."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from glcan.memory.budget import BudgetChoice, BudgetError, choose_num_blocks


def choose_for_budget(cls: type, args: dict[str, Any]) -> BudgetChoice:
    """Predict local training of ``cls(**args)`` for K = 1..num_units and keep the smallest K
    that fits ``args["memory_budget"]``; print the choice beside E2E and E2E with checkpointing."""
    from glcan.core.build import as_backbone
    from glcan.memory.predictor import as_fake, fake_mode, predict

    if args.get("memory_budget") is None:
        raise BudgetError("model.num_blocks is 'auto' but model.memory_budget is not set (e.g. --model.memory_budget 4GiB)")
    backbone = as_backbone(args["backbone"], args["num_classes"], args["image_shape"], args.get("small_input"))
    shape, batch = tuple(args["image_shape"]), args["batch_size"]
    precision = args.get("precision", "32-true")

    def peak(method: str, k: int = 1) -> int:
        def build() -> Any:
            return cls(**{**args, "backbone": as_fake(backbone), "method": method, "num_blocks": k, "memory_budget": None})
        with fake_mode():
            return predict(build, batch, shape, args["num_classes"], precision=precision).peak_bytes

    choice = choose_num_blocks(lambda k: peak("local", k), backbone.num_units, args["memory_budget"])
    gib = 2**30
    rank_zero_info(
        f"{choice.describe()}; E2E would need {peak('e2e') / gib:.3f} GiB, "
        f"E2E with checkpointing {peak('e2e_checkpoint') / gib:.3f} GiB (predicted, batch {batch}, {precision})"
    )
    return choice
