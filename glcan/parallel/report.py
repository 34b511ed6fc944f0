"""The end of a pipeline run (done by the last worker): test pass, summary.json, metrics.csv.

``throughput_img_s`` is the steady state: every worker times the same window of batches (after
the pipeline has filled and the memory-measured steps), and the pipeline moves at the pace of
the slowest (see glcan.parallel.worker.window_rate). ``throughput_img_s_overall`` is all
images over the whole training loop, start-up and fill included.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from glcan.parallel.checkpoint import SHARDS, evaluate
from glcan.parallel.plan import batches_per_epoch
from glcan.summary import write_json_atomic


def finish(worker: Any, path: Path, shards: list[dict], epochs: int) -> Path:
    job, model = worker.job, worker.model
    stats = [s["stats"] for s in sorted(shards, key=lambda s: s["rank"])]
    stats[-1] = worker.final_stats()
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)  # the assembled checkpoint is what gets tested
    device = worker.device
    model.to(device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))  # the other workers are done
    loader = job.datamodule.test_dataloader()
    batches = batches_per_epoch(len(loader), job.extra.get("limit_test"))
    metrics = evaluate(model, itertools.islice(loader, batches), device)
    rates = [s.get("steady_img_s") for s in stats]
    thr = min(rates) if all(r is not None for r in rates) else None
    start, end = min(s["start_time"] for s in stats), max(s["end_time"] for s in stats)
    images = stats[-1]["images"]
    h, k = model.hparams, model.net.num_blocks
    dm = job.datamodule
    peaks = [s.get("peak_memory_bytes") for s in stats]
    summary: dict[str, Any] = {
        "method": h.method, "arch": model.arch, "dataset": getattr(dm, "name", None), "num_blocks": k,
        "aux": h.aux, "split": list(model.net.boundaries), "epochs": epochs, "global_step": worker.step,
        "seed": job.seed, "batch_size": dm.batch_size, "image_shape": list(h.image_shape), "precision": job.precision,
        "test_acc": metrics["test/acc"], "test_acc_top5": metrics["test/acc_top5"],
        "block_acc": [metrics[f"test/block{i}/acc"] for i in range(k)],
        "params": sum(p.numel() for p in model.parameters()), "wandb_dir": None, "run_dir": str(job.run_dir),
        "peak_memory_bytes": max((p for p in peaks if p is not None), default=None),
        "memory_method": stats[-1].get("memory_method"),
        "step_time_ms": 1000.0 * dm.batch_size / thr if thr else None,
        "parallel": "pipeline", "workers": job.workers, "worker_blocks": job.groups, "depth": job.depth,
        "threads": job.threads or 1, "device": job.device_type, "balance": job.balance,
        "group_cost_ms": job.group_cost_ms,
        "throughput_img_s": thr,
        "throughput_img_s_overall": images / (end - start) if end > start else None,
        "worker_peak_memory_bytes": peaks,
        "worker_block_peaks": [s.get("memory_block_peaks") for s in stats],
        "worker_compute_s": [s["compute_s"] for s in stats],
        "worker_step_ms": [s.get("step_ms_median") for s in stats],
        "worker_recv_wait_s": [s["recv_wait_s"] for s in stats],
        "worker_send_wait_s": [s["send_wait_s"] for s in stats],
        "worker_steady_img_s": rates,
        "checkpoint": str(path),
    }
    out = write_json_atomic(Path(job.run_dir) / "summary.json", summary)
    shutil.rmtree(Path(job.run_dir) / "checkpoints" / SHARDS, ignore_errors=True)  # all in the checkpoint now
    _write_metrics(Path(job.run_dir) / "metrics.csv", stats, metrics, epochs, worker.step)
    acc = summary["test_acc"]
    rate = f"{thr:.1f} images/s" if thr else "images/s n/a"
    print(f"test/acc {acc:.4f} | {job.workers} pipeline workers, {rate} | summary: {out}", flush=True)
    return out


def _write_metrics(path: Path, stats: list[dict], metrics: dict, epochs: int, step: int) -> None:
    """Per-epoch mean training loss of every block, then the test metrics (the CSV log's role)."""
    rows = []
    for e in range(epochs):
        row: dict[str, Any] = {"epoch": e, "step": stats[-1]["epoch_steps"][e] - 1}
        for s in stats:
            for k, losses in s["epoch_loss"].items():
                row[f"train/block{k}/loss_epoch"] = losses[e]
        rows.append(row)
    rows.append({"epoch": epochs - 1, "step": step - 1, **{k: v for k, v in metrics.items() if v is not None}})
    fields = list(dict.fromkeys(key for r in rows for key in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
