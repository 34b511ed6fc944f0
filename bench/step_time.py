"""Step time of every method, interleaved in one process: the time ratios glcan reports.

Wall-clock times of runs made minutes apart on a shared machine differ 2-10x for the same
work, so this benchmark builds every method's model once and then times them in turn, round
after round (A, B, C, A, B, C, ...), in one process with a fixed thread count, and reports
process CPU time per step (wall time beside it). Methods: E2E, E2E with per-unit checkpointing,
local K in {2, 4, 8, 16}, and local with per-unit checkpointing inside each block at K=4 and 16.
Every model starts from the same weights and trains on the same batch.

The step timed is the training step as glcan runs it, without Lightning's loop around it:
``local_step`` with the one ``BlockUpdate`` (clip, step, zero) and the per-block torchmetrics
updates, for every method (E2E is the network as one block). Lightning adds the same loop
overhead to every method.

glibc returns E2E's large freed activation buffers to the kernel every step (page faults the
local methods do not pay); the benchmark therefore runs with MALLOC_TRIM_THRESHOLD_ and
MALLOC_MMAP_THRESHOLD_ raised (it re-executes itself with them), which is fair to E2E.

Usage::

    python bench/step_time.py                     # ResNet-32 and ResNet-110, 1 thread and all threads
    python bench/step_time.py --quick             # ResNet-32, 1 thread, fewer rounds

Writes docs/benchmarks/step_time.md (and prints the tables).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.core.timing import MALLOC_ENV  # noqa: E402

if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):  # the new process allocates under them
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

import torch  # noqa: E402

from glcan.core.step import BlockUpdate, local_step  # noqa: E402
from glcan.core.timing import Stopwatch, system_busy_s  # noqa: E402
from glcan.io import write_text  # noqa: E402
from glcan.lit import GLCanModule  # noqa: E402
from glcan.lit.plan import assemble  # noqa: E402
from glcan.memory import predict  # noqa: E402

METHODS = [("e2e", "e2e", 1), ("e2e_recompute", "e2e_recompute", 1)] + \
          [(f"local K={k}", "local", k) for k in (2, 4, 8, 16)] + \
          [(f"local_recompute K={k}", "local_recompute", k) for k in (4, 16)]
TARGETS = [("local K=4", "e2e", 1.03), ("local K=16", "e2e", 1.08), ("local K=4", "e2e_recompute", 0.85)]
IMAGE, CLASSES = (3, 32, 32), 10


class Contender:
    """One method's model, optimizers and the step it takes."""

    def __init__(self, name: str, method: str, k: int, arch: str, batch: int) -> None:
        torch.manual_seed(0)  # the same backbone weights for every method
        self.name, self.method = name, method
        self.model = GLCanModule.planned(backbone=arch, method=method, num_blocks=k, split="memory", batch_size=batch,
                                         image_shape=IMAGE, num_classes=CLASSES)
        self.model.train()
        self.optimizers = self.model.build_optimizers()
        self.update = BlockUpdate(self.optimizers)
        self.metrics = self.model.metrics.acc("train")
        self.cpu_ms: list[float] = []
        self.wall_ms: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        results = local_step(self.model.net, x, y, step=self.update)
        for metric, (_, logits) in zip(self.metrics, results):
            metric.update(logits, y)

    def timed(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            with Stopwatch() as w:
                self.step(x, y)
            self.cpu_ms.append(w.cpu_s * 1000)
            self.wall_ms.append(w.wall_s * 1000)


def bench(arch: str, threads: int, batch: int, rounds: int, steps: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    contenders = [Contender(name, method, k, arch, batch) for name, method, k in METHODS]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *IMAGE, generator=g), torch.randint(0, CLASSES, (batch,), generator=g)
    for c in contenders:  # warm-up: optimizer state, allocator, oneDNN primitives
        c.step(x, y)
        c.step(x, y)
    busy0, own0, t0 = system_busy_s(), time.process_time(), time.perf_counter()
    for r in range(rounds):
        for c in contenders:
            c.timed(x, y, steps)
        print(f"  {arch} {threads} thread(s) round {r + 1}/{rounds}: " +
              ", ".join(f"{c.name} {statistics.median(c.cpu_ms):.0f}" for c in contenders), flush=True)
    wall = time.perf_counter() - t0
    others = None if busy0 is None else max(0.0, ((system_busy_s() or 0) - busy0 - (time.process_time() - own0)) / wall)
    memory = {c.name: predict(lambda c=c: assemble(c.model.init_arguments), batch, IMAGE, CLASSES).peak_bytes
              for c in contenders}
    return {"arch": arch, "threads": threads, "batch": batch, "rounds": rounds, "steps": steps, "others_cpu": others,
            "cpu_ms": {c.name: statistics.median(c.cpu_ms) for c in contenders},
            "wall_ms": {c.name: statistics.median(c.wall_ms) for c in contenders},
            "spread": {c.name: (min(c.cpu_ms), max(c.cpu_ms)) for c in contenders},
            "memory": memory, "boundaries": {c.name: c.model.net.boundaries for c in contenders}}


def table(r: dict[str, Any]) -> list[str]:
    e2e, ckpt = r["cpu_ms"]["e2e"], r["cpu_ms"]["e2e_recompute"]
    mem_e2e = r["memory"]["e2e"]
    lines = [f"### {r['arch']}, batch {r['batch']}, {r['threads']} thread(s)", "",
             "| method | CPU ms / step | CPU / E2E | CPU / E2E checkpointed | wall ms / step | min-max CPU ms | "
             "predicted memory / E2E |", "|---|---|---|---|---|---|---|"]
    for name, cpu in r["cpu_ms"].items():
        lo, hi = r["spread"][name]
        lines.append(f"| {name} | {cpu:.0f} | {cpu / e2e:.3f} | {cpu / ckpt:.3f} | {r['wall_ms'][name]:.0f} | "
                     f"{lo:.0f}-{hi:.0f} | {r['memory'][name] / mem_e2e:.3f} |")
    others = r["others_cpu"]
    lines += ["", f"{r['rounds']} rounds x {r['steps']} steps per method, interleaved; other processes used "
              f"{'n/a' if others is None else f'{others:.2f}'} cores on average meanwhile.", ""]
    return lines


def targets(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Targets (ResNet-32, batch 128, 1 thread, CPU time)", "",
             "| ratio | target | measured | |", "|---|---|---|---|"]
    for r in results:
        if r["arch"] != "resnet32" or r["threads"] != 1:
            continue
        for a, b, goal in TARGETS:
            v = r["cpu_ms"][a] / r["cpu_ms"][b]
            lines.append(f"| {a} / {b} | <= {goal:.2f} | {v:.3f} | {'met' if v <= goal else f'missed by {v - goal:.3f}'} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet32", "resnet110"])
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts; 'all' = every core")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="ResNet-32, 1 thread, 3 rounds")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "step_time.md"))
    a = p.parse_args()
    if a.quick:
        a.archs, a.threads, a.rounds = ["resnet32"], ["1"], 3
    start = time.time()
    results = []
    for arch in a.archs:
        for t in a.threads:
            results.append(bench(arch, os.cpu_count() or 1 if t == "all" else int(t), a.batch, a.rounds, a.steps))
    command = shlex.join(["python", "bench/step_time.py", *sys.argv[1:]])
    lines = ["# Step time, interleaved in one process", "",
             f"Command: `{command}` ({(time.time() - start) / 60:.1f} min). Written by bench/step_time.py.", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, fp32, {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}.", "",
             "Every method's model is built once; they are timed in turn, round after round, in this one process "
             "(A, B, C, A, B, C, ...), so a change in the machine's load hits them alike. Figures are medians of "
             "process CPU time per training step (all K block updates, the optimizer steps and the per-block "
             "metric updates); wall time beside it. Memory is the predictor's steady-state peak for the same "
             "batch (glcan.memory.predict).", ""]
    lines += targets(results)
    for r in results:
        lines += table(r)
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(a.out, text)


if __name__ == "__main__":
    main()
