"""The memory report: one config, every method side by side, and the floor.

The *floor* is what no split can beat: everything that stays resident during local training
(parameters, optimizer state, the input batch) plus the training footprint of the single
largest unit (its input, its activations and its parameters' gradients, with no head at all).
Every split has a block that holds that unit, so the ratio peak / floor says how far a split is
from the best possible one.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from glcan.memory.costs import unit_costs

GiB = 2**30


def largest_unit_footprint(units: Sequence[Any], image_shape: Sequence[int], batch_size: int,
                           precision: str = "32-true") -> tuple[int, int]:
    """(index, bytes) of the unit whose forward and backward alone need the most memory
    (glcan.memory.costs.unit_costs' ``footprint``), at ``precision``."""
    footprints = [c["footprint"] for c in unit_costs(units, image_shape, batch_size, precision)]
    i = max(range(len(footprints)), key=footprints.__getitem__)
    return i, footprints[i]


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
        f"  {'e2e_recompute (per unit)':<26}{gib(r['e2e_recompute_bytes'])}   {r['recompute_ratio_to_e2e']:.3f}",
        f"  {'local K=' + str(r['num_blocks']):<26}{gib(r['local_bytes'])}   {r['local_ratio_to_e2e']:.3f}   split {r['boundaries']}",
        f"  {'local_recompute K=' + str(r['num_blocks']):<26}{gib(r['local_recompute_bytes'])}   "
        f"{r['local_recompute_ratio_to_e2e']:.3f}   split {r['methods']['local_recompute']['boundaries']}",
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
