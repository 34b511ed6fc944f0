"""Step time through ``train.py fit`` itself: Lightning's loop, logging and metrics included.

bench/step_time.py times the bare step (``local_step`` and the block updates). A user's run
also pays Lightning's loop around it and, per block, a torchmetrics update, ``self.log`` calls
and an optimizer step through the strategy; that overhead grows with K. This benchmark measures
what a user gets: each method trains through the real CLI (the mnist5k config's recipe on
``fake`` data of the same shape, ResNet-32, batch 128), with the run's own ``StepTimer``
(process CPU time per step, the first steps of every fit left out as warm-up).

Runs are interleaved in one process, round after round (E2E, local K=4, local K=16, E2E, ...),
with the thread count pinned, so a change in the machine's load hits every method alike. Beside
each ratio stands the method's step FLOPs relative to E2E's (counted by
``torch.utils.flop_counter`` on the same model): the floor the step could reach.

Usage::

    python bench/fit_step_time.py                 # 4 rounds x 8 timed steps per method, 1 thread
    python bench/fit_step_time.py --rounds 2 --steps 4
    python bench/fit_step_time.py --profile "local K=16"   # where one method's step time goes

Each allocator setting (see below) is measured in its own process. Writes
docs/benchmarks/fit_step_time.md (and prints it).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.cli.cli import GLCanCLI  # noqa: E402
from glcan.core.timing import MALLOC_ENV, system_busy_s  # noqa: E402
from glcan.io import write_text  # noqa: E402
from glcan.lit.callbacks import StepTimer  # noqa: E402
from glcan.lit.plan import assemble  # noqa: E402
from glcan.memory.predictor import count_step_flops  # noqa: E402

CONFIG = str(ROOT / "configs" / "mnist5k_resnet20_glcan_k4.yaml")
METHODS = [("e2e", ["--model.method", "e2e"]),
           ("local K=4", ["--model.method", "local", "--model.num_blocks", "4"]),
           ("local K=16", ["--model.method", "local", "--model.num_blocks", "16"])]
TARGETS = {"local K=4": 1.00, "local K=16": 0.92}  # the parallel issue's targets (CPU time / E2E's)
WARMUP = 3  # StepTimer's default: the first steps of every fit are not timed


def fit_once(args: list[str], batch: int, steps: int, out: Path) -> tuple[list[float], Any]:
    """One short fit through the CLI; the StepTimer's CPU ms per timed step, and the CLI."""
    n = batch * (steps + WARMUP)
    cli = GLCanCLI(["fit", "--config", CONFIG, "--model.backbone", "resnet32", *args,
                    "--data.name", "fake", "--data.fake_size", str(n), "--data.batch_size", str(batch),
                    "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.limit_test_batches", "1",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--logger.enabled", "false", "--run_dir", str(out)])
    if cli.exit_code:
        raise SystemExit(f"fit {' '.join(args)} failed ({cli.exit_code})")
    (timer,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, StepTimer)]
    return list(timer.cpu_ms), cli


class _Profile(L.Callback):
    """cProfile over the training steps after the warm-up (where the step's time goes)."""

    def __init__(self) -> None:
        self.profile, self.seen = cProfile.Profile(), 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.seen += 1
        if self.seen > WARMUP:
            self.profile.enable()

    def on_train_batch_end(self, *args: Any) -> None:
        self.profile.disable()


def profile(a: argparse.Namespace) -> None:
    """One fit of ``a.profile``'s method under cProfile; the top functions by cumulative time."""
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:  # the callback by its class path, as a config names one
        _, cli = fit_once([*dict(METHODS)[a.profile], "--trainer.callbacks+=fit_step_time._Profile"], a.batch,
                          a.steps, Path(tmp) / "p")
    (probe,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "_Profile"]
    pstats.Stats(probe.profile).sort_stats("cumulative").print_stats(40)


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """Interleaved fits in this process: median CPU ms per step and FLOPs / E2E, per method."""
    torch.set_num_threads(a.threads)
    cpu_ms: dict[str, list[float]] = {name: [] for name, _ in METHODS}
    models: dict[str, Any] = {}
    busy0, own0, t0 = system_busy_s(), time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for i, (name, args) in enumerate(METHODS):
                times, cli = fit_once(args, a.batch, a.steps, Path(tmp) / f"r{r}_{i}")
                models[name] = cli.model
                cpu_ms[name] += times
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {statistics.median(v):.0f} ms"
                                                          for n, v in cpu_ms.items()), file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    others = None if busy0 is None else max(0.0, ((system_busy_s() or 0) - busy0 - (time.process_time() - own0)) / wall)
    flops = {name: count_step_flops(lambda m=m: assemble(m.init_arguments), a.batch, (3, 32, 32), 10)
             for name, m in models.items()}
    return {"cpu_ms": {n: statistics.median(v) for n, v in cpu_ms.items()},
            "flops": {n: f / flops["e2e"] for n, f in flops.items()}, "others": others}


