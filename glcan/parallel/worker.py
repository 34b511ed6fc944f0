"""One pipeline worker: a plain loop over batches calling ``local_step`` on its own blocks.

Worker 0 reads the training data (the datamodule's loader, same seed, so the same order as a
one-process run); worker r > 0 receives each batch's labels and the detached output of worker
r-1's last block. After its step a worker sends its own last block's output on. Nothing is ever
sent back: block k's update needs nothing from later blocks, so the parameters after N batches
are those of the sequential local run.
"""

from __future__ import annotations

import datetime
import os
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from glcan.core.network import SplitNetwork
from glcan.core.step import BlockUpdate, check_finite, local_step
from glcan.core.timing import Stopwatch
from glcan.io import write_json
from glcan.lit.optim import build_scheduler, step_schedulers
from glcan.memory.meter import PeakMeter
from glcan.memory.predictor import autocast_for
from glcan.parallel import shards
from glcan.parallel.comm import BATCH, EPOCH_END, FINAL, Link, PeerLost, short_error
from glcan.parallel.job import Job, worker_dir

MEASURED_STEPS = (1, 2)  # step 0 creates the optimizer state; these steps are slower (kept out of throughput)
STATS = "pipeline.json"


class Worker:
    def __init__(self, rank: int, job: Job) -> None:
        self.rank, self.job, self.world = rank, job, job.workers
        self.mine = job.groups[rank]
        self.model, self.net = job.model, job.model.net
        self.is_last = rank == self.world - 1
        self.step = 0
        self.captured: Optional[torch.Tensor] = None
        self.stats: dict[str, Any] = {"rank": rank, "blocks": self.mine, "steps": 0, "images": 0, "compute_s": 0.0,
                                      "epoch_steps": [], "epoch_loss": {k: [] for k in self.mine}}
        self._loss = {k: 0.0 for k in self.mine}
        self._seen = 0
        self.done: list[tuple[float, int]] = []  # (time this worker finished batch i, its images)
        self.step_ms: list[float] = []  # compute time of each batch (from the first step after the memory-measured ones)

    def worker_name(self, r: int) -> str:
        return f"worker {r} ({self.job.blocks_text(r)})"

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        job = self.job
        torch.set_num_threads(job.threads or 1)
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = torch.device("cuda", local) if job.device_type == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method=job.init_method,
                                    rank=self.rank, world_size=self.world,
                                    timeout=datetime.timedelta(seconds=job.timeout))
        for k in self.mine:
            self.net.blocks[k].to(self.device)
            self.net.heads[k].to(self.device)
        self.net.train()
        self.optimizers = self.model.build_optimizers()
        spec = self.model.scheduler_spec
        self.schedulers = {k: build_scheduler(spec, self.optimizers[k], job.total_steps) for k in self.mine} if spec else {}
        shapes, batch = job.extra["block_shapes"], job.datamodule.batch_size
        name = self.worker_name
        self.link_in = Link(self.rank - 1, batch, shapes[self.mine[0] - 1], self.device, job.depth, name) if self.rank else None
        self.link_out = None
        if not self.is_last:
            self.link_out = Link(self.rank + 1, batch, shapes[self.mine[-1]], self.device, job.depth, name)
            self.net.blocks[self.mine[-1]].register_forward_hook(self._capture)
        if self.rank == 0:
            _set_rng_state(job.extra.get("rng_state"))
            self.loader = job.datamodule.train_dataloader()
            self.per_epoch = min(len(self.loader), job.extra["per_epoch"])
        self.update = BlockUpdate(self.optimizers, self.model.hparams.gradient_clip_val)
        self.meter = PeakMeter(self.device, blocks=self.mine)
        self.sub = SplitNetwork([self.net.blocks[k] for k in self.mine], [self.net.heads[k] for k in self.mine])
        worker_dir(job.run_dir).mkdir(parents=True, exist_ok=True)
        (worker_dir(job.run_dir) / f"worker{self.rank}.pid").write_text(str(os.getpid()))

    def _capture(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self.captured = output.detach()

    # ---------------------------------------------------------------- training
    def train_batch(self, inp: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        autocast = autocast_for(self.job.precision, self.device.type)
        held = [inp, y, *(self.link_out.pending() if self.link_out else [])]
        measure = self.step in MEASURED_STEPS
        with Stopwatch(self.device) as watch:
            with (self.meter.measure(self.sub, [self.optimizers[k] for k in self.mine], held) if measure
                  else nullcontext()), autocast:
                results = local_step(self.net, inp, y, step=self.update, blocks=self.mine)
            check_finite([loss for loss, _ in results], self.step, self.mine)
            step_schedulers(list(self.schedulers.values()), self.model.hparams.scheduler_interval, "batch")
        done = time.perf_counter()
        self.stats["compute_s"] += watch.wall_s
        n = int(y.shape[0])
        for k, (loss, _) in zip(self.mine, results):
            self._loss[k] += loss.float() * n  # a tensor: no device sync per block
        self._seen += n
        if self.link_out is not None:
            self.link_out.send(BATCH, epoch, self.step, y, self.captured)
            self.captured = None
        self.step += 1
        self.stats["steps"] += 1
        self.stats["images"] += n
        self.done.append((done, n))
        if self.step - 1 > MEASURED_STEPS[-1]:  # after the warm-up and the memory-measured steps
            self.step_ms.append(watch.wall_s * 1000.0)

    def run_epoch(self, epoch: int) -> int:
        job = self.job
        if self.rank == 0:
            for sampler in (getattr(self.loader, "sampler", None), getattr(self.loader.batch_sampler, "sampler", None)):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)  # as Lightning does at every epoch start
            it = iter(self.loader)
            for _ in range(self.per_epoch):
                if job.max_steps != -1 and self.step >= job.max_steps:
                    break
                x, y = next(it)
                self.train_batch(x.to(self.device), y.to(self.device), epoch)
            last_epoch = job.max_epochs != -1 and epoch + 1 >= job.max_epochs
            return FINAL if last_epoch or (job.max_steps != -1 and self.step >= job.max_steps) else EPOCH_END
        while True:
            kind, _, _, y, h = self.link_in.recv()
            if kind != BATCH:
                return kind
            self.train_batch(h, y, epoch)

    def run(self) -> None:
        self.setup()
        self.stats["start_time"] = time.time()
        epoch, kind, done, path = 0, EPOCH_END, [], None
        while kind != FINAL:
            kind = self.run_epoch(epoch)
            epoch += 1
            step_schedulers(list(self.schedulers.values()), self.model.hparams.scheduler_interval, "epoch")
            self._close_epoch()
            shards.save_shard(self.job.run_dir, epoch, self.rank, self.model, self.mine, self.optimizers,
                              self.schedulers, self.step, self.final_stats())
            if self.link_out is not None:
                self.link_out.send(kind, epoch, self.step)  # only after the shard is on disk
            else:
                path, done = shards.assemble(self.job.run_dir, epoch, self.world, self.model)
        if self.link_out is not None:
            self.link_out.drain()
        if self.world > 1:  # a send completes before the receiver has read it: nobody leaves early
            try:
                dist.barrier()
            except RuntimeError as e:
                raise PeerLost(f"a worker stopped before the end of the run: {short_error(e)}") from None
        if self.is_last:
            self.write_stats(path, done, epoch)

    def write_stats(self, path: Any, done: list[dict], epochs: int) -> None:
        """What the launcher needs to finish the run (test, summary.json, metrics.csv): the
        checkpoint and every worker's statistics, in ``pipeline.json``."""
        stats = [s["stats"] for s in sorted(done, key=lambda s: s["rank"])]
        stats[-1] = self.final_stats()
        write_json(Path(self.job.run_dir) / STATS, {"checkpoint": str(path), "epochs": epochs, "global_step": self.step,
                                                    "workers": stats})

    def _close_epoch(self) -> None:
        for k in self.mine:
            self.stats["epoch_loss"][k].append(float(self._loss[k]) / max(self._seen, 1))
            self._loss[k] = 0.0
        self._seen = 0
        self.stats["epoch_steps"].append(self.step)

    def final_stats(self) -> dict[str, Any]:
        s = dict(self.stats, end_time=time.time())
        s["recv_wait_s"] = self.link_in.wait_s if self.link_in else 0.0
        s["send_wait_s"] = self.link_out.wait_s if self.link_out else 0.0
        s.update(self.meter.result())
        s["memory_block_peaks"] = dict(self.meter.block_peaks)
        s["step_ms_median"] = statistics.median(self.step_ms) if self.step_ms else None
        s["steady_img_s"] = window_rate(self.done, warmup=max(MEASURED_STEPS[-1] + 1, self.world + 2))
        return s


def _set_rng_state(state: Optional[dict]) -> None:
    """Continue the launcher's global RNG streams (data augmentation draws from them)."""
    if state:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])


def window_rate(done: list[tuple[float, int]], warmup: int) -> Optional[float]:
    """Images per second this worker got through between batch ``warmup`` and its last batch.

    Every worker measures the same batches. A worker that is not the bottleneck can look
    faster over a short window (it fills or drains the queue to its neighbour); none looks
    slower than the pipeline, so the run's steady throughput is the minimum over workers.
    """
    if len(done) < 2:
        return None
    w = warmup if len(done) - warmup >= 3 else 0  # short runs: from the first batch
    span = done[-1][0] - done[w][0]
    return sum(n for _, n in done[w + 1:]) / span if span > 0 else None
