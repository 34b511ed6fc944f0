"""Parallel training for local learning: a forward-only pipeline of block groups, or DDP.

``python train.py fit --config X --parallel.mode pipeline --parallel.workers P`` (see
glcan/parallel/launch.py and docs/parallel.md); ``--parallel.mode ddp`` uses Lightning's DDP.
Kept light: importing this package does not import Lightning's CLI.
"""

from glcan.parallel.options import ParallelOptions, PipelineError, ddp_trainer_kwargs, requested_mode

__all__ = ["ParallelOptions", "PipelineError", "ddp_trainer_kwargs", "requested_mode"]
