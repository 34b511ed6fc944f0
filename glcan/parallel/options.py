"""``--parallel.*``: how a ``fit`` run uses several processes or devices.

``mode``: ``none`` (one process, the default), ``pipeline`` (each worker process owns a
contiguous group of blocks; activations flow forward, nothing flows back; see
glcan/parallel/launch.py) or ``ddp`` (Lightning's data parallelism, one replica per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

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
        balance: pipeline only: how blocks are grouped: ``time`` (measured time per block plus
            data loading, the slowest group minimised), ``blocks`` (equal block counts) or an
            explicit list: the first block of every worker after the first.
        timeout: pipeline only: seconds a worker waits on a silent neighbour before it stops.
    """

    mode: Literal["none", "pipeline", "ddp"] = "none"
    workers: int = 2
    depth: int = 2
    threads: Optional[int] = None
    balance: Union[Literal["time", "blocks"], list[int]] = "time"
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
    return {"strategy": DDP_STRATEGY, "devices": workers}


def requested_mode(argv: Sequence[str]) -> str:
    """The ``parallel.mode`` that ``argv`` asks for, read without building anything.

    Later arguments win, as in the parser: a ``parallel: {mode: ...}`` in a ``--config`` file,
    then ``--parallel.mode X`` / ``--parallel.mode=X``. The full parser validates it later.
    """
    mode, i = "none", 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv) or a.startswith("--config="):
            path = argv[i + 1] if a == "--config" else a.split("=", 1)[1]
            mode = _mode_in_file(path) or mode
            i += 1 if a == "--config" else 0
        elif a == "--parallel.mode" and i + 1 < len(argv):
            mode = argv[i + 1]
            i += 1
        elif a.startswith("--parallel.mode="):
            mode = a.split("=", 1)[1]
        i += 1
    return mode


def _mode_in_file(path: str) -> Optional[str]:
    try:
        import yaml

        data = yaml.safe_load(Path(path).read_text())
    except Exception:  # noqa: BLE001 - the real parser reports unreadable configs
        return None
    return _get(_get(data, "parallel"), "mode") if isinstance(data, dict) else None
