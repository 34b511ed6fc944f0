"""Choose K from a memory budget: the fewest blocks whose predicted peak fits.

Fewer blocks are more accurate (each head sees a deeper block and less is cut off from
end-to-end gradients), so the answer to "I have 12 GB" is the smallest K whose predicted peak,
with the memory split, fits. The predicted peak counts tensor bytes only; a GPU needs more:

- the CUDA context and cuDNN/cuBLAS workspaces, outside PyTorch's allocator (a few hundred MiB
  on current GPUs): we reserve ``CUDA_CONTEXT_BYTES`` = 512 MiB;
- the caching allocator's rounding and fragmentation (``max_memory_reserved`` runs above
  ``max_memory_allocated``): we add ``ALLOCATOR_MARGIN`` = 10% of the peak.

So a budget B fits a predicted peak P when ``P * 1.10 + 512 MiB <= B``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

GIB = 2**30
CUDA_CONTEXT_BYTES = 512 * 2**20
ALLOCATOR_MARGIN = 0.10
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class BudgetError(ValueError):
    """The budget cannot be met, or cannot be read (one line, says what to change)."""


def parse_bytes(value: Union[int, float, str]) -> int:
    """``4GiB``, ``12GB``, ``512MiB``, ``1.5 GiB`` or a number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise BudgetError(f"model.memory_budget {value!r} is not a size: use e.g. 4GiB, 12GB, 512MiB or bytes")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise BudgetError(f"model.memory_budget must be positive, got {value!r}")
    return int(n)


def need(peak_bytes: int) -> float:
    """The GPU memory a predicted peak needs, with the margins above."""
    return peak_bytes * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_BYTES


def fits(peak_bytes: int, budget_bytes: int) -> bool:
    """Whether a predicted peak fits the budget with the margins above."""
    return need(peak_bytes) <= budget_bytes


@dataclass
class BudgetChoice:
    num_blocks: int
    peak_bytes: int
    budget_bytes: int
    tried: dict[int, int]  # K -> predicted peak

    def summary_line(self) -> str:
        return (f"memory budget {self.budget_bytes / GIB:.2f} GiB: local K={self.num_blocks} fits (predicted peak "
                f"{self.peak_bytes / GIB:.3f} GiB, {need(self.peak_bytes) / GIB:.3f} GiB with the "
                f"{ALLOCATOR_MARGIN:.0%} allocator margin and {CUDA_CONTEXT_BYTES // 2**20} MiB CUDA context)")


def choose_num_blocks(peak_for: Callable[[int], int], num_units: int, budget: Union[int, str]) -> BudgetChoice:
    """The smallest K in 1..num_units whose ``peak_for(K)`` fits ``budget``.

    The peak falls as K grows (smaller blocks), so a binary search needs about log2(num_units)
    predictions; the answer is checked against K-1 so that it really is the smallest.
    """
    budget_bytes = parse_bytes(budget)
    tried: dict[int, int] = {}

    def peak(k: int) -> int:
        if k not in tried:
            tried[k] = peak_for(k)
        return tried[k]

    if not fits(peak(num_units), budget_bytes):
        need = peak(num_units) * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_BYTES
        raise BudgetError(
            f"model.memory_budget {budget_bytes / 2**30:.2f} GiB is too small even with one unit per block "
            f"(K={num_units}): it needs {need / 2**30:.2f} GiB; lower data.batch_size or data.image_size, "
            "or use trainer.precision bf16-mixed"
        )
    lo, hi = 1, num_units  # hi fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(peak(mid), budget_bytes):
            hi = mid
        else:
            lo = mid + 1
    k = hi
    while k > 1 and fits(peak(k - 1), budget_bytes):  # the peak is not strictly monotone in K
        k -= 1
    return BudgetChoice(num_blocks=k, peak_bytes=peak(k), budget_bytes=budget_bytes, tried=dict(sorted(tried.items())))


def budget_answer(budget: Union[int, str], e2e_bytes: int, e2e_checkpoint_bytes: int,
                  local_peak: Callable[[int], int], num_units: int) -> dict[str, Any]:
    """What fits ``budget``: E2E, E2E with checkpointing, and the smallest local K.

    Fewer blocks are more accurate, so the preference is E2E, then E2E with checkpointing (the
    same network and accuracy, at the price of recomputation), then the smallest K.
    """
    b = parse_bytes(budget)
    rows = [("e2e", None, e2e_bytes), ("e2e_checkpoint", None, e2e_checkpoint_bytes)]
    try:
        choice: Optional[BudgetChoice] = choose_num_blocks(local_peak, num_units, b)
        rows.append(("local", choice.num_blocks, choice.peak_bytes))
    except BudgetError:
        choice = None
    fitting = [{"method": m, "num_blocks": k, "peak_bytes": p, "need_bytes": int(need(p))} for m, k, p in rows if fits(p, b)]
    head = f"budget {b / GIB:.2f} GiB (needs = predicted peak + {ALLOCATOR_MARGIN:.0%} + {CUDA_CONTEXT_BYTES // 2**20} MiB CUDA context):"
    lines = [head]
    for m, k, p in rows:
        label = f"local K={k} (the smallest K that fits)" if m == "local" else m
        lines.append(f"  {label:<38} needs {need(p) / GIB:7.3f} GiB  {'fits' if fits(p, b) else 'does not fit'}")
    if choice is None:
        lines.append(f"  local, even with one unit per block (K={num_units}): does not fit; lower data.batch_size "
                     "or data.image_size, or use trainer.precision bf16-mixed")
    best = fitting[0] if fitting else None
    if best is None:
        lines.append("nothing fits this budget")
    elif best["method"] == "e2e":
        lines.append("E2E fits: train end to end (model.method e2e); local learning is not needed for memory")
    elif best["method"] == "e2e_checkpoint":
        lines.append("E2E with checkpointing fits: same network and accuracy as E2E, at the cost of recomputing "
                     "activations (model.method e2e_checkpoint)")
    else:
        lines.append(f"use local learning with model.num_blocks {best['num_blocks']} (or num_blocks: auto)")
    return {"budget_bytes": b, "fits": fitting, "choice": best, "lines": lines}
