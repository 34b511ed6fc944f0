"""Local learning keeps up: K=4 GLCAN local within 1.0 point of E2E on the embedded digits,
over three seeds.

Both methods use the shipped configs unchanged (3 epochs, batch 128, the same seeds and data
order) and deploy the same network (the last block trains through the backbone's classifier).
One seed is not enough to judge a one-point difference: E2E's test accuracy spreads over 2.2
points across seeds 0-2 (docs/results.md), so the claim, and this test, is about the mean.
"""

from __future__ import annotations

import csv
import statistics

import pytest

from conftest import LOCAL_CONFIG
from glcan.cli import main


@pytest.mark.slow
def test_local_k4_within_1_point_of_e2e_on_mnist5k_over_3_seeds(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--config", LOCAL_CONFIG, "--grid", "model.method=e2e,local", "--seeds", "3",
                 "--logger.enabled", "false", "--trainer.enable_progress_bar", "false", "--out", str(out)]) == 0
    with (out / "comparison.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    acc = {m: [float(r["test_acc"]) for r in rows if r["method"] == m] for m in ("e2e", "local")}
    assert len(acc["e2e"]) == len(acc["local"]) == 3 and min(acc["e2e"]) > 0.9
    assert {r["head"] for r in rows if r["method"] == "local"} == {"glcan"}
    assert statistics.fmean(acc["local"]) >= statistics.fmean(acc["e2e"]) - 0.010, acc
