"""Weights & Biases never costs a run: offline without a key, off when asked, silent on failure.

Each test trains one tiny run (fake data, 4 batches) through ``train.py fit`` in-process, with
``WANDB_MODE`` set by monkeypatch, so nothing touches the network.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from conftest import LOCAL_CONFIG, ROOT, TINY_RUN
import wandb
from lightning.pytorch.loggers import WandbLogger

from glcan.compare.grid import Point
from glcan.compare.results import Run
from glcan.compare.tracking import log_comparison
from glcan.cli import main as entry_main
from glcan.lit.loggers import WandbOptions

REPO = ROOT
BASE = LOCAL_CONFIG
FAST = TINY_RUN


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # tests that want "disabled" override it
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    if wandb.run is not None:  # never leak a run into the next test
        wandb.finish()


def fit(run_dir: Path, *extra: str) -> dict:
    assert entry_main(["fit", "--config", BASE, *FAST, "--run_dir", str(run_dir), *extra]) == 0
    return json.loads((run_dir / "summary.json").read_text())


def test_offline_run_dir_is_recorded(tmp_path):
    summary = fit(tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].is_dir()
    assert Path(summary["wandb_dir"]) == runs[0]
    assert list(runs[0].glob("run-*.wandb"))  # the offline log that `wandb sync` uploads


def test_wandb_init_failure_does_not_fail_the_run(tmp_path, monkeypatch):
    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb is down (simulated)")

    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fit(tmp_path / "run")
    assert summary["test_acc"] is not None and summary["wandb_dir"] is None
    assert (tmp_path / "run" / "metrics.csv").is_file()  # the CSV log carries on
    messages = [str(w.message) for w in caught if "W&B failed" in str(w.message)]
    assert len(messages) == 1 and "wandb is down" in messages[0]


def test_log_metrics_failure_does_not_fail_the_run(tmp_path, monkeypatch):
    calls = []

    def broken_log(self, metrics, step=None):
        calls.append(step)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(WandbLogger, "log_metrics", broken_log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fit(tmp_path / "run")
    assert len(calls) == 1  # the first failure turns W&B off for the rest of the run
    assert summary["test_acc"] is not None and (tmp_path / "run" / "summary.json").is_file()
    assert sum("W&B failed" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("how", ["env", "flag"])
def test_disabled_leaves_no_wandb_dir(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    summary = fit(tmp_path / "run", *(["--logger", "false"] if how == "flag" else []))
    assert summary["wandb_dir"] is None and summary["test_acc"] is not None
    assert not (tmp_path / "run" / "wandb").exists()


def _runs() -> list[Run]:
    point = Point("local_k2_glcan_s0", 0, {"model.method": "local"}, "local", 2, "glcan", {})
    summary = {"method": "local", "num_blocks": 2, "head": "glcan", "seed": 0, "test_acc": 0.5,
               "peak_memory_bytes": 3 * 2**20, "step_time_ms": 12.0, "memory_method": "test"}
    return [Run(point, "ok", summary)]


def test_comparison_run_offline(tmp_path):
    where = log_comparison(tmp_path, "cmp", WandbOptions(), _runs(), [], {"grid": {"model.method": ["local"]}})
    assert where is not None and Path(where).parent == tmp_path / "wandb"
    assert Path(where).name.startswith("offline-run-") and wandb.run is None


def test_comparison_run_failure_is_one_warning(tmp_path, monkeypatch):
    def broken_init(*args, **kwargs):
        raise ConnectionError("no network (simulated)")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B comparison run failed.*no network"):
        assert log_comparison(tmp_path, "cmp", WandbOptions(), _runs(), [], {}) is None


def test_comparison_run_off_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_comparison(tmp_path, "cmp", WandbOptions(), _runs(), [], {}) is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert log_comparison(tmp_path, "cmp", WandbOptions(enabled=False), _runs(), [], {}) is None  # --logger false
    assert not (tmp_path / "wandb").exists()
