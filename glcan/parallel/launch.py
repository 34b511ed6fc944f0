"""``train.py fit ... --parallel.mode pipeline``: build the job, start the workers, watch them.

Launched plainly, this process parses the config once, plans the run (run directory, block
groups) and spawns one worker process per group (torch.multiprocessing, gloo/NCCL over
127.0.0.1), then waits. If a worker dies, the others are stopped at once and one line names
the worker. Under ``torchrun`` (RANK and WORLD_SIZE set) every rank parses the config itself,
rank 0 plans and broadcasts the plan, and each rank runs its worker; then a dead neighbour is
noticed by the workers themselves (closed connection, or ``parallel.timeout``).
"""

from __future__ import annotations

import datetime
import functools
import inspect
import os
import pickle
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from glcan.cli import GLCanCLI, run_name
from glcan.core.build import probe_shapes
from glcan.parallel import plan as planning
from glcan.parallel.options import PipelineError
from glcan.parallel.plan import Job
from glcan.parallel.supervise import spawn, worker_main

PRECISIONS = ("32-true", "32", "bf16-mixed")


class PipelineCLI(GLCanCLI):
    """Parses like ``fit`` (without the subcommand); builds model and data, no Trainer."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None


def check(model: Any, opts: Any, trainer: Any, workers: int) -> None:
    """Refuse, in one line, what a pipeline run cannot do."""
    h = model.hparams
    if h.method != "local":
        raise PipelineError(f"parallel.mode=pipeline trains model.method=local (K blocks), not {h.method}")
    lam = (h.aux_kwargs or {}).get("lam", 0.5)
    if h.aux == "infopro" and workers > 1 and lam:
        raise PipelineError(
            "model.aux=infopro reconstructs the network input in every head, which pipeline workers after the "
            "first do not receive (local_step hands their heads the received activation): use infopro with "
            "model.aux_kwargs.lam=0, another head, or parallel.mode=ddp")
    if str(trainer.precision) not in PRECISIONS:
        raise PipelineError(f"pipeline mode supports trainer.precision {', '.join(PRECISIONS)}, not {trainer.precision}")
    if trainer.get("fast_dev_run"):
        raise PipelineError("trainer.fast_dev_run is not supported in pipeline mode; use trainer.max_steps")
    if (trainer.get("accumulate_grad_batches") or 1) != 1:
        raise PipelineError("trainer.accumulate_grad_batches must be 1 (each block steps once per batch)")
    if opts.depth < 1 or opts.timeout <= 0 or (opts.threads is not None and opts.threads < 1):
        raise PipelineError("parallel.depth and parallel.threads must be >= 1 and parallel.timeout > 0")


def plain_factory(factory: Any, what: str) -> Any:
    """A picklable stand-in for LightningCLI's optimizer/scheduler callable (spawned workers
    receive the model by pickle; the CLI's callables hold its parser, lambdas included)."""
    try:
        pickle.dumps(factory)
        return factory
    except Exception:  # noqa: BLE001 - any pickling failure
        pass
    classes = [a for a in getattr(factory, "args", ()) if inspect.isclass(a)]
    if isinstance(factory, functools.partial) and classes:
        return functools.partial(classes[0], **factory.keywords)  # what the CLI's instantiator calls
    raise PipelineError(f"the {what} config cannot be sent to pipeline workers (not picklable); "
                        "launch with torchrun, where every worker reads the config itself")


def build_job(cli: PipelineCLI, workers: Optional[int] = None, plan: bool = True) -> Job:
    """The job from a parsed config; with ``plan``, also the run directory and the groups."""
    cfg = cli._cfg()
    opts, trainer, model, dm = cfg.parallel, cfg.trainer, cli.model, cli.datamodule
    # the global RNG as the model left it: worker 0 continues from here (augmentations draw from it)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    workers = int(workers or opts.workers)
    check(model, opts, trainer, workers)
    device = planning.device_type(trainer.accelerator)
    if device == "cuda" and "RANK" not in os.environ and workers > torch.cuda.device_count():
        raise PipelineError(f"parallel.workers={workers} but only {torch.cuda.device_count()} CUDA devices")
    dm.setup("fit")
    per_epoch = planning.batches_per_epoch(len(dm.train_dataloader()), trainer.limit_train_batches)
    max_epochs, total = planning.stepping(trainer.max_epochs, trainer.max_steps, per_epoch)
    job = Job(model=model, datamodule=dm, groups=[], run_dir="", workers=workers, depth=opts.depth,
              threads=opts.threads, timeout=opts.timeout, max_epochs=max_epochs, max_steps=trainer.max_steps or -1,
              total_steps=total, precision=str(trainer.precision), device_type=device, seed=cfg.get("seed_everything"),
              balance=opts.balance, extra={"per_epoch": per_epoch, "rng_state": rng, "limit_test": trainer.limit_test_batches,
                                           "block_shapes": probe_shapes(model.net.blocks, dm.image_shape)})
    planning.group_blocks(model.net.num_blocks, workers, opts.balance)  # validates before any work
    if plan:  # launched plainly: the model travels to the workers by pickle
        model.optimizer_factory = plain_factory(model.optimizer_factory, "model.optimizer")
        if model.scheduler_factory is not None:
            model.scheduler_factory = plain_factory(model.scheduler_factory, "model.scheduler")
        root = trainer.default_root_dir or "runs"
        job.run_dir = str(planning.next_run_dir(root, run_name(model, dm), cfg.get("run_dir")))
        _save_config(cli, Path(job.run_dir))
        job.groups, job.group_cost_ms = _groups(job)
    dm.train_set = dm.val_set = dm.test_set = None  # rebuilt by each worker; not pickled
    return job


def _groups(job: Job) -> tuple[list[list[int]], Optional[list[float]]]:
    model, dm, k = job.model, job.datamodule, job.model.net.num_blocks
    if job.balance != "time" or job.workers == 1:
        return planning.group_blocks(k, job.workers, job.balance), None
    device = torch.device("cuda", 0) if job.device_type == "cuda" else torch.device("cpu")
    costs = planning.block_times_ms(model, dm.batch_size, dm.image_shape, dm.num_classes, device, job.threads or 1)
    costs[0] += planning.data_time_ms(dm)  # worker 0 also loads the data
    groups = planning.group_blocks(k, job.workers, "time", costs)
    return groups, [round(sum(costs[b] for b in g), 1) for g in groups]


def _save_config(cli: PipelineCLI, run_dir: Path) -> None:
    try:
        (run_dir / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
    except Exception:  # noqa: BLE001 - the config copy is a convenience, never a reason to fail
        pass


# ---------------------------------------------------------------- under torchrun
def run_torchrun(argv: Sequence[str]) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cli = PipelineCLI(args=list(argv), run=False)
    job = build_job(cli, workers=world, plan=rank == 0)
    if job.device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group("nccl" if job.device_type == "cuda" else "gloo", init_method="env://", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=job.timeout))
    payload = [(job.run_dir, job.groups, job.group_cost_ms, job.model.state_dict()) if rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    job.run_dir, job.groups, job.group_cost_ms, state = payload[0]
    job.model.load_state_dict(state)  # every worker starts from rank 0's initial weights
    worker_main(rank, job)
    return 0


def main(argv: Sequence[str]) -> int:
    """``fit`` in pipeline mode; ``argv`` is what follows ``fit``."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return run_torchrun(argv)
    cli = PipelineCLI(args=list(argv), run=False)
    return spawn(build_job(cli))
