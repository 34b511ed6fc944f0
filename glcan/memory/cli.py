"""``python train.py memory --config X [overrides] [--json]``: predict without training.

The same LightningCLI parser as ``fit`` reads the config and the overrides, so any key that
trains also predicts (``--data.batch_size 1024``, ``--data.image_size 224``,
``--trainer.precision bf16-mixed``, ``--model.num_blocks 16``). The data module and the model
are built for real (cheap: no data is read), the trainer is not; then the predictor rebuilds
the model under FakeTensorMode for each method.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from glcan.cli import GLCanCLI
from glcan.memory.report import format_report, memory_report


class MemoryCLI(GLCanCLI):
    """Parses like ``fit``; builds the model and data, but no trainer, and trains nothing."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv  # a flag of this command, not a config key
    argv = [a for a in argv if a != "--json"]
    cli = MemoryCLI(args=argv, run=False)
    cfg = cli.config
    dm, model = cli.datamodule, cli.model
    report = memory_report(model, dm.batch_size, dm.image_shape, dm.num_classes, precision=str(cfg.trainer.precision or "32-true"))
    config = next((str(c) for c in (cfg.get("config") or [])), None)
    if as_json:
        print(json.dumps({"config": config, **report}))
    else:
        print(format_report(report, config))
    return 0
