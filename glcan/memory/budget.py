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

from glcan.core.build import is_local, recomputes

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


def choose_num_blocks(peak_for: Callable[[int], int], num_units: int, budget: Union[int, str],
                      max_k: Optional[int] = None, min_k: int = 1) -> BudgetChoice:
    """The smallest K in ``min_k``..``max_k`` (default: num_units) whose ``peak_for(K)`` fits ``budget``.

    The peak falls as K grows (smaller blocks), so a binary search needs about log2(num_units)
    predictions; the answer is checked against K-1 so that it really is the smallest.
    """
    budget_bytes = parse_bytes(budget)
    top = min(max_k or num_units, num_units)
    tried: dict[int, int] = {}

    def peak(k: int) -> int:
        if k not in tried:
            tried[k] = peak_for(k)
        return tried[k]

    if top < 1 or not fits(peak(top), budget_bytes):
        need = peak(max(top, 1)) * (1 + ALLOCATOR_MARGIN) + CUDA_CONTEXT_BYTES
        raise BudgetError(
            f"model.memory_budget {budget_bytes / 2**30:.2f} GiB is too small even with "
            + (f"one unit per block (K={num_units})" if top == num_units else f"K={top}")
            + f": it needs {need / 2**30:.2f} GiB; lower data.batch_size or data.image_size, "
            "or use trainer.precision bf16-mixed"
        )
    lo, hi = min(min_k, top), top  # hi fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(peak(mid), budget_bytes):
            hi = mid
        else:
            lo = mid + 1
    k = hi
    while k > min_k and fits(peak(k - 1), budget_bytes):  # the peak is not strictly monotone in K
        k -= 1
    return BudgetChoice(num_blocks=k, peak_bytes=peak(k), budget_bytes=budget_bytes, tried=dict(sorted(tried.items())))


@dataclass
class Candidate:
    """One way to train within a budget: a method, its K, its predicted peak and step cost."""

    method: str
    num_blocks: int
    peak_bytes: int
    relative_time: Optional[float] = None  # step FLOPs / E2E's (forward, backward, recomputation)

    @property
    def label(self) -> str:
        return self.method if self.method.startswith("e2e") else f"{self.method} K={self.num_blocks}"

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "num_blocks": self.num_blocks, "peak_bytes": self.peak_bytes,
                "need_bytes": int(need(self.peak_bytes)), "relative_time": self.relative_time}


POLICIES = ("accuracy", "speed")


def rank(candidates: list[Candidate], prefer: str) -> list[Candidate]:
    """The candidates in the order a policy prefers them.

    ``accuracy``: fewer blocks first (E2E and E2E with checkpointing count as one block), and at
    equal K no recomputation first: every block boundary cuts gradients off, recomputation only
    costs time. ``speed``: the smallest relative step time first.
    """
    if prefer not in POLICIES:
        raise BudgetError(f"model.memory_policy must be one of {', '.join(POLICIES)}, got {prefer!r}")
    if prefer == "speed":
        return sorted(candidates, key=lambda c: (c.relative_time if c.relative_time is not None else 9.9, c.num_blocks))
    return sorted(candidates, key=lambda c: (c.num_blocks, recomputes(c.method), is_local(c.method)))


def frontier(budget: Union[int, str], peak_of: Callable[[str, int], int], num_units: int,
             time_of: Optional[Callable[[str, int], float]] = None, prefer: str = "accuracy") -> dict[str, Any]:
    """Every method that fits ``budget``: E2E, E2E with checkpointing, and the smallest K of
    local learning with and without recomputation; the one the policy picks, and why.

    Args:
        budget: bytes or a size (``12GiB``).
        peak_of: ``peak_of(method, K)``, the predicted peak of that method at that K.
        num_units: the backbone's units (the largest K).
        time_of: ``time_of(method, K)``, the relative step time (how it is estimated is the
            caller's to say).
        prefer: ``accuracy`` or ``speed`` (see :func:`rank`).
    """
    b = parse_bytes(budget)
    tried: list[Candidate] = [Candidate("e2e", 1, peak_of("e2e", 1)),
                              Candidate("e2e_recompute", 1, peak_of("e2e_recompute", 1))]
    missing = []
    for method in ("local", "local_recompute"):
        try:
            # K=1 of local learning is E2E (listed above): local candidates start at two blocks.
            choice = choose_num_blocks(lambda k, m=method: peak_of(m, k), num_units, b, min_k=min(2, num_units))
            tried.append(Candidate(method, choice.num_blocks, choice.peak_bytes))
        except BudgetError:
            missing.append(method)
    if time_of is not None:
        for c in tried:
            c.relative_time = time_of(c.method, c.num_blocks)
    fitting = rank([c for c in tried if fits(c.peak_bytes, b)], prefer)
    lines = [f"budget {b / GIB:.2f} GiB (need = predicted peak + {ALLOCATOR_MARGIN:.0%} + "
             f"{CUDA_CONTEXT_BYTES // 2**20} MiB CUDA context); step time relative to E2E from counted FLOPs:"]
    for c in tried:
        smallest = "" if c.method.startswith("e2e") else " (smallest K that fits)"
        time_text = "" if c.relative_time is None else f"  time x{c.relative_time:.2f}"
        lines.append(f"  {c.label + smallest:<46} need {need(c.peak_bytes) / GIB:7.3f} GiB{time_text}  "
                     f"{'fits' if fits(c.peak_bytes, b) else 'does not fit'}")
    for method in missing:
        lines.append(f"  {method}, even with one unit per block (K={num_units}): does not fit")
    best = fitting[0] if fitting else None
    if best is None:
        lines.append("nothing fits this budget: lower data.batch_size or data.image_size, or use trainer.precision bf16-mixed")
    elif best.method == "e2e":
        lines.append(f"E2E fits: train end to end (model.method e2e); local learning is not needed for memory "
                     f"(policy: {prefer})")
    elif best.method == "e2e_recompute":
        lines.append(f"E2E with checkpointing fits: the same network and accuracy as E2E, at the cost of "
                     f"recomputing activations (model.method e2e_recompute; policy: {prefer})")
    else:
        lines.append(f"use model.method {best.method} with model.num_blocks {best.num_blocks} (policy: {prefer})")
    return {"budget_bytes": b, "prefer": prefer, "candidates": [c.as_dict() for c in tried],
            "fits": [c.as_dict() for c in fitting], "choice": best.as_dict() if best else None, "lines": lines}
