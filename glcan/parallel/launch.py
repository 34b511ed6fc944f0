"""``train.py fit ... --parallel.mode pipeline``: start the workers, watch them, finish the run.

Launched plainly, this process has parsed the config once (``train.py fit``), plans the
worker groups and spawns one worker process per group (torch.multiprocessing, gloo/NCCL over
127.0.0.1), then waits. If a worker dies, the others are stopped at once and one line names
the worker. Under ``torchrun`` (RANK and WORLD_SIZE set) every rank parses the config itself,
rank 0 plans and broadcasts the plan, and each rank runs its worker; then a dead neighbour is
noticed by the workers themselves (closed connection, or ``parallel.timeout``).

When the workers are done, the run finishes as a one-process run does: the checkpoint is
tested through Lightning, and summary.json is written by the same builder (with the
pipeline's own fields), the per-epoch losses going to the same CSV log.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import torch
import torch.distributed as dist

from glcan.lit.rundir import RunDir
from glcan.io import write_text
from glcan.lit.loggers import wandb_run_dir
from glcan.lit.summary import build_summary, stage_metrics, summary_line
from glcan.parallel.finish import epoch_rows, measurements
from glcan.parallel.job import Job, build_job
from glcan.parallel.options import PipelineError
from glcan.parallel.shards import remove_shards
from glcan.parallel.supervise import spawn, worker_main
from glcan.parallel.worker import STATS


def fit_pipeline(model: Any, datamodule: Any, trainer: Any, cfg: Any, run: RunDir, config_yaml: str) -> int:
    """Train ``model`` with pipeline workers, then test it with ``trainer`` and write summary.json;
    the exit status. ``cfg`` is the parsed fit config, ``config_yaml`` its dump for config.yaml."""
    if run.resume_from is not None:
        raise PipelineError("a pipeline run cannot resume from a checkpoint yet; resume it in one process "
                            "(without --parallel.mode pipeline) or start a new run")
    if not model.task.pipeline:
        raise PipelineError(f"--parallel.mode pipeline does not support {model.task.kind.replace('_', '-')} yet "
                            "(its workers pass integer labels only); use --parallel.mode none or ddp")
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0)) if torchrun else 0
    job = build_job(model, datamodule, cfg.trainer, cfg.parallel, cfg.get("seed_everything"), str(run.path),
                    workers=int(os.environ["WORLD_SIZE"]) if torchrun else None, plan=rank == 0)
    if rank == 0:
        write_text(run.path / "config.yaml", config_yaml)
    code = spawn(job) if not torchrun else _run_torchrun(job, rank)
    if code != 0 or rank != 0:
        return code
    return finish(model, datamodule, trainer, job, run)


def _run_torchrun(job: Job, rank: int) -> int:
    if job.device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group("nccl" if job.device_type == "cuda" else "gloo", init_method="env://", rank=rank,
                            world_size=job.workers, timeout=datetime.timedelta(seconds=job.timeout))
    payload = [(job.run_dir, job.groups, job.group_cost_ms, job.model.state_dict()) if rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    job.run_dir, job.groups, job.group_cost_ms, state = payload[0]
    job.model.load_state_dict(state)  # every worker starts from rank 0's initial weights
    worker_main(rank, job)
    return 0


def finish(model: Any, datamodule: Any, trainer: Any, job: Job, run: RunDir) -> int:
    """Test the pipeline's checkpoint through Lightning; write metrics.csv and summary.json."""
    record = json.loads((run.path / STATS).read_text())
    for row in epoch_rows(record):
        step = row.pop("step")
        for lg in trainer.loggers:
            lg.log_metrics(row, step=step)
    job.datamodule.setup("test")
    trainer.test(model, datamodule=datamodule, ckpt_path=record["checkpoint"], verbose=False)
    summary = build_summary(model, datamodule, epochs=record["epochs"], global_step=record["global_step"],
                            seed=job.seed, precision=job.precision, test_metrics=stage_metrics(trainer, "test"),
                            measured=measurements(record, job), run_dir=str(run.path),
                            wandb_dir=wandb_run_dir(trainer.loggers))
    for lg in trainer.loggers:
        lg.save()
    path = run.write_summary(summary, trainer.loggers)
    remove_shards(run.path)
    print(summary_line(summary, path), flush=True)
    return 0
