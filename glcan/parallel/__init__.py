"""Parallel training for local learning: a forward-only pipeline of block groups (x data-parallel
replicas), or DDP; both inside Lightning's Trainer (glcan.lit.pipeline), and a throughput model.

``python train.py fit --config X --parallel.mode pipeline --parallel.workers P [--parallel.replicas R]``
(see docs/parallel.md); ``--parallel.mode ddp`` uses Lightning's DDP.
"""

from glcan.parallel.options import ParallelOptions, PipelineError, trainer_kwargs

__all__ = ["ParallelOptions", "PipelineError", "trainer_kwargs"]
