"""Pipeline stages x data-parallel replicas, inside Lightning's Trainer (``--parallel.mode pipeline``).

Lightning starts the processes and joins them in one torch.distributed world, exactly as for DDP:
its own launcher on one machine (``--parallel.workers P --parallel.replicas R``: P*R processes),
``torchrun`` or Slurm across several (``--trainer.num_nodes``). Rank ``r`` is stage ``r % P`` of
replica ``r // P``: the stages of a replica are neighbours, so a node holds whole pipelines and
only the replicas' gradient averaging crosses nodes.

One training step, as every rank runs it (``GLCanModule.training_step`` through
``glcan.core.step.local_step``): stage s receives the output of stage s-1's last block for this
batch (stage 0 reads the batch), trains its own blocks exactly as one process would, and passes
its last block's output on as soon as the forward has made it, before its own backward. Nothing
flows back, since no gradient crosses a block boundary, so a stage only ever waits for its input.
Sends are asynchronous (at most ``depth`` in flight), so stage s trains batch t while stage s+1
trains batch t-1. Every stage loads every batch of its replica: the labels, and the input for
the heads that read it (InfoPro, super-resolution's bicubic residual).

Replicas average each block's gradients among the ranks of its stage before the block's
optimizer steps (one all-reduce per block, only of that block's gradients).

Evaluation and checkpoints need the whole network. Before validation, test and every checkpoint,
every rank receives each block's parameters and buffers from the rank that trains it in replica
0, and a checkpoint takes each block's optimizer state from there too: a checkpoint is an
ordinary, whole Lightning checkpoint, which one device tests, predicts from or resumes, and which
a pipeline resumes (every rank reads it whole; the training loader's position included).

The stages exchange their blocks' losses on the steps Lightning writes logs for and at each
epoch's end (an all-reduce: the one point where stages wait for each other); there rank 0 logs
every block, and there every stage checks every loss, so a NaN stops all stages together.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import random
import statistics
import time
import warnings
from collections import deque
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

from glcan.core.split import balanced_boundaries, block_ranges
from glcan.core.step import BlockUpdate, local_step
from glcan.core.timing import Stopwatch
from glcan.lit.checks import ConfigError

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64)  # -1: int64 (labels)
HEADER = 8  # ndim, up to 6 sizes, dtype code


class PipelineError(ConfigError):
    """A pipeline setting that cannot work, or a stage that stopped; the message names it."""


# ---------------------------------------------------------------- grouping blocks into stages
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
    """Stage 0's cost of loading one training batch (a private, unshuffled loader)."""
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


def group_blocks(num_blocks: int, stages: int, grouping: Any, costs: Optional[Sequence[float]] = None) -> list[list[int]]:
    """Contiguous groups of block indices, one per stage (``grouping``: time, blocks or the first
    block of every stage after the first). A pipeline runs at the pace of its slowest stage, so
    ``time`` picks the grouping that minimises the slowest group's measured time (the exact
    dynamic programme of glcan.core.split)."""
    if not 1 <= stages <= num_blocks:
        raise PipelineError(f"parallel.workers={stages} must be between 1 and model.num_blocks={num_blocks}")
    if isinstance(grouping, (list, tuple)):
        starts = [int(b) for b in grouping]
        if len(starts) != stages - 1 or starts != sorted(set(starts)) or (starts and not 0 < starts[0] <= starts[-1] < num_blocks):
            raise PipelineError(f"parallel.grouping {starts} must list the first block of workers 1..{stages - 1}: "
                                f"{stages - 1} increasing indices in 1..{num_blocks - 1}")
    elif grouping == "blocks" or costs is None:
        base, extra = divmod(num_blocks, stages)
        sizes = [base + (1 if w < extra else 0) for w in range(stages)]
        starts = [sum(sizes[:w]) for w in range(1, stages)]
    else:
        prefix = [0.0]
        for c in costs:
            prefix.append(prefix[-1] + float(c))
        starts = balanced_boundaries(num_blocks, stages, lambda i, j: prefix[j] - prefix[i])
    return [list(range(a, b)) for a, b in block_ranges(starts, num_blocks)]


