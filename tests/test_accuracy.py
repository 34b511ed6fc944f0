"""Local learning keeps up: K=4 GLCAN local within 1.5 points of E2E on the embedded digits.

Both runs use the shipped configs unchanged (3 epochs, batch 128, the same seed and data order);
only the logger and progress bar are turned off.
"""

from __future__ import annotations

import json

import pytest

from conftest import E2E_CONFIG, LOCAL_CONFIG
from glcan.cli.main import main

QUIET = ["--logger.enabled", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _test_acc(config: str, run_dir) -> dict:
    assert main(["fit", "--config", config, *QUIET, "--run_dir", str(run_dir)]) == 0
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_local_k4_within_1_5_points_of_e2e_on_mnist5k(tmp_path):
    e2e = _test_acc(E2E_CONFIG, tmp_path / "e2e")
    local = _test_acc(LOCAL_CONFIG, tmp_path / "local")
    assert e2e["test_acc"] > 0.9
    assert local["num_blocks"] == 4 and local["head"] == "glcan"
    assert local["test_acc"] >= e2e["test_acc"] - 0.015, (local["test_acc"], e2e["test_acc"])
