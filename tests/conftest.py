"""Shared test helpers: the real configs, shrunk (fake data, tiny batches, CPU, no W&B)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from glcan.core.step import BlockUpdate, local_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LOCAL_CONFIG = str(CONFIGS / "mnist5k_resnet20_glcan_k4.yaml")
E2E_CONFIG = str(CONFIGS / "mnist5k_resnet20_e2e.yaml")

# The real experiment configs shrunk to seconds: fake 32x32 data, batches of 16, CPU, no bars, no W&B.
SHRINK = [
    "--data.name", "fake", "--data.fake_size", "64", "--data.batch_size", "16",
    "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--logger.enabled", "false",
]
# A tiny comparison point: fake data, 4 batches, K=2 (W&B left as the test sets it).
TINY_RUN = [
    "--data.name", "fake", "--data.fake_size", "64", "--data.batch_size", "16", "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false", "--model.num_blocks", "2", "--model.split", "uniform",
    "--trainer.log_every_n_steps", "1",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test touches the network: W&B is offline unless a test says otherwise."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("GLCAN_TEST_WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)


def fit(config: str, run_dir: Path, *extra: str, expect: int = 0):
    """Train through the real ``train.py fit`` in-process; returns the CLI (model, data, and the
    trainer on ``cli.trainer``)."""
    from glcan.cli.cli import GLCanCLI

    cli = GLCanCLI(["fit", "--config", config, *SHRINK, "--run_dir", str(run_dir), *extra])
    assert cli.exit_code == expect
    return cli


class StopAfterEpoch(L.Callback):
    """Simulates an interruption: the run is planned for more epochs but stops after ``epoch``."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def block_grads(net, x, y: torch.Tensor, target: int, silence_others: bool) -> list[torch.Tensor]:
    """Block ``target``'s gradients after a *whole* local step of ``net`` on (x, y), every later
    head included; no update is applied.

    With ``silence_others`` every other head's loss is multiplied by zero: if block ``target``'s
    gradients are unchanged, they came from its own head only. The gradients are read after the
    last block has run, so a later head that leaked into block ``target`` would show; on the way
    the other blocks' gradients are cleared at their own step and must stay cleared."""
    if silence_others:
        for j, head in enumerate(net.heads):
            if j != target:
                def silenced(h, y, x, f=head.loss):
                    loss, out = f(h, y, x)
                    return loss * 0.0, out
                head.loss = silenced

    def step(k: int) -> None:
        for j, earlier in enumerate(net.blocks[:k]):
            if j != target:
                assert all(p.grad is None for p in earlier.parameters()), f"head {k} leaked into block {j}"
        if k != target:
            for p in [*net.blocks[k].parameters(), *net.heads[k].parameters()]:
                p.grad = None

    local_step(net, x, y, step=step)
    return [p.grad.clone() for p in net.blocks[target].parameters()]


class SignalAt(L.Callback):
    """Sends this process ``signal`` (by name) at the start of training batch ``step``, ``times``
    times: what a user's Ctrl+C or a scheduler's SIGTERM does to a run."""

    def __init__(self, step: int = 3, signal: str = "SIGTERM", times: int = 1) -> None:
        self.step, self.signal, self.times = step, signal, times

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        import signal as signals

        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signals, self.signal))


class SaveAndStopAt(L.Callback):
    """Saves ``last.ckpt`` through the run's checkpoint callback after training batch ``step`` and
    stops there: a mid-epoch checkpoint where no signal can be sent (DDP replicas)."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            ckpt = trainer.checkpoint_callback
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
            raise SystemExit(0)


def torch_memtracker_peak(parts, x: torch.Tensor, y: torch.Tensor) -> int:
    """The peak of one steady-state training step of ``parts`` (``net`` and ``build_optimizers()``)
    on real tensors, by torch's own MemTracker (torch.distributed._tools.mem_tracker): an
    implementation independent of glcan's tracker."""
    from torch.distributed._tools.mem_tracker import MemTracker

    update = BlockUpdate(parts.build_optimizers())
    local_step(parts.net, x, y, step=update)  # the first step creates the optimizer state
    tracker = MemTracker()
    tracker.track_external(parts.net, *update.optimizers, x, y)
    with tracker:
        local_step(parts.net, x, y, step=update)
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