def short_error(e: BaseException) -> str:
    """A torch.distributed error's first line, without gloo's source-file prefix."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line).split(". This is typically")[0][:200]


# ---------------------------------------------------------------- the strategy
class PipelineStrategy(DDPStrategy):
    """Lightning's DDP processes, with each rank training one stage (a contiguous group of blocks)
    of one replica; see the module docstring.

    Args:
        stages: P, the pipeline's stages; the world size must be a multiple (P x replicas).
        grouping: how blocks are grouped into stages: ``time`` (measured on rank 0), ``blocks``
            (equal counts) or the first block of every stage after the first.
        depth: sends a stage may have in flight before it waits for its successor.
        threads: torch threads per process (default 1 on CPU, so P processes use P cores).
        timeout: seconds any rank waits on another before the run stops with one line.
    """

    strategy_name = "glcan_pipeline"

    def __init__(self, stages: int = 2, grouping: Union[str, list[int]] = "time", depth: int = 2,
                 threads: Optional[int] = None, timeout: float = 120.0, **kwargs: Any) -> None:
        super().__init__(timeout=datetime.timedelta(seconds=timeout), **kwargs)
        self.stages, self.grouping, self.depth, self.threads = int(stages), grouping, max(1, int(depth)), threads
        self.groups: list[list[int]] = []
        self.group_cost_ms: Optional[list[float]] = None
        self._stage_groups: list[Any] = []
        self._inflight: deque = deque()
        self.wait_s = [0.0, 0.0]  # seconds blocked receiving, and waiting for sends to be taken

    # ---------------------------------------------------------------- who is who
    @property
    def replicas(self) -> int:
        return max(1, self.world_size // self.stages)

    @property
    def stage(self) -> int:
        return self.global_rank % self.stages

    @property
    def replica(self) -> int:
        return self.global_rank // self.stages

    @property
    def blocks(self) -> list[int]:
        """The blocks this rank trains."""
        return self.groups[self.stage]

    def owner(self, block: int) -> int:
        """The rank whose copy of ``block`` is the run's: its stage in replica 0."""
        return next(s for s, g in enumerate(self.groups) if block in g)

    def describe(self, rank: int) -> str:
        g = self.groups[rank % self.stages] if self.groups else []
        where = f"block {g[0]}" if len(g) == 1 else f"blocks {g[0]}-{g[-1]}" if g else "?"
        return f"pipeline stage {rank % self.stages} of replica {rank // self.stages} (rank {rank}, {where})"

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # The stages of a replica read the same batches; the replicas split the data.
        return {"num_replicas": self.replicas, "rank": self.replica}

    # ---------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        # True here, and not the user's business: a stage steps only its own blocks' optimizers
        # while every stage steps every schedule (the learning rates stay the same everywhere),
        # and it computes the accuracy of blocks it did not train (torchmetrics adds the states up).
        warnings.filterwarnings("ignore", message=r".*Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`.*")
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        if self.root_device.type == "cpu":
            torch.set_num_threads(self.threads or 1)
        # Lightning reseeds every process here; keep the random state the command reached, so
        # stage 0 draws its augmentations exactly as a one-process run of the same seed does.
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        super().setup_environment()
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if self.world_size % self.stages:
            raise PipelineError(f"{self.world_size} processes cannot form pipelines of parallel.workers={self.stages} stages")
        # Every rank creates every group, in the same order (torch.distributed's rule).
        self._stage_groups = [dist.new_group([r * self.stages + s for r in range(self.replicas)])
                              for s in range(self.stages)]
        # Left to the interpreter's exit, gloo's groups are destroyed with their threads still
        # joinable, and the process aborts after a finished run: end them first.
        atexit.register(_end_process_groups)

    def setup(self, trainer: Any) -> None:
        module = self.lightning_module
        if not self.groups:
            self._plan_groups(module, trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._broadcast_module(lambda key: 0)  # every rank starts from rank 0's weights (or the checkpoint's)
            # Lightning's training loop broadcasts a SIGTERM flag from rank 0 before every batch:
            # a collective per step, after which the stages would wait for each other every batch,
            # and there would be no pipeline. The stages agree on stopping where they meet instead
            # (glcan.lit.callbacks.RunCheckpoint), so that broadcast is switched off here.
            trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
        else:
            self.gather_model()  # before DDP's own sync, which would spread rank 0's stale copies
        super().setup(trainer)

    def _plan_groups(self, module: Any, trainer: Any) -> None:
        """Rank 0 groups the blocks (timing them, for ``time``) and tells every rank."""
        k = module.net.num_blocks
        plan: list[Any] = [None]
        if self.global_rank == 0:
            costs = None
            if self.grouping == "time" and self.stages > 1:
                dm = trainer.datamodule
                costs = block_times_ms(module, dm.batch_size, dm.image_shape, dm.num_classes, self.root_device,
                                       self.threads or 1)
                costs[0] += data_time_ms(dm)  # stage 0 also loads the data
            groups = group_blocks(k, self.stages, self.grouping, costs)
            plan = [(groups, [round(sum(costs[b] for b in g), 1) for g in groups] if costs else None)]
        dist.broadcast_object_list(plan, src=0)
        self.groups, self.group_cost_ms = plan[0]

    def configure_ddp(self) -> None:
        """No DDP wrapper: each stage's gradients are averaged by :meth:`average_gradients`."""

    # ---------------------------------------------------------------- the step's messages
    def _lost(self, e: BaseException, peer: int, doing: str) -> PipelineError:
        return PipelineError(f"{self.describe(self.global_rank)}: {self.describe(peer)} stopped responding while "
                             f"{doing}: {short_error(e)}")

    def receive(self) -> Optional[tuple[torch.Tensor, ...]]:
        """This batch from the previous stage: (input of this stage's first block, x, y); None on
        the first stage, which loads the batch itself."""
        if self.stage == 0:
            return None
        peer, tensors, t0 = self.global_rank - 1, [], time.perf_counter()
        try:
            for _ in range(3):
                header = torch.empty(HEADER, dtype=torch.int64, device=self.root_device)
                dist.recv(header, peer, tag=0)
                ndim, *sizes = header.tolist()[:-1]
                tensors.append(torch.empty(sizes[:ndim], dtype=DTYPES[int(header[-1])], device=self.root_device))
                dist.recv(tensors[-1], peer, tag=1)
        except RuntimeError as e:
            raise self._lost(e, peer, "sending") from None
        finally:
            self.wait_s[0] += time.perf_counter() - t0
        return tuple(tensors)

    def send(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """Pass this stage's output on with the batch it was made from (asynchronously; first wait
        while ``depth`` batches are in flight). The batch travels with it, so every stage trains on
        exactly the images (augmentation included) and targets of stage 0."""
        if self.stage == self.stages - 1:
            return
        while len(self._inflight) >= self.depth:
            self._wait_oldest()
        peer, works, kept = self.global_rank + 1, [], []
        try:
            for t in (h, x, y):
                t = t.detach().contiguous() if t.is_floating_point() else t.detach().long().contiguous()
                dtype = DTYPES.index(t.dtype) if t.is_floating_point() else -1
                header = torch.tensor([t.dim(), *t.shape, *[0] * (HEADER - 2 - t.dim()), dtype], dtype=torch.int64,
                                      device=self.root_device)
                works += [dist.isend(header, peer, tag=0), dist.isend(t, peer, tag=1)]
                kept += [header, t]
        except RuntimeError as e:
            raise self._lost(e, peer, "receiving") from None
        self._inflight.append((works, kept))  # the tensors live until their sends complete

    def _wait_oldest(self) -> None:
        works, _ = self._inflight.popleft()
        t0 = time.perf_counter()
        try:
            for w in works:
                w.wait()
        except RuntimeError as e:
            raise self._lost(e, self.global_rank + 1, "receiving") from None
        finally:
            self.wait_s[1] += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait until the next stage has taken every output sent to it."""
        while self._inflight:
            self._wait_oldest()

    @contextlib.contextmanager
    def _together(self, doing: str) -> Iterator[None]:
        """A collective of every rank: a rank that died or hangs ends it in one line."""
        try:
            yield
        except RuntimeError as e:
            raise PipelineError(f"{self.describe(self.global_rank)}: another stage stopped responding while they "
                                f"{doing}: {short_error(e)}") from None

    def exchange(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over every rank of ``values`` (each stage fills in its own blocks' entries)."""
        out = values.detach().to(self.root_device, torch.float64).clone()
        with self._together("exchanged losses"):
            dist.all_reduce(out)
        return out

    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of one block (and head) over the replicas of this stage."""
        if self.replicas == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        with self._together("averaged gradients"):
            dist.all_reduce(flat, group=self._stage_groups[self.stage])
        flat /= self.replicas
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    # ---------------------------------------------------------------- the whole network, where needed
    def _owner_of(self, key: str) -> int:
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "net" and parts[1] in ("blocks", "heads"):
            return self.owner(int(parts[2]))
        return 0

    def gather_model(self) -> None:
        """Every rank receives every block (parameters and buffers) from the rank that trains it."""
        self.flush()
        self._broadcast_module(self._owner_of)

    def _broadcast_module(self, source: Any) -> None:
        """Every parameter and buffer from rank ``source(key)``."""
        with torch.no_grad(), self._together("shared the network"):
            for key, tensor in self.lightning_module.state_dict(keep_vars=True).items():
                dist.broadcast(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor, src=source(key))

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.gather_model()
        return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """Block k's optimizer state, from the rank that trains block k."""
        index = next(i for i, o in enumerate(self.optimizers) if o is optimizer or getattr(o, "optimizer", None) is optimizer)
        state = [optimizer.state_dict() if self.global_rank == self.owner(index) else None]
        with self._together("saved a checkpoint"):
            dist.broadcast_object_list(state, src=self.owner(index))
        return state[0]

    def summary_fields(self, measured: dict[str, Any], batch_size: int) -> dict[str, Any]:
        """summary.json's pipeline fields, from every rank's own measurements (a collective).

        A pipeline has no step that trains the whole network, so ``step_time_ms`` is null; in
        the steady state every stage steps once per period of the slowest, so the throughput is
        the replicas' batches per the slowest stage's median step time."""
        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, {**{k: measured.get(k) for k in ("peak_memory_bytes", "step_time_ms", "step_cpu_ms")},
                                       "wait_s": [round(w, 2) for w in self.wait_s]})
        stages = every[:self.stages]  # replica 0's
        steps = [s["step_time_ms"] for s in every]
        peaks = [s["peak_memory_bytes"] for s in stages]
        return {
            "parallel": "pipeline", "workers": self.stages, "replicas": self.replicas, "worker_blocks": self.groups,
            "depth": self.depth, "threads": torch.get_num_threads(), "grouping": self.grouping,
            "group_cost_ms": self.group_cost_ms,
            "throughput_img_s": batch_size * self.replicas * 1000.0 / max(steps) if all(steps) else None,
            "peak_memory_bytes": max((p for p in peaks if p is not None), default=None),
            "worker_peak_memory_bytes": peaks, "worker_step_ms": [s["step_time_ms"] for s in stages],
            "worker_step_cpu_ms": [s["step_cpu_ms"] for s in stages], "step_time_ms": None, "step_cpu_ms": None,
            "worker_recv_wait_s": [s["wait_s"][0] for s in stages], "worker_send_wait_s": [s["wait_s"][1] for s in stages],
        }

    def on_validation_start(self) -> None:
        self.gather_model()
        super().on_validation_start()

    def on_test_start(self) -> None:
        self.gather_model()
        super().on_test_start()

    def on_train_end(self) -> None:
        self.flush()
        super().on_train_end()


def _end_process_groups() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_pipeline(model: Any, trainer: Any, stages: int, grouping: Any, depth: int, timeout: float,
                   threads: Optional[int]) -> None:
    """Refuse, in one line and before any process starts, what a pipeline cannot do."""
    h = model.hparams
    if not model.is_local:
        raise PipelineError(f"parallel.mode=pipeline trains model.method=local (K blocks), not {h.method}")
    group_blocks(model.net.num_blocks, stages, grouping)
    if h.get("lookahead"):
        raise PipelineError("model.lookahead is not supported in pipeline mode: a block's momentum copy of the next "
                            "block needs that block's weights, which another stage trains")
    if (h.get("head_kwargs") or {}).get("relay"):
        raise PipelineError("head_kwargs.relay is not supported in pipeline mode: a head reads the state the head "
                            "before it left for the same batch, on another stage")
    if model.task.kind == "detection":
        raise PipelineError("detection is not supported in pipeline mode yet: a stage would send a detector's kept "
                            "pyramid levels and the images' boxes; use parallel.mode ddp or one process")
    if (trainer.get("accumulate_grad_batches") or 1) != 1:
        raise PipelineError("trainer.accumulate_grad_batches must be 1 (each block steps once per batch)")
    if depth < 1 or timeout <= 0 or (threads is not None and threads < 1):
        raise PipelineError("parallel.depth and parallel.threads must be >= 1 and parallel.timeout > 0")
