"""Paired statistics for accuracy claims: the protocol every comparison and ablation follows.

Rows of a comparison run the same seeds over the same fixed data split, so a row is judged by
its *paired* differences to a reference row (E2E, or the default head): one difference per seed,
their mean, and a 95% Student-t interval, ``mean ± t(0.975, n-1) · sd / sqrt(n)``. Pairing
removes what the seeds share (the split, an easy or a hard initialisation), so the interval is
much tighter than the two rows' own spreads would suggest, and honest about n.

Runs that collapsed (test accuracy within 5 points of chance) or diverged are counted and shown
apart, never averaged in: a mean over a collapsed run says nothing about either outcome.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional

#: t(0.975, df) for df = 1..30; beyond, the normal quantile is close enough (within 0.04).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
COLLAPSE_MARGIN = 0.05  # a run within this much (5 points) of chance accuracy has collapsed


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% t-interval, over ``n`` values (paired differences or plain values)."""

    mean: float
    half_width: Optional[float]  # None with one value: no interval
    n: int

    @property
    def low(self) -> Optional[float]:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> Optional[float]:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero (a difference the seeds support)."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)  # type: ignore[operator]

    def show(self, factor: float = 100.0, digits: int = 2, signed: bool = True) -> str:
        """``+0.40 ± 0.61 (n=5)`` in the metric's units (``factor`` 100 shows accuracy in points)."""
        sign = "+" if signed else ""
        text = f"{factor * self.mean:{sign}.{digits}f}"
        if self.half_width is not None:
            text += f" ± {factor * self.half_width:.{digits}f}"
        return f"{text} (n={self.n})"


def interval(values: list[float]) -> Interval:
    """Mean and 95% t-interval of ``values``."""
    if not values:
        raise ValueError("an interval needs at least one value")
    n = len(values)
    if n == 1:
        return Interval(values[0], None, 1)
    return Interval(statistics.fmean(values), t975(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


def paired(rows: Mapping[int, float], reference: Mapping[int, float]) -> Optional[Interval]:
    """The mean paired difference ``row - reference`` over the seeds both have, with its interval;
    None when they share no seed."""
    seeds = sorted(set(rows) & set(reference))
    if not seeds:
        return None
    return interval([rows[s] - reference[s] for s in seeds])


def chance(num_classes: int) -> float:
    return 1.0 / max(1, num_classes)


def collapsed(accuracy: float, num_classes: int) -> bool:
    """A classification run whose test accuracy is within 5 points of chance learnt nothing."""
    return accuracy <= chance(num_classes) + COLLAPSE_MARGIN
