"""Memory: an exact tensor-level meter, a predictor that runs it under FakeTensorMode, and the
split policy that uses it."""

from glcan.memory.predictor import MemoryEstimate, measure_steps, predict
from glcan.memory.tracker import MemoryTracker

__all__ = ["MemoryEstimate", "MemoryTracker", "measure_steps", "predict"]
