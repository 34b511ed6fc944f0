"""What ``validate``, ``test`` and ``predict`` leave beside a checkpoint's run: two callbacks.

``train.py validate|test|predict`` are LightningCLI's own subcommands plus one of these:

- :class:`EvaluationRecord`: ``validate_<checkpoint>.json`` / ``test_<checkpoint>.json`` (the
  metrics, and how far the checkpoint had trained) and one line naming the metric;
- :class:`PredictionWriter` (Lightning's ``BasePredictionWriter``), for every task:
  classification a CSV (file, class, index, probability), super-resolution an upscaled PNG per
  image, detection COCO-format ``detections.json`` (with ``--out``, each image with its boxes
  drawn too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from glcan.data.coco_folder import write_detections
from glcan.data.sr_images import write_upscaled
from glcan.io import write_csv, write_json
from glcan.lit.summary import stage_metrics


class EvaluationRecord(L.Callback):
    """Writes ``{stage}_{checkpoint}.json`` into ``run_dir`` when validation or test ends."""

    def __init__(self, checkpoint: Path, run_dir: Path) -> None:
        self.checkpoint, self.run_dir = Path(checkpoint), Path(run_dir)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._record("validate", "val", trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._record("test", "test", trainer, pl_module)

    def _record(self, stage: str, prefix: str, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = stage_metrics(trainer, prefix)
        saved = torch.load(self.checkpoint, map_location="cpu", weights_only=False, mmap=True)
        done = saved.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("total", {}).get("processed")
        record = {"checkpoint": str(self.checkpoint), "epochs": int(done if done is not None else saved.get("epoch", -1) + 1),
                  "global_step": saved.get("global_step"), **metrics}
        path = write_json(self.run_dir / f"{stage}_{self.checkpoint.stem}.json", record)
        name = pl_module.task.metric.name
        value, bicubic = metrics.get(f"{prefix}/{name}"), metrics.get(f"{prefix}/bicubic_{name}")
        versus = f" (bicubic {bicubic:.4f})" if bicubic is not None else ""
        print(f"{stage}/{name} {value:.4f}{versus} (checkpoint after {record['epochs']} completed epoch(s), step "
              f"{record['global_step']}) | {path}", flush=True)


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction of the pass under ``out`` (default: ``predictions.csv``, or the
    folder ``predictions`` for super-resolution and detection, in ``run_dir``)."""

    def __init__(self, run_dir: Path, out: Optional[str] = None) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir, self.out = Path(run_dir), out

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: Any, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        dm, kind = trainer.datamodule, pl_module.task.kind
        where = dm.predict_root or dm.root
        out = Path(self.out or self.run_dir / ("predictions.csv" if kind == "classification" else "predictions"))
        batches = list(predictions)
        if kind == "detection":
            count = write_detections(batches, dm.predict_set, list(dm.classes or []) or None,
                                     getattr(dm, "category_ids", None), out, draw=self.out is not None)
            print(f"detected on {count} image(s) under {where}: {out / 'detections.json'}", flush=True)
        elif kind == "super_resolution":
            count = write_upscaled(batches, dm.predict_files, where, out)
            print(f"upscaled {count} image(s) under {where} x{pl_module.task.scale}: {out}", flush=True)
        else:
            probs = torch.cat(batches) if batches else torch.empty(0, pl_module.hparams.num_classes)
            p, idx = probs.max(dim=1)
            rows = [{"file": str(f), "class": dm.classes[i] if dm.classes else i, "index": i, "probability": round(q, 6)}
                    for f, q, i in zip(dm.predict_files, p.tolist(), idx.tolist())]
            write_csv(out, rows, ["file", "class", "index", "probability"])
            print(f"predicted {len(rows)} image(s) under {where}: {out}", flush=True)
