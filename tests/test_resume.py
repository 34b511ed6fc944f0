"""An interrupted run resumes exactly: the README's claims about stopping and resuming.

Ctrl+C and SIGTERM finish the batch, save last.ckpt and stop with status 130; ``--ckpt_path
last`` then ends with the weights of an uninterrupted run, mid-epoch included, with the schedule
stepped per batch or per epoch, in one process and under DDP. A second Ctrl+C stops at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LOCAL_CONFIG, ROOT, SHRINK, fit
from glcan.cli import main

# 4 epochs' worth of short epochs: fake data, 48 images, batches of 16 -> 3 batches an epoch
RUN = ["--data.fake_size", "48", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
       "--trainer.limit_test_batches", "1", "--trainer.deterministic", "true"]
EPOCH_SCHEDULE = ["--model.scheduler", "glcan.lit.optim.CosineAnnealingLR", "--model.scheduler_interval", "epoch"]


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)["state_dict"]


def _same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("signal, schedule", [("SIGINT", []), ("SIGTERM", EPOCH_SCHEDULE)],
                         ids=["ctrl-c, per-batch schedule", "sigterm, per-epoch schedule"])
def test_a_stopped_run_resumes_mid_epoch_exactly(tmp_path, capsys, signal, schedule):
    fit(LOCAL_CONFIG, tmp_path / "full", *RUN, *schedule)
    args = ["fit", "--config", LOCAL_CONFIG, *SHRINK, *RUN, *schedule, "--run_dir", str(tmp_path / "run")]
    # step 4 is the second batch of the second epoch: mid-epoch, with the schedule already stepped
    assert main([*args, f"--trainer.callbacks+=conftest.SignalAt", "--trainer.callbacks.step", "4",
                 "--trainer.callbacks.signal", signal]) == 130
    err = capsys.readouterr().err
    assert f"{signal}: stopping after this batch" in err and "Resume with:" in err and "--ckpt_path last" in err
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 5 and last["epoch"] == 1  # the batch at the signal was finished
    assert not (tmp_path / "run" / "summary.json").exists()  # an interrupted run is not reported as complete
    assert main([*args, "--ckpt_path", "last"]) == 0
    _same(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "full" / "checkpoints" / "last.ckpt")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed"] == 1


def test_a_second_ctrl_c_stops_at_once(tmp_path, capsys):
    """Two Ctrl+C in one batch: the second stops before the batch ends, without a checkpoint."""
    args = ["fit", "--config", LOCAL_CONFIG, *SHRINK, *RUN, "--run_dir", str(tmp_path / "run"),
            "--trainer.callbacks+=conftest.SignalAt", "--trainer.callbacks.step", "1", "--trainer.callbacks.signal",
            "SIGINT", "--trainer.callbacks.times", "2"]
    assert main(args) != 0
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow  # two DDP replicas in subprocesses, three times
def test_a_ddp_run_resumes_mid_epoch_exactly(tmp_path):
    """Two replicas (gloo, CPU): each resumes its own shard of the epoch where it stopped."""
    def train_py(run: str, *extra: str) -> None:
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", LOCAL_CONFIG, *SHRINK, *RUN,
                               "--data.fake_size", "96", "--trainer.accelerator", "cpu", "--parallel.mode", "ddp",
                               "--parallel.workers", "2", "--run_dir", str(tmp_path / run), *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    train_py("full")
    train_py("run", "--trainer.callbacks+=conftest.SaveAndStopAt", "--trainer.callbacks.step", "4")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    train_py("run", "--ckpt_path", "last")
    _same(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "full" / "checkpoints" / "last.ckpt")
