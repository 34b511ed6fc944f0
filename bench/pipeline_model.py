"""The pipeline throughput model (glcan/parallel/throughput.py): checked here, predicted for GPUs.

Two parts, written to docs/benchmarks/pipeline_model.md:

1. **Check at P=2 on this machine.** For CIFAR ResNet-32 and ResNet-110 at K=4 (batch 128, the
   setting of bench/parallel.py), launch 1 pipeline worker x 1 thread and 2 workers x 1 thread,
   interleaved, ``--runs`` times, through the same launcher as bench/parallel.py. The model's
   inputs are the launcher's own measurements: the time of each worker's group of blocks (its
   probe, 1 thread, data loading in group 0) and what crosses the group boundary (the activation
   with its batch of images and labels); the link
   is loopback gloo (``--loopback-gbs``, transfers charged to both ends: the cores copy them).
   Predicted 2-worker images/s against the measured median, and the predicted speedup against
   the measured 2-worker / 1-worker ratio.
2. **GPU predictions.** Per-block step times measured here (1 thread, the same probe) give each
   block's share of a step; a GPU's step time is an assumption, the step's counted FLOPs at
   ``--gpu-tflops`` sustained; links are :data:`glcan.parallel.throughput.LINKS`. Predicted
   images/s, speedup over one GPU and bubble for P stages x R replicas: stages inside a node over
   NVLink or PCIe, replicas across nodes over 25 Gb/s Ethernet.

    python bench/pipeline_model.py                  # about 6 minutes on 2 idle cores
    python bench/pipeline_model.py --runs 0         # GPU predictions only (about 1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from glcan.lit import GLCanModule  # noqa: E402
from glcan.lit.plan import assemble  # noqa: E402
from glcan.memory.predictor import count_step_flops  # noqa: E402
from glcan.lit.pipeline import block_times_ms, group_blocks  # noqa: E402
from glcan.parallel.throughput import LINKS, Link, predict  # noqa: E402
from parallel import run_once  # noqa: E402  bench/parallel.py: the same launches, the same measurement

BATCH = 128


def block_sizes(model: GLCanModule, batch: int) -> tuple[list[int], list[int]]:
    """What crosses each block's output boundary at ``batch`` (the activation, with the batch of
    images and labels that travels with it) and each block's gradient bytes (block + head)."""
    net, out, h = model.net, [], torch.zeros(1, 3, 32, 32)
    carried = batch * (h.numel() * h.element_size() + 8)  # the images and int64 labels
    with torch.no_grad():
        net.eval()
        for block in net.blocks:
            h = block(h)
            out.append(h[0].numel() * h.element_size() * batch + carried)
        net.train()
    grads = [sum(p.numel() * p.element_size() for m in (b, hd) for p in m.parameters())
             for b, hd in zip(net.blocks, net.heads)]
    return out, grads


def check(arch: str, runs: int, steps: int, gbs: float, tmp: Path) -> dict:
    model = GLCanModule.planned(backbone=arch, num_blocks=4, split="memory", batch_size=BATCH)
    split, (boundary, _) = model.net.boundaries, block_sizes(model, BATCH)
    loopback = Link(f"loopback gloo, {gbs:g} GB/s", gbs * 1e9, 1e-4)
    one, two, foreign = [], [], []
    grouping = "time"
    for r in range(runs):  # interleaved: a change of machine load hits both settings alike
        s1 = run_once(arch, split, 1, 1, "blocks", steps, tmp / f"{arch}_1_{r}")
        s2 = run_once(arch, split, 2, 1, grouping, steps, tmp / f"{arch}_2_{r}")
        if grouping == "time":  # the probe's measurement, once; later runs keep its grouping
            groups, cost_ms = s2["worker_blocks"], s2["group_cost_ms"]
            grouping = json.dumps([g[0] for g in groups[1:]])
        foreign.append(s1["foreign_cores"])  # known for the one-process run only (bench/parallel.py)
        one.append(s1["throughput_img_s"])
        two.append(s2["throughput_img_s"])
        print(f"{arch} run {r + 1}: 1 worker {one[-1]:.1f}, 2 workers {two[-1]:.1f} images/s", flush=True)
    # The model on the groups: each group is one "block" whose time the launcher measured.
    p = predict([c / 1000.0 for c in cost_ms], [boundary[g[-1]] for g in groups], [[0], [1]], BATCH, loopback,
                overlap=False, batches=steps)
    predicted = p.images_per_s
    m1, m2 = statistics.median(one), statistics.median(two)
    return {"arch": arch, "split": split, "groups": groups, "group_ms": cost_ms, "boundary_mib": boundary[groups[0][-1]] / 2**20,
            "one": one, "two": two, "predicted": predicted, "predicted_speedup": p.speedup,
            "measured_speedup": m2 / m1, "error": predicted / m2 - 1.0, "bottleneck": p.bottleneck,
            "foreign": foreign}


