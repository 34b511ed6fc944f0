"""Your own model: the Python API, the config route with a user's module, and K from a budget."""

from __future__ import annotations

import json
import sys
import textwrap

import lightning as L
import pytest
import torch
from torch import nn

import glcan
from conftest import SHRINK, fit
from glcan.memory.budget import BudgetError, fits, parse_bytes


def small_cnn() -> nn.Sequential:
    """A user's CNN, not from the registry: six conv units."""
    def unit(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
    return nn.Sequential(unit(1, 16), unit(16, 16), unit(16, 32, 2), unit(32, 32), unit(32, 64, 2), unit(64, 64))


def _fit_small_cnn(method: str) -> dict:
    L.seed_everything(0)
    data = glcan.GLCanDataModule(name="mnist5k", batch_size=128)
    model = glcan.GLCanModule(
        backbone=small_cnn(), method=method, num_blocks=3, head="glcan", num_classes=10,
        image_shape=data.image_shape, batch_size=128,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    )
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return {"model": model, **trainer.test(model, datamodule=data, verbose=False)[0]}


@pytest.mark.slow
def test_custom_cnn_trains_locally_through_the_api():
    """A user's CNN trained locally deploys the same network as E2E (its last block ends in the
    CNN's own classifier), and both learn. Whether local keeps E2E's accuracy is a claim about
    means over paired seeds (tests/test_accuracy.py, docs/results.md), not one seed's numbers."""
    local, e2e = _fit_small_cnn("local"), _fit_small_cnn("e2e")
    assert local["model"].net.num_blocks == 3 and sum(len(b) for b in local["model"].net.blocks) == 6
    shapes = lambda r: {k: v.shape for k, v in r["model"].deployable().state_dict().items()}
    assert shapes(local) == shapes(e2e)
    assert local["test/acc"] > 0.5 and e2e["test/acc"] > 0.5  # both learned (chance is 0.1)


def test_units_as_a_list_and_shapes_found_by_probing():
    units = list(small_cnn())
    model = glcan.GLCanModule(backbone=units, method="local", num_blocks=2, split="uniform", head="linear",
                              num_classes=10, image_shape=(1, 28, 28))
    assert model.net.heads[0].net[-1].in_features == 32  # found by running an example input
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    e2e = glcan.GLCanModule(backbone=units, method="e2e_recompute", num_classes=10, image_shape=(1, 28, 28))
    assert e2e(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_config_route_with_a_user_module(tmp_path, monkeypatch):
    pkg = tmp_path / "usernets.py"
    pkg.write_text(textwrap.dedent('''
        from torch import nn

        def make_units(width: int = 8):  # no return annotation: the guide's example as written
            """Three conv units of the user's own network."""
            return nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else width, width, 3, padding=1), nn.ReLU())
                                   for i in range(3)])
    '''))
    config = tmp_path / "my.yaml"
    config.write_text(textwrap.dedent('''
        model:
          backbone:
            class_path: usernets.make_units
            init_args: {width: 12}
          method: local
          num_blocks: 3
          head: linear
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = fit(str(config), tmp_path / "run", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.limit_test_batches", "1")
    assert cli.model.backbone_name == "Sequential" and cli.model.net.num_blocks == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "local" and len(summary["block_acc"]) == 3
    # the checkpoint records the user's class_path: it rebuilds the model without arguments
    model = glcan.GLCanModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.net.num_blocks == 3 and model.net.blocks[0][0][0].out_channels == 12
    sys.modules.pop("usernets", None)


def test_parse_bytes():
    assert parse_bytes("4GiB") == 4 * 2**30 and parse_bytes("12GB") == 12 * 10**9 and parse_bytes(1024) == 1024
    with pytest.raises(BudgetError, match="not a size"):
        parse_bytes("lots")


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(BudgetError, match="too small even with one unit per block .* lower data.batch_size"):
        glcan.GLCanModule.planned(backbone="resnet20", method="local", num_blocks="auto", memory_budget="100MiB",
                                  num_classes=10, image_shape=(3, 32, 32), batch_size=64)
    with pytest.raises(ValueError, match="memory_budget is not set"):
        glcan.GLCanModule.planned(backbone="resnet20", method="local", num_blocks="auto", num_classes=10,
                                  image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="chosen by the planner"):  # __init__ builds, it does not plan
        glcan.GLCanModule(backbone="resnet20", method="local", num_blocks="auto", memory_budget="4GiB")


@pytest.mark.slow
def test_budget_picks_the_smallest_k_that_fits_for_resnet32_at_batch_1024():
    def peak(method: str, k: int = 1) -> int:
        kw = dict(backbone="resnet32", method=method, num_blocks=k, num_classes=10, image_shape=(3, 32, 32),
                  batch_size=1024)
        return glcan.predict_memory(lambda: glcan.GLCanModule(**kw), 1024, (3, 32, 32), 10).peak_bytes

    e2e, one_unit = peak("e2e"), peak("local", 16)
    budget = int(0.3 * e2e * 1.1 + 512 * 2**20)  # between the smallest local peak and E2E
    assert fits(one_unit, budget) and not fits(e2e, budget)
    model = glcan.GLCanModule.planned(backbone="resnet32", method="local", num_blocks="auto", memory_budget=budget,
                                      memory_policy="speed", num_classes=10, image_shape=(3, 32, 32), batch_size=1024)
    k = model.net.num_blocks
    assert model.hparams.method == "local" and 1 < k < 16  # speed: no recomputation when it fits without
    assert fits(peak("local", k), budget)
    assert not fits(peak("local", k - 1), budget)  # the smallest K that fits
