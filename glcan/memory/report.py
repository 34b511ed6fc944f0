"""The memory report: one config, every method side by side, and the floor.

The *floor* is what no split can beat: everything that stays resident during local training
(parameters, optimizer state, the input batch) plus the training footprint of the single
largest unit (its input, its activations and its parameters' gradients, with no head at all).
Every split has a block that holds that unit, so the ratio peak / floor says how far a split is
from the best possible one.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from glcan.core.build import METHODS
from glcan.memory.budget import frontier
from glcan.memory.predictor import MemoryEstimate, as_fake, count_step_flops, fake_mode, predict
from glcan.memory.tracker import MemoryTracker

GiB = 2**30


def largest_unit_footprint(units: Sequence[torch.nn.Module], image_shape: Sequence[int], batch_size: int) -> tuple[int, int]:
    """(index, bytes) of the unit whose forward+backward alone needs the most memory."""
    best = (0, 0)
    with fake_mode():
        x = torch.randn(batch_size, *image_shape)
        for i, unit in enumerate(units):
            unit = as_fake(unit)
            unit.train()
            tracker = MemoryTracker()
            with tracker:
                tracker.register([x], "input")
                out = unit(x)
                out.float().sum().backward()
            if tracker.peak > best[1]:
                best = (i, int(tracker.peak))
            x = out.detach()
    return best


def memory_report(module: Any, batch_size: int, image_shape: Sequence[int], num_classes: int,
                  precision: str = "32-true", budget: Optional[Union[int, str]] = None,
                  prefer: str = "accuracy") -> dict[str, Any]:
    """Predict E2E, E2E with checkpointing, and local learning with and without recomputation
    at ``module``'s K, and the floor.

    Args:
        module: a GLCanModule; ``module.rebuild(method=..., num_blocks=...)`` makes each variant, fake.
        batch_size, image_shape, num_classes: the data the prediction is for.
        precision: ``32-true`` or ``bf16-mixed``.
        budget: a GPU memory budget: the report then lists what fits it (glcan.memory.budget.frontier).
        prefer: the budget's policy, ``accuracy`` or ``speed``.
    """
    k = module.net.num_blocks if module.is_local else int(module.init_arguments.get("num_blocks") or 4)

    def estimate(method: str, blocks: int) -> MemoryEstimate:
        return predict(lambda: module.rebuild(method=method, num_blocks=blocks), batch_size, image_shape, num_classes,
                       precision=precision)

    estimates = {m: estimate(m, k) for m in METHODS}
    local = estimates["local"]
    with fake_mode():
        units = module.rebuild(method="e2e").net.blocks[0]
        unit_index, unit_bytes = largest_unit_footprint(list(units), image_shape, batch_size)
    resident = sum(local.parts.get(c, 0) for c in ("parameters", "optimizer_state", "input"))
    floor = resident + unit_bytes
    own = estimates[module.hparams.method]
    e2e = estimates["e2e"].peak_bytes
    answer = None
    if budget is not None:
        peaks = {(m, 1 if m.startswith("e2e") else k): e.peak_bytes for m, e in estimates.items()}

        def peak_of(method: str, blocks: int) -> int:
            if (method, blocks) not in peaks:
                peaks[(method, blocks)] = estimate(method, blocks).peak_bytes
            return peaks[(method, blocks)]

        e2e_flops = count_step_flops(lambda: module.rebuild(method="e2e"), batch_size, image_shape, num_classes)

        def time_of(method: str, blocks: int) -> float:
            flops = count_step_flops(lambda: module.rebuild(method=method, num_blocks=blocks), batch_size, image_shape,
                                     num_classes)
            return flops / e2e_flops

        answer = frontier(budget, peak_of, len(units), time_of, prefer)
    return {
        "config_method": module.hparams.method,
        "backbone": module.backbone_name,
        "batch_size": batch_size,
        "image_shape": list(image_shape),
        "precision": precision,
        "peak_bytes": own.peak_bytes,
        "e2e_bytes": e2e,
        "e2e_checkpoint_bytes": estimates["e2e_checkpoint"].peak_bytes,
        "local_bytes": local.peak_bytes,
        "local_checkpoint_bytes": estimates["local_checkpoint"].peak_bytes,
        "ratio_to_e2e": local.peak_bytes / e2e,
        "checkpoint_ratio_to_e2e": estimates["e2e_checkpoint"].peak_bytes / e2e,
        "local_checkpoint_ratio_to_e2e": estimates["local_checkpoint"].peak_bytes / e2e,
        "floor_bytes": floor,
        "floor_unit": unit_index,
        "local_to_floor": local.peak_bytes / floor,
        "num_blocks": local.num_blocks,
        "split": local.boundaries,
        "peak_block": local.peak_block,
        "block_peaks": local.block_peaks,
        "parts": own.parts,
        "methods": {m: e.as_dict() for m, e in estimates.items()},
        "budget": answer,
    }


def format_report(r: dict[str, Any], config: Optional[str] = None) -> str:
    """A plain-text report for the terminal."""
    def gib(b: float) -> str:
        return f"{b / GiB:8.3f} GiB"
    lines = [
        f"Predicted training memory: {r['backbone']}, batch {r['batch_size']}, input {tuple(r['image_shape'])}, "
        f"{r['precision']}" + (f" ({config})" if config else ""),
        "method: FakeTensorMode + tensor-storage tracker, steady-state step (exact tensor bytes; "
        "a GPU adds its CUDA context and allocator rounding)",
        "",
        f"  {'e2e':<26}{gib(r['e2e_bytes'])}   1.000",
        f"  {'e2e_checkpoint (per unit)':<26}{gib(r['e2e_checkpoint_bytes'])}   {r['checkpoint_ratio_to_e2e']:.3f}",
        f"  {'local K=' + str(r['num_blocks']):<26}{gib(r['local_bytes'])}   {r['ratio_to_e2e']:.3f}   split {r['split']}",
        f"  {'local_checkpoint K=' + str(r['num_blocks']):<26}{gib(r['local_checkpoint_bytes'])}   "
        f"{r['local_checkpoint_ratio_to_e2e']:.3f}   split {r['methods']['local_checkpoint']['boundaries']}",
        f"  {'floor (largest unit)':<26}{gib(r['floor_bytes'])}   {r['floor_bytes'] / r['e2e_bytes']:.3f}   unit {r['floor_unit']}",
        "",
        f"local peak is set by block {r['peak_block']}; block peaks: "
        + ", ".join(f"{b / GiB:.3f}" for b in r["block_peaks"]) + " GiB",
        f"local / floor: {r['local_to_floor']:.2f}x",
        f"parts of the {r['config_method']} peak:",
    ]
    lines += [f"  {name:<18}{gib(v)}" for name, v in r["parts"].items()]
    if r.get("budget"):
        lines += ["", *r["budget"]["lines"]]
    return "\n".join(lines)
