"""``--parallel.*``: how a ``fit`` run uses several processes or devices.

``mode``: ``none`` (one process, the default), ``pipeline`` (each process trains one stage, a
contiguous group of blocks; activations flow forward, nothing flows back; replicas of the whole
pipeline split the data: glcan.lit.pipeline) or ``ddp`` (Lightning's data parallelism, one
replica per worker). Both run inside Lightning's Trainer, which starts the processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from glcan.lit.checks import ConfigError
from glcan.lit.pipeline import PipelineError, PipelineStrategy, check_pipeline

DDP_STRATEGY = "ddp_find_unused_parameters_true"


@dataclass
class ParallelOptions:
    """Parallel training.

    Args:
        mode: ``none``; ``pipeline``: one process per stage (a block group), activations sent forward
            with torch.distributed (gloo on CPU, NCCL on GPU), no backward traffic; ``ddp``:
            Lightning's DDP (``ddp_find_unused_parameters_true``), one replica per worker.
        workers: pipeline: its stages, at most model.num_blocks; ddp: the replicas.
        replicas: pipeline only: copies of the whole pipeline that split the data (workers x
            replicas processes in all, over trainer.num_nodes machines).
        depth: pipeline only: sends a stage may have in flight before it waits for the next
            (bounds the activations queued between two stages).
        threads: pipeline only: torch threads per process (default 1 on CPU).
        grouping: pipeline only: how the blocks are grouped into stages: ``time`` (measured
            time per block plus data loading, the slowest group minimised), ``blocks`` (equal
            block counts) or an explicit list: the first block of every stage after the first.
        timeout: pipeline only: seconds a process waits on another before the run stops.
    """

    mode: Literal["none", "pipeline", "ddp"] = "none"
    workers: int = 2
    replicas: int = 1
    depth: int = 2
    threads: Optional[int] = None
    grouping: Union[Literal["time", "blocks"], list[int]] = "time"
    timeout: float = 120.0


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def trainer_kwargs(parallel: Any, model: Any = None, trainer: Any = None) -> dict[str, Any]:
    """Trainer arguments for ``--parallel.mode ddp`` or ``pipeline`` (empty for ``none``).

    DDP: a backward per block means that every backward reaches only one block's parameters:
    plain ``ddp`` refuses that, ``ddp_find_unused_parameters_true`` reduces every gradient bucket
    after each of the K backwards (K all-reduces per batch; parameters of the other blocks are
    left untouched). See docs/parallel.md. Pipeline: :class:`PipelineStrategy` over workers x
    replicas processes, checked first against ``model`` and the ``trainer`` config (one line,
    before any process starts).
    """
    mode, strategy = _get(parallel, "mode"), _get(trainer, "strategy")
    if isinstance(strategy, str) and strategy.startswith("ddp") and mode != "ddp":
        raise ConfigError(f"--trainer.strategy {strategy}: local learning's backward per block needs glcan's DDP "
                          "setting; use --parallel.mode ddp --parallel.workers N instead")
    if mode not in ("ddp", "pipeline"):
        return {}
    workers = int(_get(parallel, "workers", 2))
    replicas = int(_get(parallel, "replicas", 1)) if mode == "pipeline" else 1
    if workers < 1 or replicas < 1:
        raise PipelineError(f"parallel.workers and parallel.replicas must be >= 1, got {workers} and {replicas}")
    # glcan's training sampler shards the data itself (and resumes each replica's share exactly);
    # validation and test see every image on every process, so each reports the whole set's figures.
    kwargs: dict[str, Any] = {"strategy": DDP_STRATEGY, "use_distributed_sampler": False}
    nodes = int(_get(trainer, "num_nodes", 1) or 1)
    if mode == "pipeline":
        grouping, depth, threads = _get(parallel, "grouping", "time"), int(_get(parallel, "depth", 2)), _get(parallel, "threads")
        timeout = float(_get(parallel, "timeout", 120.0))
        if model is not None:
            check_pipeline(model, trainer or {}, workers, grouping, depth, timeout, threads)
        kwargs["strategy"] = PipelineStrategy(stages=workers, grouping=grouping, depth=depth, threads=threads,
                                              timeout=timeout)
    if (workers * replicas) % nodes:
        raise PipelineError(f"{workers * replicas} processes do not divide over trainer.num_nodes={nodes} machines")
    return {**kwargs, "devices": workers * replicas // nodes}
