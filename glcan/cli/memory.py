"""``python train.py memory --config X [--budget 4GiB] [--json] [overrides]``: predict, don't train.

The same parser as ``fit`` reads the config and the overrides, so any key that trains also
predicts (``--data.batch_size 1024``, ``--data.image_size 224``, ``--trainer.precision
bf16-mixed``, ``--model.num_blocks 16``). The data module and the model are built for real
(cheap: no data is read), the trainer is not; the predictor rebuilds the model under
FakeTensorMode for each method.
"""

from __future__ import annotations

import json
from typing import Optional

from glcan.cli.parser import GLCanCLI
from glcan.memory.report import format_report, memory_report

OWN = {
    "--json": {"action": "store_true", "help": "print the report as one JSON object"},
    "--budget": {"type": Optional[str], "default": None,
                 "help": "a GPU memory budget (4GiB, 12GB, bytes): which methods fit it, which to use "
                         "(--model.memory_policy accuracy|speed)"},
}
OWN_HELP = {"--budget SIZE": OWN["--budget"]["help"], "--json": OWN["--json"]["help"]}


def main(args: list[str]) -> int:
    cli = GLCanCLI(args, extra=OWN)
    cfg, dm, model = cli.config, cli.datamodule, cli.model
    report = memory_report(model, dm.batch_size, dm.image_shape, dm.num_classes,
                           precision=str(cfg.trainer.precision or "32-true"), budget=cfg.get("budget"),
                           prefer=model.hparams.memory_policy)
    config = ", ".join(str(c) for c in (cfg.get("config") or [])) or None
    if cfg.get("json"):
        print(json.dumps({"config": config, **report}))
    else:
        print(format_report(report, config))
    return 0
