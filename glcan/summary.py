"""summary.json: one flat record per run, the row every comparison is built from.

Fields that a run could not measure are null, never invented. The file is written atomically
(a temporary file renamed into place), so a summary.json that exists is complete: the
comparison runner relies on that to skip finished runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L


def _metric(metrics: dict, key: str) -> Optional[float]:
    v = metrics.get(key)
    return None if v is None else float(v)


def build_summary(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, seed: Optional[int],
    test_metrics: dict[str, Any], wandb_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Collect the run's record from the trainer, the model, the data and the callbacks."""
    h = module.hparams
    k = module.net.num_blocks
    local = h.method == "local"
    block_acc = [_metric(test_metrics, f"test/block{i}/acc") for i in range(k)] if local else [_metric(test_metrics, "test/acc")]
    summary: dict[str, Any] = {
        "method": h.method,
        "arch": module.arch,
        "dataset": getattr(datamodule, "name", None),
        "num_blocks": k,
        "aux": h.aux if local else None,
        "split": list(module.net.boundaries),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "seed": seed,
        "batch_size": getattr(datamodule, "batch_size", None),
        "image_shape": list(h.image_shape),
        "precision": str(trainer.precision),
        "test_acc": _metric(test_metrics, "test/acc"),
        "test_acc_top5": _metric(test_metrics, "test/acc_top5"),
        "block_acc": block_acc,
        "params": sum(p.numel() for p in module.parameters()),
        "wandb_dir": wandb_dir,
        "run_dir": trainer.log_dir,
    }
    for cb in trainer.callbacks:
        if hasattr(cb, "result"):
            summary.update(cb.result())
    summary.setdefault("peak_memory_bytes", None)
    summary.setdefault("memory_method", None)
    summary.setdefault("step_time_ms", None)
    return summary


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON so that the file either does not exist or is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
    os.replace(tmp, path)
    return path
