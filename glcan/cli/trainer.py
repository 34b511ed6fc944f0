"""The Trainer a command runs, and what a finished run reports (W&B config, summary line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

from glcan.cli.parser import GLCanCLI
from glcan.lit.callbacks import GracefulStop, MemoryMeter, ResumeMidEpoch, StepTimer
from glcan.lit.loggers import SafeWandbLogger, build_loggers
from glcan.parallel.options import ddp_trainer_kwargs

LOCAL_ONLY = ("num_blocks", "head", "head_kwargs", "split", "block_lr_scale", "memory_budget")


def run_name(model: Any, datamodule: Any) -> str:
    """``mnist5k_resnet20_local_k4_glcan``: what was trained, readable in a directory listing."""
    h = model.hparams
    name = f"{getattr(datamodule, 'name', 'data')}_{model.backbone_name}_{h.method}"
    return name + (f"_k{model.net.num_blocks}_{h.head}" if model.is_local else "")


def wandb_config(cli: GLCanCLI) -> dict[str, Any]:
    """The resolved config as flat dotted keys of plain values, as W&B should show it: paths
    as strings, and an E2E run without the local-only keys it ignores."""
    model = cli.model
    flat = _flat(cli.config)
    flat["config"] = ", ".join(str(c) for c in (cli.config.get("config") or []))
    if not model.is_local:
        flat = {k: v for k, v in flat.items() if not (k.startswith("model.") and k.split(".")[1] in LOCAL_ONLY)}
    flat.update(method=model.hparams.method, backbone=model.backbone_name, optimizer=model.optimizer_name,
                num_blocks=model.net.num_blocks, head=model.hparams.head if model.is_local else None,
                split=str(model.net.boundaries) if model.is_local else None)
    return flat


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = vars(cfg).items() if hasattr(cfg, "__dict__") else cfg.items()
    for key, value in items:
        if key.startswith("__"):
            continue
        dotted = f"{prefix}{key}"
        if hasattr(value, "__dict__") and not callable(value):
            out.update(_flat(value, dotted + "."))
        elif isinstance(value, (str, int, float, bool, type(None))):
            out[dotted] = value
        else:
            out[dotted] = str(value)
    return out


def build_trainer(cli: GLCanCLI, run_path: Path, *, training: bool, job_type: str,
                  wandb_id: Optional[str] = None, resumed_step: Optional[int] = None, csv_log: bool = True) -> Any:
    """The Trainer of the config with glcan's callbacks; loggers attached once it is valid
    (a bad accelerator fails here, before an empty W&B run exists)."""
    cfg, model = cli.config, cli.model
    callbacks: list = []
    if training:
        callbacks = [MemoryMeter(), StepTimer(), LearningRateMonitor(logging_interval="epoch"),
                     # Named by epoch: global_step counts batches here (see GLCanModule._block_update)
                     # but an epoch number is what a user looks for when resuming.
                     # The run directory is this run's alone (locked): its files are overwritten in
                     # place, never versioned (a resumed run's last.ckpt stays last.ckpt).
                     ModelCheckpoint(dirpath=str(run_path / "checkpoints"), filename="epoch{epoch:03d}",
                                     auto_insert_metric_name=False, save_last=True, enable_version_counter=False),
                     GracefulStop(), ResumeMidEpoch()]
    trainer = cli.make_trainer(callbacks, save_config=training, logger=False, default_root_dir=str(run_path),
                               **ddp_trainer_kwargs(cfg.get("parallel")))
    if cfg.trainer.get("logger") is not False:
        h, k = model.hparams, model.net.num_blocks
        tags = [model.backbone_name, str(cli.datamodule.name), f"K={k}", str(h.head if model.is_local else "none")]
        if not training:
            tags.append(job_type)
        loggers = build_loggers(str(run_path), f"{run_path.parent.name}/{run_path.name}" if training else
                                f"{run_path.name}/{job_type}", cfg.get("logger"), wandb_config(cli), tags,
                                h.method if training else job_type, wandb_id=wandb_id, resumed_step=resumed_step)
        trainer.loggers = loggers if csv_log else loggers[1:]
    if cfg.trainer.get("enable_progress_bar") is not False and trainer.progress_bar_callback is not None:
        # Rich bars, unless the user turned bars off (a persistent callback would refuse that).
        trainer.callbacks = [RichProgressBar(leave=True) if c is trainer.progress_bar_callback else c for c in trainer.callbacks]
    return trainer


def log_summary_to_wandb(loggers: list, summary: dict[str, Any]) -> None:
    keys = {"test/acc": "test_acc", "memory/peak_bytes": "peak_memory_bytes", "memory/method": "memory_method",
            "memory/peak_block": "memory_peak_block", "time/step_ms": "step_time_ms", "time/step_cpu_ms": "step_cpu_ms",
            "time/threads": "threads", "model/split": "split", "model/params": "params", "model/head_params": "head_params"}
    if summary.get("metric", "acc") != "acc":  # super-resolution: PSNR and SSIM beside bicubic's
        del keys["test/acc"]
        keys.update({"test/psnr": "test_psnr", "test/ssim": "test_ssim", "test/bicubic_psnr": "bicubic_psnr",
                     "test/bicubic_ssim": "bicubic_ssim"})
    values = {k: summary.get(v) for k, v in keys.items()}
    values["model/split"] = str(values["model/split"])
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger):
            lg.log_summary(values)


def print_summary_line(summary: dict[str, Any], path: Path) -> None:
    metric = summary.get("metric", "acc")
    value, mem = summary.get(f"test_{metric}"), summary.get("peak_memory_bytes")
    bicubic = summary.get(f"bicubic_{metric}")
    print(f"test/{metric} {value:.4f}" + (f" (bicubic {bicubic:.4f})" if bicubic is not None else "")
          if value is not None else f"test/{metric} n/a",
          f"| peak memory {mem / 2**20:.1f} MiB" if mem else "| peak memory not measured",
          f"| summary: {path}", flush=True)
    if summary.get("wandb_dir") and "offline-run" in summary["wandb_dir"]:
        print(f"W&B run saved offline; upload it later with: wandb sync {summary['wandb_dir']}", flush=True)


