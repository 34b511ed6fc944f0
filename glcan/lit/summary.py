"""summary.json: one flat record per run, the row every comparison is built from.

One builder for every path (one process, DDP, the pipeline): fields that a run could not
measure are null, never invented. The file is written atomically (glcan.io), so a summary.json
that exists is complete: the comparison runner relies on that to skip finished runs.

``task`` and ``metric`` say what the run learnt and which field is its primary result:
``test_<metric>`` and ``block_<metric>`` (``test_acc``/``block_acc`` for classification;
``test_psnr``/``block_psnr`` for super-resolution, with ``test_ssim`` and the bicubic baseline's
``bicubic_psnr``/``bicubic_ssim`` beside them; ``test_map50``/``block_map50`` for detection, with
``test_map``, COCO's mAP@[.5:.95]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L

from glcan.heads.sr import BICUBIC_KERNEL
from glcan.lit.loggers import wandb_run_dir, wandb_sync_hint
from glcan.lit.pipeline import PipelineStrategy


def _metric(metrics: dict, key: str) -> Optional[float]:
    v = metrics.get(key)
    return None if v is None else float(v)


def parameter_counts(module: Any) -> dict[str, int]:
    """Parameters of the network that is deployed (the blocks and the last head, the
    classifier) and of the auxiliary heads that only training uses."""
    net = module.net
    heads = sum(p.numel() for h in list(net.heads)[:-1] for p in h.parameters())
    total = sum(p.numel() for p in net.parameters())
    return {"params": total - heads, "head_params": heads}


def build_summary(module: Any, datamodule: Any, *, epochs: int, global_step: int, seed: Optional[int], precision: str,
                  test_metrics: dict[str, Any], measured: dict[str, Any], run_dir: Optional[str],
                  wandb_dir: Optional[str] = None, val_metrics: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The run's record.

    Args:
        module: the trained GLCanModule.
        datamodule: its data.
        epochs: completed training epochs; global_step: batches trained.
        seed: the run's seed; precision: the trainer's precision.
        test_metrics: ``test/...`` metrics.
        val_metrics: ``val/...`` metrics of the last validation (what variants are chosen on:
            ``val_<metric>`` and ``val_block_<metric>``; null where the run did not validate).
        measured: what the meters measured (memory, time, parallel details).
        run_dir, wandb_dir: where the run's files are.
    """
    h = module.hparams
    k = module.net.num_blocks
    local = module.is_local
    metric = module.task.metric.name
    blocks = [_metric(test_metrics, f"test/block{i}/{metric}") for i in range(k)] if local else [_metric(test_metrics, f"test/{metric}")]
    if metric == "acc":
        results: dict[str, Any] = {"test_acc": _metric(test_metrics, "test/acc"),
                                   "test_acc_top5": _metric(test_metrics, "test/acc_top5"),
                                   "test_loss": _metric(test_metrics, "test/loss"), "block_acc": blocks}
    elif metric == "map50":  # detection: COCO's mAP@[.5:.95] beside the primary mAP@.5
        results = {"test_map50": _metric(test_metrics, "test/map50"), "test_map": _metric(test_metrics, "test/map"),
                   "block_map50": blocks}
    else:  # super-resolution: PSNR and SSIM beside bicubic's
        results = {"test_psnr": _metric(test_metrics, "test/psnr"), "test_ssim": _metric(test_metrics, "test/ssim"),
                   "bicubic_psnr": _metric(test_metrics, "test/bicubic_psnr"),
                   "bicubic_ssim": _metric(test_metrics, "test/bicubic_ssim"), "bicubic_kernel": BICUBIC_KERNEL,
                   "test_loss": _metric(test_metrics, "test/loss"), "block_psnr": blocks}
    val = val_metrics or {}
    results[f"val_{metric}"] = _metric(val, f"val/{metric}")
    results[f"val_block_{metric}"] = ([_metric(val, f"val/block{i}/{metric}") for i in range(k)] if local
                                      else [_metric(val, f"val/{metric}")]) if val else None
    summary: dict[str, Any] = {
        "task": module.task.name,
        "metric": metric,
        "method": h.method,
        "backbone": module.backbone_name,
        "dataset": getattr(datamodule, "name", None),
        "num_blocks": k,
        "head": h.head if local else None,
        "boundaries": list(module.net.boundaries),
        "epochs": epochs,
        "global_step": global_step,
        "seed": seed,
        "batch_size": getattr(datamodule, "batch_size", None),
        "image_shape": list(h.image_shape),
        "num_classes": h.num_classes if metric == "acc" else None,
        "precision": precision,
        "optimizer": module.optimizer_name,
        **results,
        **parameter_counts(module),
        "wandb_dir": wandb_dir,
        "run_dir": run_dir,
        "peak_memory_bytes": None,
        "memory_method": None,
        "step_time_ms": None,
        "step_cpu_ms": None,
    }
    summary.update(measured)
    return summary


def measured_by_callbacks(trainer: L.Trainer) -> dict[str, Any]:
    """What the run's callbacks measured (every callback with a ``result()``)."""
    out: dict[str, Any] = {}
    for cb in trainer.callbacks:
        if callable(getattr(cb, "result", None)):
            out.update(cb.result())
    return out


def stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, Any]:
    """The trainer's latest ``{stage}/...`` metrics (``val`` or ``test``), as plain floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


def summary_line(summary: dict[str, Any], path: Any) -> str:
    """The one line a finished run prints: its primary metric, peak memory, where the summary is."""
    metric = summary.get("metric", "acc")
    value, mem = summary.get(f"test_{metric}"), summary.get("peak_memory_bytes")
    bicubic = summary.get(f"bicubic_{metric}")
    score = (f"test/{metric} {value:.4f}" + (f" (bicubic {bicubic:.4f})" if bicubic is not None else "")
             if value is not None else f"test/{metric} n/a")
    memory = f"peak memory {mem / 2**20:.1f} MiB" if mem else "peak memory not measured"
    return f"{score} | {memory} | summary: {path}"


def finish_fit(trainer: L.Trainer, module: Any, datamodule: Any, run: Any, seed: Optional[int]) -> Optional[Path]:
    """After ``trainer.fit``: test the trained network and write the run's summary.json (rank 0,
    through ``run``, a :class:`glcan.lit.rundir.RunDir`) from the last validation's and the
    test's metrics and what the callbacks measured; print its one line. Returns its path (None
    on other ranks)."""
    val = stage_metrics(trainer, "val")  # the last validation, before the test pass replaces the metrics
    trainer.test(module, datamodule=datamodule, verbose=False)
    measured = measured_by_callbacks(trainer)
    if isinstance(trainer.strategy, PipelineStrategy):  # every stage's own figures, gathered
        measured.update(trainer.strategy.summary_fields(measured, datamodule.batch_size))
    elif trainer.world_size > 1:  # DDP: every replica tested the whole test set, so the figures are the run's
        measured.update(parallel="ddp", workers=trainer.world_size)
    summary = build_summary(module, datamodule, epochs=trainer.current_epoch, global_step=trainer.global_step,
                            seed=seed, precision=str(trainer.precision), test_metrics=stage_metrics(trainer, "test"),
                            measured=measured, run_dir=str(run.path), wandb_dir=wandb_run_dir(trainer.loggers),
                            val_metrics=val)
    if not trainer.is_global_zero:
        return None
    path = run.write_summary(summary, trainer.loggers)
    print(summary_line(summary, path), flush=True)
    hint = wandb_sync_hint(run.path)
    if hint:
        print(hint, flush=True)
    return path
