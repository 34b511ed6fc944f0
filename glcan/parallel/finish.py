"""The end of a pipeline run: its workers' statistics, as summary.json fields and CSV rows.

The last worker leaves ``pipeline.json`` (the checkpoint, every worker's statistics); the
launcher then tests the checkpoint through Lightning and writes summary.json with the same
builder as a one-process run (glcan.lit.summary), adding the fields below.

``throughput_img_s`` is the steady state: every worker times the same window of batches (after
the pipeline has filled and the memory-measured steps), and the pipeline moves at the pace of
the slowest (see glcan.parallel.worker.window_rate). ``throughput_img_s_overall`` is all images
over the whole training loop, start-up and fill included. A pipeline has no single step that
trains the whole network, so its ``step_time_ms`` is null: compare throughputs instead.
"""

from __future__ import annotations

from typing import Any

from glcan.memory.meter import CPU_METHOD, CUDA_METHOD


def measurements(record: dict[str, Any], job: Any) -> dict[str, Any]:
    """The pipeline's fields of summary.json."""
    stats = record["workers"]
    rates = [s.get("steady_img_s") for s in stats]
    thr = min(rates) if rates and all(r is not None for r in rates) else None
    start, end = min(s["start_time"] for s in stats), max(s["end_time"] for s in stats)
    peaks = [s.get("peak_memory_bytes") for s in stats]
    return {
        "peak_memory_bytes": max((p for p in peaks if p is not None), default=None),
        "memory_method": CUDA_METHOD if job.device_type == "cuda" else CPU_METHOD,
        "parallel": "pipeline", "workers": job.workers, "worker_blocks": job.groups, "depth": job.depth,
        "threads": job.threads or 1, "device": job.device_type, "grouping": job.grouping,
        "group_cost_ms": job.group_cost_ms,
        "throughput_img_s": thr,
        "throughput_img_s_overall": stats[-1]["images"] / (end - start) if end > start else None,
        "worker_peak_memory_bytes": peaks,
        "worker_block_peaks": [s.get("memory_block_peaks") for s in stats],
        "worker_compute_s": [s["compute_s"] for s in stats],
        "worker_step_ms": [s.get("step_ms_median") for s in stats],
        "worker_recv_wait_s": [s["recv_wait_s"] for s in stats],
        "worker_send_wait_s": [s["send_wait_s"] for s in stats],
        "worker_steady_img_s": rates,
        "checkpoint": record["checkpoint"],
    }


def epoch_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epoch, the mean training loss of every block (what the CSV log holds for a
    one-process run), with the step at which the epoch ended."""
    stats = record["workers"]
    rows = []
    for e in range(record["epochs"]):
        row: dict[str, Any] = {"epoch": e, "step": stats[-1]["epoch_steps"][e] - 1}
        for s in stats:
            for k, losses in s["epoch_loss"].items():
                row[f"train/block{k}/loss_epoch"] = losses[e]
        rows.append(row)
    return rows
