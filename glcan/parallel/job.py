"""What a pipeline run needs before its workers start: the job and the worker groups.

Grouping. A pipeline runs at the pace of its slowest worker, so blocks are grouped by *time*,
not memory: the reference measurements (docs/parallel.md) show the early high-resolution
blocks cost far more time than their share of memory or FLOPs suggests. ``grouping=time`` times
a few local steps of a copy of the network, block by block (forward, head, backward,
optimizer step) with the workers' thread count, adds worker 0's data-loading time to block 0,
and picks the contiguous grouping that minimises the slowest group (the exact dynamic
programme of glcan.core.split).
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from glcan.core.build import probe_shapes
from glcan.core.split import balanced_boundaries, block_ranges
from glcan.core.step import BlockUpdate, local_step
from glcan.core.timing import Stopwatch
from glcan.parallel.options import PipelineError


@dataclass
class Job:
    """Everything a worker needs; pickled to spawned workers (the model carries its init)."""

    model: Any
    datamodule: Any
    groups: list[list[int]]
    run_dir: str
    workers: int
    depth: int = 2
    threads: Optional[int] = None
    timeout: float = 120.0
    max_epochs: int = 1  # -1: until max_steps
    max_steps: int = -1
    limit_batches: Optional[Union[int, float]] = None
    total_steps: Optional[int] = None
    precision: str = "32-true"
    device_type: str = "cpu"
    seed: Optional[int] = None
    grouping: Any = "time"
    group_cost_ms: Optional[list[float]] = None
    init_method: str = "env://"
    spawned: bool = False
    extra: dict = field(default_factory=dict)

    def blocks_text(self, rank: int) -> str:
        g = self.groups[rank]
        return f"block {g[0]}" if len(g) == 1 else f"blocks {g[0]}-{g[-1]}"


def worker_dir(run_dir: str | Path) -> Path:
    """Where workers leave their pid (and, on failure, a one-line error) files."""
    return Path(run_dir) / "workers"


def device_type(accelerator: Any) -> str:
    acc = str(accelerator or "auto").lower()
    if acc == "cpu":
        return "cpu"
    if acc in ("gpu", "cuda", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if acc == "auto":
            return "cpu"
        raise PipelineError(f"trainer.accelerator={acc} but no CUDA device is available")
    raise PipelineError(f"pipeline mode runs on cpu or cuda, not trainer.accelerator={acc}")


def batches_per_epoch(num_batches: int, limit: Optional[Union[int, float]]) -> int:
    """Lightning's ``limit_train_batches`` rule: an int caps the count, a float is a fraction."""
    if limit is None:
        return num_batches
    if isinstance(limit, int):
        return min(num_batches, limit)
    count = int(num_batches * float(limit))
    if count == 0 and limit > 0:
        raise PipelineError(f"trainer.limit_train_batches={limit} of {num_batches} batches is less than one batch")
    return count


def stepping(max_epochs: Optional[int], max_steps: Optional[int], per_epoch: int) -> tuple[int, Optional[int]]:
    """(epochs to run or -1, total optimizer steps) as ``trainer.estimated_stepping_batches``."""
    max_steps = -1 if max_steps is None else int(max_steps)
    if max_epochs is None:
        max_epochs = -1 if max_steps != -1 else 1000  # Lightning's defaults
    if max_epochs == -1:
        if max_steps == -1:
            raise PipelineError("set trainer.max_epochs or trainer.max_steps for a pipeline run")
        return -1, max_steps
    total = per_epoch * int(max_epochs)
    return int(max_epochs), min(total, max_steps) if max_steps != -1 else total


# ---------------------------------------------------------------- grouping by measured time
def block_times_ms(model: Any, batch_size: int, image_shape: Sequence[int], num_classes: int, device: torch.device,
                   threads: int, steps: int = 3) -> list[float]:
    """Median time per block of ``steps`` local steps (after one warm-up) on a copy of the model.

    Random inputs from a private generator: the global RNG and the real model are untouched.
    """
    probe = copy.deepcopy(model).to(device)
    probe.train()
    optimizers = probe.build_optimizers()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *image_shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    k_total = probe.net.num_blocks
    marks: list[tuple[int, float]] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_phase(_: str, k: int) -> None:
        sync()
        marks.append((k, time.perf_counter()))

    step = BlockUpdate(optimizers)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: list[list[float]] = [[] for _ in range(k_total)]
    try:
        for i in range(steps + 1):
            marks.clear()
            local_step(probe.net, x, y, step, on_phase=on_phase)
            sync()
            marks.append((k_total, time.perf_counter()))
            if i > 0:
                for (k, t0), (_, t1) in zip(marks, marks[1:]):
                    samples[k].append((t1 - t0) * 1000.0)
    finally:
        torch.set_num_threads(old)
    return [statistics.median(s) for s in samples]


def data_time_ms(datamodule: Any, batches: int = 2) -> float:
    """Worker 0's cost of loading one training batch (a private, unshuffled loader)."""
    datamodule.setup("fit")
    loader = torch.utils.data.DataLoader(datamodule.train_set, batch_size=datamodule.batch_size, shuffle=False,
                                         num_workers=datamodule.num_workers)
    it, times = iter(loader), []
    for _ in range(batches):
        with Stopwatch() as watch:
            batch = next(it, None)
        if batch is None:
            break
        times.append(watch.wall_s * 1000.0)
    return statistics.median(times) if times else 0.0


