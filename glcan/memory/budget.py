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
from typing import Callable, Union

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


def fits(peak_bytes: int, budget_bytes: int) -> bool:
    """Whether a predicted peak fits the budget with the margins above."""
    return peak_bytes * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_BYTES <= budget_bytes


@dataclass
class BudgetChoice:
    num_blocks: int
    peak_bytes: int
    budget_bytes: int
    tried: dict[int, int]  # K -> predicted peak

    def describe(self) -> str:
        gib = 2**30
        return (f"memory budget {self.budget_bytes / gib:.2f} GiB: K={self.num_blocks} (predicted peak "
                f"{self.peak_bytes / gib:.3f} GiB + {ALLOCATOR_MARGIN:.0%} allocator margin + "
                f"{CUDA_CONTEXT_BYTES // 2**20} MiB CUDA context)")


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
