"""``--parallel.*``: how a ``fit`` run uses several processes or devices.

``mode``: ``none`` (one process, the default), ``pipeline`` (each worker process owns a
contiguous group of blocks; activations flow forward, nothing flows back; see
glcan/parallel/launch.py) or ``ddp`` (Lightning's data parallelism, one replica per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from glcan.lit.checks import ConfigError

DDP_STRATEGY = "ddp_find_unused_parameters_true"


class PipelineError(ConfigError):
    """A pipeline setting that cannot work, or a worker that failed; the message names it."""


@dataclass
class ParallelOptions:
    """Parallel training.

    Args:
        mode: ``none``; ``pipeline``: one process per block group, activations sent forward with
            torch.distributed (gloo on CPU, NCCL on GPU), no backward traffic; ``ddp``: Lightning's
            DDP (``ddp_find_unused_parameters_true``), one replica per worker.
        workers: processes (pipeline: at most model.num_blocks; ddp: replicas = trainer.devices).
        depth: pipeline only: sends a worker may have in flight before it waits for its
            successor (bounds the activations queued between two workers).
        threads: pipeline only: torch threads per worker (default 1 on CPU).
        grouping: pipeline only: how the blocks are grouped into workers: ``time`` (measured
            time per block plus data loading, the slowest group minimised), ``blocks`` (equal
            block counts) or an explicit list: the first block of every worker after the first.
        timeout: pipeline only: seconds a worker waits on a silent neighbour before it stops.
    """

    mode: Literal["none", "pipeline", "ddp"] = "none"
    workers: int = 2
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


def ddp_trainer_kwargs(parallel: Any) -> dict[str, Any]:
    """Trainer arguments for ``--parallel.mode ddp`` (empty for other modes).

    A backward per block means that every backward reaches only one block's parameters: plain
    ``ddp`` refuses that, ``ddp_find_unused_parameters_true`` reduces every gradient bucket
    after each of the K backwards (K all-reduces per batch; parameters of the other blocks are
    left untouched). See docs/parallel.md.
    """
    if _get(parallel, "mode") != "ddp":
        return {}
    workers = int(_get(parallel, "workers", 2))
    if workers < 1:
        raise PipelineError(f"parallel.workers must be >= 1, got {workers}")
    # glcan's training sampler shards the data itself (and resumes each replica's share exactly);
    # validation and test see every image on every replica, so each reports the whole set's figures.
    return {"strategy": DDP_STRATEGY, "devices": workers, "use_distributed_sampler": False}