def table(title: str, r: dict[str, Any]) -> list[str]:
    median, others = r["cpu_ms"], r["others"]
    lines = [f"## {title}", "", f"Other processes used {'n/a' if others is None else f'{others:.2f}'} cores on "
             "average meanwhile.", "",
             "| method | CPU ms / step | CPU / E2E | FLOPs / E2E | target (CPU / E2E) | |", "|---|---|---|---|---|---|"]
    for name, ms in median.items():
        ratio, goal = ms / median["e2e"], TARGETS.get(name)
        verdict = "" if goal is None else ("met" if ratio <= goal else f"missed by {ratio - goal:.3f}")
        lines.append(f"| {name} | {ms:.0f} | {ratio:.3f} | {r['flops'][name]:.3f} | "
                     f"{'—' if goal is None else f'<= {goal:.2f}'} | {verdict} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="timed steps per fit (after the warm-up steps)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "fit_step_time.md"))
    p.add_argument("--profile", choices=[name for name, _ in METHODS],
                   help="no table: one fit of this method under cProfile, the top 40 functions")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # measure and print JSON
    a = p.parse_args()
    if a.profile:
        return profile(a)
    if a.child:
        print(json.dumps(measure(a)))
        return
    start, results = time.time(), {}
    # One process per allocator setting (glibc reads them at start-up), the default first.
    for label, env in (("default", {}), ("raised", MALLOC_ENV)):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], env={**os.environ, **env},
                               stdout=subprocess.PIPE, text=True, check=True)
        results[label] = json.loads(child.stdout.strip().splitlines()[-1])
    command = shlex.join(["python", "bench/fit_step_time.py", *sys.argv[1:]])
    lines = ["# Step time through `train.py fit`", "",
             f"Command: `{command}` ({(time.time() - start) / 60:.1f} min). Written by bench/fit_step_time.py.", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}, fp32, {a.threads} thread(s). ResNet-32, batch {a.batch}, the mnist5k config's "
             "recipe (SGD Nesterov, one-cycle, GLCAN heads, memory split) on fake data of the same shape, "
             "3x32x32.", "",
             "Median process CPU time per training step as the run's own StepTimer records it (Lightning's loop, "
             "per-block metrics, logging and optimizer steps included), fits interleaved in one process, "
             f"{a.rounds} rounds x {a.steps} timed steps per method. FLOPs: one training step's, counted "
             "(torch.utils.flop_counter), relative to E2E's: the floor the step could reach.", "",
             "Process CPU time includes the kernel's: with glibc's default thresholds E2E hands its large freed "
             "activations back to the kernel every step and pays page faults for them on the next (a CPU "
             "effect; CUDA's caching allocator has none). The second table raises the thresholds "
             f"({' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}), as bench/step_time.py does, which is "
             "fair to E2E; the targets are judged there.", ""]
    lines += table("glibc's default allocator (what a CPU user gets)", results["default"])
    lines += table("Allocator thresholds raised (fair to E2E; the targets)", results["raised"])
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(a.out, text)


if __name__ == "__main__":
    main()