def gpu_table(archs_k: list[tuple[str, int]], tflops: float) -> list[str]:
    lines = ["| network | K | step on 1 GPU (assumed) | P stages x R replicas | stage link | replica link | "
             "images/s | speedup over 1 GPU | bubble (steady) | bottleneck |", "|---|---:|---:|---|---|---|---:|---:|---:|---|"]
    for arch, k in archs_k:
        model = GLCanModule.planned(backbone=arch, num_blocks=k, split="memory", batch_size=BATCH)
        times = block_times_ms(model, BATCH, (3, 32, 32), 10, torch.device("cpu"), threads=1)
        boundary, grads = block_sizes(model, BATCH)
        flops = count_step_flops(lambda m=model: assemble(m.init_arguments), BATCH, (3, 32, 32), 10)
        step_s = flops / (tflops * 1e12)
        block_s = [step_s * t / sum(times) for t in times]  # each block's share, as measured here
        for p, r, stage, net in ((2, 1, "nvlink", None), (4, 1, "nvlink", None), (4, 1, "pcie4", None),
                                 (4, 1, "eth25", None), (4, 2, "nvlink", "eth25"), (4, 4, "nvlink", "eth25"),
                                 (8, 1, "nvlink", None)):
            if p > k:
                continue
            groups = group_blocks(k, p, "time", block_s)
            pr = predict(block_s, boundary, groups, BATCH, LINKS[stage], replicas=r, grad_bytes=grads,
                         network=LINKS[net] if net else None)
            lines.append(f"| {arch} | {k} | {step_s * 1000:.1f} ms | {p} x {r} | {stage} | {net or '-'} | "
                         f"{pr.images_per_s:,.0f} | {pr.speedup:.2f}x | {pr.bubble:.0%} | {pr.bottleneck} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="interleaved pairs of launches per network (0: no check)")
    ap.add_argument("--steps", type=int, nargs=2, default=[30, 14], help="batches per run: ResNet-32, ResNet-110")
    ap.add_argument("--loopback-gbs", type=float, default=2.0, help="loopback gloo bandwidth assumed, GB/s")
    ap.add_argument("--gpu-tflops", type=float, default=20.0, help="sustained fp32/TF32 TFLOP/s assumed for a GPU")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "pipeline_model.md"))
    a = ap.parse_args()
    t0, torch_threads = time.time(), torch.get_num_threads()
    checks = []
    if a.runs:
        with tempfile.TemporaryDirectory() as tmp:
            checks = [check(arch, a.runs, steps, a.loopback_gbs, Path(tmp)) for arch, steps in zip(("resnet32", "resnet110"), a.steps)]
    torch.set_num_threads(torch_threads)
    gpu = gpu_table([("resnet110", 4), ("resnet110", 16)], a.gpu_tflops)
    command = "python bench/pipeline_model.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    lines = ["# Pipeline throughput model: checked on this machine, predicted for GPUs", "",
             f"Command: `{command}` ({(time.time() - t0) / 60:.1f} min), {time.strftime('%Y-%m-%d')}. Machine: "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}. Model: glcan/parallel/throughput.py "
             "(its docstring states what it counts and assumes).", ""]
    if checks:
        lines += ["## Check at P=2 (CPU, 1 thread per worker, K=4, batch 128)", "",
                  "Predicted from the grouping probe's measured group times and what crosses the boundary (the activation with its batch; loopback gloo at "
                  f"{a.loopback_gbs:g} GB/s, paid by both workers); measured: median steady-state images/s "
                  "(summary.json `throughput_img_s`) of interleaved launches. Target: within 15%.", "",
                  "| network | groups | group time (ms, measured) | boundary | predicted 2 workers | measured 2 workers | "
                  "error | predicted speedup | measured 2 / 1 worker | target |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in checks:
            met = "met" if abs(c["error"]) <= 0.15 else f"missed by {abs(c['error']) - 0.15:.0%}"
            lines.append(f"| {c['arch']} | {c['groups']} | {c['group_ms']} | {c['boundary_mib']:.1f} MiB | "
                         f"{c['predicted']:.1f} | {statistics.median(c['two']):.1f} | {c['error']:+.0%} | "
                         f"{c['predicted_speedup']:.2f}x | {c['measured_speedup']:.2f}x | {met} |")
        lines += ["", "All runs (images/s): " + "; ".join(
            f"{c['arch']}: 1 worker {', '.join(f'{v:.1f}' for v in c['one'])}; 2 workers {', '.join(f'{v:.1f}' for v in c['two'])}"
            for c in checks) + ".", "",
            "Other processes used on average {:.2f} and at most {:.2f} of the {} cores during the one-process launches, "
            "interleaved with the pipeline's (/proc/stat minus the benchmark's own CPU time); the model assumes the "
            "stages have their cores to themselves.".format(
                statistics.mean(v for c in checks for v in c["foreign"]), max(v for c in checks for v in c["foreign"]),
                os.cpu_count()), "",
            "What the model leaves out, and where a miss comes from: the two workers share this machine's memory "
            "bandwidth and caches (a block runs slower beside another worker than alone, as the probe measured it), "
            "and other processes on a shared machine take cores from either worker.", ""]
    lines += ["## GPU predictions (batch 128 per replica, fp32)", "",
              f"Assumptions: a GPU sustains {a.gpu_tflops:g} TFLOP/s on these convolutions, so one step takes the "
              "step's counted FLOPs (torch's FlopCounterMode) divided by that; each block's share of the step is its "
              "share of the step time measured here on one CPU thread; links: "
              + "; ".join(f"`{k}` {v.name}, {v.latency_s * 1e6:g} us latency" for k, v in LINKS.items())
              + ". Transfers overlap compute (NCCL); each stage's gradient all-reduce across replicas (ring) does "
              "not. Stages are grouped by time like the launcher does. Small CIFAR networks at batch 128 are often "
              "bound by kernel launches on a real GPU, not FLOPs: the absolute images/s are the weakest part; the "
              "speedups and bottlenecks depend only on the ratio of compute to communication.", "",
              *gpu, ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