def group_blocks(num_blocks: int, workers: int, grouping: Any, costs: Optional[Sequence[float]] = None) -> list[list[int]]:
    """Contiguous groups of block indices, one per worker (``grouping``: time, blocks or the first
    block of every worker after the first)."""
    if not 1 <= workers <= num_blocks:
        raise PipelineError(f"parallel.workers={workers} must be between 1 and model.num_blocks={num_blocks}")
    if isinstance(grouping, (list, tuple)):
        starts = [int(b) for b in grouping]
        if len(starts) != workers - 1 or starts != sorted(set(starts)) or (starts and not 0 < starts[0] <= starts[-1] < num_blocks):
            raise PipelineError(f"parallel.grouping {starts} must list the first block of workers 1..{workers - 1}: "
                                f"{workers - 1} increasing indices in 1..{num_blocks - 1}")
    elif grouping == "blocks" or costs is None:
        base, extra = divmod(num_blocks, workers)
        sizes = [base + (1 if w < extra else 0) for w in range(workers)]
        starts = [sum(sizes[:w]) for w in range(1, workers)]
    else:
        prefix = [0.0]
        for c in costs:
            prefix.append(prefix[-1] + float(c))
        starts = balanced_boundaries(num_blocks, workers, lambda i, j: prefix[j] - prefix[i])
    return [list(range(a, b)) for a, b in block_ranges(starts, num_blocks)]


# ---------------------------------------------------------------- the job of a parsed config
PRECISIONS = ("32-true", "32", "bf16-mixed")


def check(model: Any, opts: Any, trainer: Any, workers: int) -> None:
    """Refuse, in one line, what a pipeline run cannot do."""
    h = model.hparams
    if not model.is_local:
        raise PipelineError(f"parallel.mode=pipeline trains model.method=local (K blocks), not {h.method}")
    lam = (h.head_kwargs or {}).get("lam", 0.5)
    if h.head == "infopro" and workers > 1 and lam:
        raise PipelineError(
            "model.head=infopro reconstructs the network input in every head, which pipeline workers after the "
            "first do not receive (local_step hands their heads the received activation): use infopro with "
            "model.head_kwargs.lam=0, another head, or parallel.mode=ddp")
    if str(trainer.precision) not in PRECISIONS:
        raise PipelineError(f"pipeline mode supports trainer.precision {', '.join(PRECISIONS)}, not {trainer.precision}")
    if trainer.get("fast_dev_run"):
        raise PipelineError("trainer.fast_dev_run is not supported in pipeline mode; use trainer.max_steps")
    if model.hparams.get("lookahead"):
        raise PipelineError("model.lookahead is not supported in pipeline mode: a block's momentum copy of the next "
                            "block needs that block's weights, which live on another worker")
    if (trainer.get("accumulate_grad_batches") or 1) != 1:
        raise PipelineError("trainer.accumulate_grad_batches must be 1 (each block steps once per batch)")
    if opts.depth < 1 or opts.timeout <= 0 or (opts.threads is not None and opts.threads < 1):
        raise PipelineError("parallel.depth and parallel.threads must be >= 1 and parallel.timeout > 0")


def build_job(model: Any, datamodule: Any, trainer: Any, opts: Any, seed: Optional[int], run_dir: str,
              workers: Optional[int] = None, plan: bool = True) -> Job:
    """The job of a parsed config; with ``plan``, also the worker groups (launched plainly, the
    model then travels to the workers by pickle)."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    workers = int(workers or opts.workers)
    check(model, opts, trainer, workers)
    device = device_type(trainer.accelerator)
    if device == "cuda" and "RANK" not in os.environ and workers > torch.cuda.device_count():
        raise PipelineError(f"parallel.workers={workers} but only {torch.cuda.device_count()} CUDA devices")
    datamodule.setup("fit")
    per_epoch = batches_per_epoch(len(datamodule.train_dataloader()), trainer.limit_train_batches)
    max_epochs, total = stepping(trainer.max_epochs, trainer.max_steps, per_epoch)
    length = total if model.hparams.scheduler_interval == "step" else (max_epochs if max_epochs != -1 else None)
    job = Job(model=model, datamodule=datamodule, groups=[], run_dir=run_dir, workers=workers, depth=opts.depth,
              threads=opts.threads, timeout=opts.timeout, max_epochs=max_epochs, max_steps=trainer.max_steps or -1,
              total_steps=length, precision=str(trainer.precision), device_type=device, seed=seed, grouping=opts.grouping,
              extra={"per_epoch": per_epoch, "rng_state": rng,
                     "block_shapes": probe_shapes(model.net.blocks, datamodule.image_shape)})
    group_blocks(model.net.num_blocks, workers, opts.grouping)  # validates before any work
    if plan:
        for what in ("optimizer", "scheduler"):  # spawned workers receive the model by pickle
            spec = getattr(model, f"{what}_spec")
            if callable(spec):
                try:
                    pickle.dumps(spec)
                except Exception:  # noqa: BLE001 - any pickling failure
                    raise PipelineError(f"the model.{what} callable cannot be sent to pipeline workers (not picklable); "
                                        "give it as class_path/init_args, or launch with torchrun") from None
        job.groups, job.group_cost_ms = _groups(job)
    datamodule.train_set = datamodule.val_set = datamodule.test_set = None  # rebuilt by each worker; not pickled
    return job


def _groups(job: Job) -> tuple[list[list[int]], Optional[list[float]]]:
    model, dm, k = job.model, job.datamodule, job.model.net.num_blocks
    if job.grouping != "time" or job.workers == 1:
        return group_blocks(k, job.workers, job.grouping), None
    device = torch.device("cuda", 0) if job.device_type == "cuda" else torch.device("cpu")
    costs = block_times_ms(model, dm.batch_size, dm.image_shape, dm.num_classes, device, job.threads or 1)
    costs[0] += data_time_ms(dm)  # worker 0 also loads the data
    groups = group_blocks(k, job.workers, "time", costs)
    return groups, [round(sum(costs[b] for b in g), 1) for g in groups]
