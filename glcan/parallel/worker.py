"""One pipeline worker: a plain loop over batches calling ``local_step`` on its own blocks.

Worker 0 reads the training data (the datamodule's loader, same seed, so the same order as a
one-process run); worker r > 0 receives each batch's labels and the detached output of worker
r-1's last block. After its step a worker sends its own last block's output on. Nothing is ever
sent back: block k's update needs nothing from later blocks, so the parameters after N batches
are those of the sequential local run.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from glcan.core.network import SplitNetwork
from glcan.core.step import local_step
from glcan.lit.schedules import build_scheduler
from glcan.memory.meter import CPU_METHOD, CUDA_METHOD
from glcan.memory.tracker import MemoryTracker, watch_network
from glcan.parallel import checkpoint as ckpt
from glcan.parallel.comm import BATCH, EPOCH_END, FINAL, Link, PeerLost
from glcan.parallel.plan import Job

MEASURED_STEPS = (1, 2)  # steps whose memory the CPU tracker measures (slower: kept out of throughput)


def worker_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "workers"


class Worker:
    def __init__(self, rank: int, job: Job) -> None:
        self.rank, self.job, self.world = rank, job, job.workers
        self.mine = job.groups[rank]
        self.model, self.net = job.model, job.model.net
        self.is_last = rank == self.world - 1
        self.step = 0
        self.captured: Optional[torch.Tensor] = None
        self.stats: dict[str, Any] = {"rank": rank, "blocks": self.mine, "steps": 0, "images": 0, "compute_s": 0.0,
                                      "epoch_steps": [], "epoch_loss": {k: [] for k in self.mine}, "done": []}
        self._loss = {k: 0.0 for k in self.mine}
        self._seen = 0
        self.peak: Optional[int] = None
        self.block_peaks: dict[int, int] = {}

    def describe(self, r: int) -> str:
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
        factory = self.model.scheduler_factory
        self.schedulers = {k: build_scheduler(factory, self.optimizers[k], job.total_steps) for k in self.mine} if factory else {}
        shapes, batch = job.extra["block_shapes"], job.datamodule.batch_size
        describe = self.describe
        self.link_in = Link(self.rank - 1, batch, shapes[self.mine[0] - 1], self.device, job.depth, describe) if self.rank else None
        self.link_out = None
        if not self.is_last:
            self.link_out = Link(self.rank + 1, batch, shapes[self.mine[-1]], self.device, job.depth, describe)
            self.net.blocks[self.mine[-1]].register_forward_hook(self._capture)
        if self.rank == 0:
            _set_rng_state(job.extra.get("rng_state"))
            self.loader = job.datamodule.train_dataloader()
            self.per_epoch = min(len(self.loader), job.extra["per_epoch"])
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        worker_dir(job.run_dir).mkdir(parents=True, exist_ok=True)
        (worker_dir(job.run_dir) / f"worker{self.rank}.pid").write_text(str(os.getpid()))

    def _capture(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self.captured = output.detach()

    # ---------------------------------------------------------------- training
    def block_step(self, k: int) -> None:
        """Clip, step and zero block k's optimizer, as GLCanModule._block_step."""
        opt, clip = self.optimizers[k], self.model.hparams.gradient_clip_val
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def train_batch(self, inp: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        measure = self.device.type == "cpu" and self.step in MEASURED_STEPS
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.job.precision.startswith("bf16") else nullcontext()
        t0 = time.perf_counter()
        tracker = MemoryTracker() if measure else None
        with tracker or nullcontext(), self._watch(tracker, [inp, y]), autocast:
            results = local_step(self.net, inp, y, step=self.block_step, blocks=self.mine)
        if self.model.hparams.scheduler_interval == "step":
            for s in self.schedulers.values():
                s.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        done = time.perf_counter()
        self.stats["compute_s"] += done - t0
        if tracker is not None:
            self._record_peak(tracker)
        n = int(y.shape[0])
        for k, (loss, _) in zip(self.mine, results):
            self._loss[k] += float(loss) * n
        self._seen += n
        if self.link_out is not None:
            self.link_out.send(BATCH, epoch, self.step, y, self.captured)
            self.captured = None
        self.step += 1
        self.stats["steps"] += 1
        self.stats["images"] += n
        self.stats["done"].append((done, n))

    def _watch(self, tracker: Optional[MemoryTracker], inputs: list) -> Any:
        if tracker is None:
            return nullcontext()
        sub = SplitNetwork([self.net.blocks[k] for k in self.mine], [self.net.heads[k] for k in self.mine])
        watch = watch_network(tracker, sub, [self.optimizers[k] for k in self.mine])
        tracker.register([*inputs, *(self.link_out.pending() if self.link_out else [])], "input")
        tracker.reset_peak()
        return watch

    def _record_peak(self, tracker: MemoryTracker) -> None:
        self.peak = max(self.peak or 0, int(tracker.peak))
        for phase, v in tracker.phase_peaks.items():
            if phase is not None:
                k = self.mine[phase]
                self.block_peaks[k] = max(self.block_peaks.get(k, 0), int(v))

    def run_epoch(self, epoch: int) -> int:
        job = self.job
        if self.rank == 0:
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
        epoch, kind, shards = 0, EPOCH_END, None
        while kind != FINAL:
            kind = self.run_epoch(epoch)
            epoch += 1
            if self.model.hparams.scheduler_interval == "epoch":
                for s in self.schedulers.values():
                    s.step()
            self._close_epoch()
            ckpt.save_shard(self.job.run_dir, epoch, self.rank, self.model, self.mine, self.optimizers,
                            self.schedulers, self.step, self.final_stats())
            if self.link_out is not None:
                self.link_out.send(kind, epoch, self.step)  # only after the shard is on disk
            else:
                path, shards = ckpt.assemble(self.job.run_dir, epoch, self.world, self.model, self.job.datamodule)
        if self.link_out is not None:
            self.link_out.drain()
        if self.is_last:
            from glcan.parallel.report import finish

            finish(self, path, shards, epoch)

    def _close_epoch(self) -> None:
        for k in self.mine:
            self.stats["epoch_loss"][k].append(self._loss[k] / max(self._seen, 1))
            self._loss[k] = 0.0
        self._seen = 0
        self.stats["epoch_steps"].append(self.step)

    def final_stats(self) -> dict[str, Any]:
        s = dict(self.stats, end_time=time.time())
        s["recv_wait_s"] = self.link_in.wait_s if self.link_in else 0.0
        s["send_wait_s"] = self.link_out.wait_s if self.link_out else 0.0
        if self.device.type == "cuda":
            s["peak_memory_bytes"], s["memory_method"] = int(torch.cuda.max_memory_allocated(self.device)), CUDA_METHOD
        else:
            s["peak_memory_bytes"], s["memory_method"] = self.peak, CPU_METHOD if self.peak is not None else None
        s["memory_block_peaks"] = self.block_peaks
        if not self.is_last:
            s["done"] = []  # only the last worker's completion times measure the pipeline
        return s


def _set_rng_state(state: Optional[dict]) -> None:
    """Continue the launcher's global RNG streams (data augmentation draws from them)."""
    if state:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])


def worker_main(rank: int, job: Job) -> None:
    """Process entry (torch.multiprocessing or torchrun): run, or stop with one line naming us."""
    worker = Worker(rank, job)
    try:
        worker.run()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - turned into one line for the launcher and the user
        cause = (str(e).strip().splitlines() or [""])[0]
        message = f"pipeline worker {rank} ({job.blocks_text(rank)}) {'stopped' if isinstance(e, PeerLost) else 'failed'}: " \
                  f"{cause if isinstance(e, PeerLost) else f'{type(e).__name__}: {cause}'}"
        try:
            path = worker_dir(job.run_dir) / f"worker{rank}.error"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"message": message, "peer_lost": isinstance(e, PeerLost)}))
        except OSError:
            pass
        if not job.spawned:
            print(f"error: {message}", file=sys.stderr, flush=True)
        if os.environ.get("GLCAN_DEBUG"):
            traceback.print_exc()
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
