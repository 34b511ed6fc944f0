"""Parallel training for local learning: a forward-only pipeline of block groups, or DDP.

``python train.py fit --config X --parallel.mode pipeline --parallel.workers P`` (glcan.cli
launches it; see docs/parallel.md); ``--parallel.mode ddp`` uses Lightning's DDP.
"""

from glcan.parallel.options import ParallelOptions, PipelineError, ddp_trainer_kwargs

__all__ = ["ParallelOptions", "PipelineError", "ddp_trainer_kwargs"]
