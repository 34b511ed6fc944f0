"""Training under Lightning: equivalences, step counting, resume, checkpoints, bad settings."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import E2E_CONFIG, LOCAL_CONFIG, fit
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.lit.checks import ConfigError

def _trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, deterministic=True, **kw)


def _plain_backprop(model: GLCanModule, dm: GLCanDataModule, epochs: int) -> None:
    """The textbook loop, independent of glcan's step: zero_grad, forward, loss, backward, step."""
    (opt,) = model.build_optimizers()
    for epoch in range(epochs):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        model.net.train()
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model.net(x), y)
            loss.backward()
            opt.step()


@pytest.mark.parametrize("method, k", [("e2e", 1), ("local", 1)])
def test_e2e_and_one_block_local_are_plain_backprop(method, k):
    """E2E (one block, under Lightning) and K=1 local both equal a plain PyTorch loop."""
    dm = GLCanDataModule(name="fake", fake_size=48, batch_size=16, seed=0)
    opt = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    common = dict(backbone="resnet20", num_classes=dm.num_classes, image_shape=dm.image_shape, optimizer=opt)
    torch.manual_seed(0)
    trained = GLCanModule(method=method, num_blocks=k, **common)
    reference = copy.deepcopy(trained)
    L.seed_everything(0)
    _trainer(max_epochs=2, limit_val_batches=0).fit(trained, datamodule=dm)
    _plain_backprop(reference, dm, epochs=2)
    for (name, a), b in zip(trained.net.named_parameters(), reference.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_e2e_and_local_start_from_the_same_weights_at_the_same_seed():
    """The README's claim, through the planner (the memory split builds networks to measure
    them, and must not move the random generator): the deployed network is initialised alike."""
    args = dict(backbone="resnet20", num_classes=10, image_shape=(1, 32, 32), batch_size=16)
    torch.manual_seed(0)
    e2e = GLCanModule.planned(method="e2e", **args)
    torch.manual_seed(0)
    local = GLCanModule.planned(method="local", num_blocks=4, split="memory", **args)
    deployed_e2e, deployed_local = e2e.deployable().state_dict(), local.deployable().state_dict()
    assert [t.shape for t in deployed_e2e.values()] == [t.shape for t in deployed_local.values()]
    for a, b in zip(deployed_e2e.values(), deployed_local.values()):
        assert torch.equal(a, b)


def test_global_step_counts_batches_and_max_steps_means_batches(tmp_path):
    cli = fit(LOCAL_CONFIG, tmp_path / "a", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1")
    assert cli.trainer.global_step == 6  # 2 epochs x 3 batches, with K=4 block optimizers
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert names == ["epoch000.ckpt", "epoch001.ckpt", "last.ckpt"]  # the two newest epochs are kept
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6

    cli = fit(LOCAL_CONFIG, tmp_path / "b", "--trainer.max_epochs", "-1", "--trainer.max_steps", "5",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1")
    assert cli.trainer.global_step == 5
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 5


def test_summary_for_a_local_run(tmp_path):
    fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["method"] == "local" and s["num_blocks"] == 4 and s["head"] == "glcan"
    assert len(s["block_acc"]) == 4 and all(0.0 <= a <= 1.0 for a in s["block_acc"])
    assert s["block_acc"][-1] == s["test_acc"]
    assert s["peak_memory_bytes"] > 0 and "tracker" in s["memory_method"]
    assert len(s["memory_block_peaks"]) == 4 and max(s["memory_block_peaks"]) == s["peak_memory_bytes"]
    for key in ("backbone", "dataset", "epochs", "seed", "params", "head_params", "step_time_ms", "step_cpu_ms",
                "threads", "load_before", "wandb_dir"):
        assert key in s


def _weights(path) -> dict:
    return torch.load(path, weights_only=False)["state_dict"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    args = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--trainer.deterministic", "true"]
    fit(LOCAL_CONFIG, tmp_path / "full", "--trainer.max_epochs", "2", *args)
    # Planned for 2 epochs (the OneCycle schedule spans both), stopped after the first.
    fit(LOCAL_CONFIG, tmp_path / "part", "--trainer.max_epochs", "2", "--trainer.callbacks+=conftest.StopAfterEpoch", *args)
    assert torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)["epoch"] == 0
    fit(LOCAL_CONFIG, tmp_path / "part", "--trainer.max_epochs", "2", "--ckpt_path", "last", *args)
    full, resumed = _weights(tmp_path / "full/checkpoints/last.ckpt"), _weights(tmp_path / "part/checkpoints/last.ckpt")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
    ckpt = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 4 and len(ckpt["lr_schedulers"]) == 4


def test_checkpoint_of_another_split_is_refused_clearly(tmp_path):
    args = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    cli = fit(LOCAL_CONFIG, tmp_path / "k4", *args)
    ckpt = str(tmp_path / "k4/checkpoints/last.ckpt")
    common = dict(num_classes=10, image_shape=cli.datamodule.image_shape, batch_size=16)
    for model, message in [
        (GLCanModule(method="local", num_blocks=2, split="uniform", **common), "num_blocks=4 .config has 2"),
        (GLCanModule(method="e2e", **common), "method='local' .config has 'e2e'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(model, datamodule=cli.datamodule, ckpt_path=ckpt)


def test_16_mixed_is_refused_for_local_and_16_true_is_not():
    """On CPU Lightning turns 16-mixed into bf16-mixed itself, so the check is exercised directly.
    One gradient scaler cannot serve K block optimizers; 16-true and bf16 need no scaler."""
    model = GLCanModule(method="local", num_blocks=2, split="uniform", image_shape=(3, 32, 32))
    model._trainer = SimpleNamespace(precision="16-mixed")
    with pytest.raises(ConfigError, match="16-mixed"):
        model.setup("fit")
    for ok in ("bf16-mixed", "16-true", "bf16-true", "32-true"):
        model._trainer = SimpleNamespace(precision=ok)
        model.setup("fit")
    e2e = GLCanModule(method="e2e", image_shape=(3, 32, 32))  # one optimizer: one scaler serves it
    e2e._trainer = SimpleNamespace(precision="16-mixed")
    e2e.setup("fit")


def test_bf16_mixed_trains_locally_in_bf16(tmp_path):
    """Under bf16-mixed the blocks' activations are bf16: the measured peak falls well below
    32-true's at the same settings, and the clipped run still learns finite weights."""
    args = ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--model.gradient_clip_val", "1.0"]
    fit(LOCAL_CONFIG, tmp_path / "bf16", "--trainer.precision", "bf16-mixed", *args)
    fit(LOCAL_CONFIG, tmp_path / "fp32", *args)
    bf16, fp32 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("bf16", "fp32"))
    assert bf16["precision"] == "bf16-mixed"
    assert bf16["memory_parts"]["activations"] < 0.7 * fp32["memory_parts"]["activations"]
    weights = _weights(tmp_path / "bf16/checkpoints/last.ckpt")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
