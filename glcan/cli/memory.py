"""``python train.py memory --config X [--budget 4GiB] [--json] [overrides]``: predict, don't train.

The same parser as ``fit`` reads the config and the overrides, so any key that trains also
predicts (``--data.batch_size 1024``, ``--data.image_size 224``, ``--trainer.precision
bf16-mixed``, ``--model.num_blocks 16``). Model and data are built for real (cheap: no data is
read); every method is then planned and predicted under FakeTensorMode (glcan.lit.plan).
"""

from __future__ import annotations

import json

from glcan.cli.cli import GLCanCLI
from glcan.lit.plan import memory_report
from glcan.memory.report import format_report


def main(args: list[str]) -> int:
    cli = GLCanCLI(args, run=False)
    cfg, dm, model = cli.config, cli.datamodule, cli.model
    report = memory_report(model, dm.batch_size, dm.image_shape, dm.num_classes,
                           precision=str(cfg.trainer.precision or "32-true"),
                           budget=cfg.get("budget") or model.hparams.memory_budget, prefer=model.hparams.memory_policy)
    config = ", ".join(str(c) for c in (cfg.get("config") or [])) or None
    print(json.dumps({"config": config, **report}) if cfg.get("json") else format_report(report, config))
    return 0
