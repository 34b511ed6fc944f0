"""Memory: the tracker counts exactly, the predictor agrees with the meter, the orderings hold."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import E2E_CONFIG, LOCAL_CONFIG, fit
from glcan.cli.main import main
from glcan.lit import GLCanModule
from glcan.memory import MemoryTracker, predict
from glcan.memory.report import memory_report


def test_tracker_counts_live_storages_exactly():
    tracker = MemoryTracker()
    with tracker:
        a = torch.zeros(1000)  # 4000 bytes
        b = a[:10]  # a view: no new storage
        c = torch.ones(250, dtype=torch.float64)  # 2000 bytes
        assert tracker.current == 6000
        del a, b
        assert tracker.current == 2000  # the storage dies with its last view
        d = c * 2
        assert tracker.peak == 6000 and tracker.current == 4000
        del c, d
    assert tracker.current == 0


def _module(method: str, **kw) -> GLCanModule:
    base = dict(backbone="resnet20", num_blocks=4, split="uniform", head="glcan", image_shape=(3, 32, 32),
                num_classes=10, batch_size=16)
    return GLCanModule(method=method, **{**base, **kw})


@pytest.mark.parametrize("config, method", [(LOCAL_CONFIG, "local"), (E2E_CONFIG, "e2e")])
def test_predictor_equals_the_cpu_meter(tmp_path, config, method):
    """The meter measures real Lightning training steps; the predictor fake ones: within 1%."""
    cli = fit(config, tmp_path, "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "0",
              "--trainer.limit_test_batches", "1", "--model.split", "uniform")
    measured = json.loads((tmp_path / "summary.json").read_text())["peak_memory_bytes"]
    predicted = predict(lambda: cli.model.rebuild(), 16, (3, 32, 32), 10).peak_bytes
    assert measured == pytest.approx(predicted, rel=0.01)


def test_memory_orderings():
    shape = (3, 32, 32)
    peak = {m: predict(lambda m=m: _module(m), 16, shape, 10).peak_bytes for m in ("e2e", "e2e_checkpoint", "local")}
    assert peak["local"] < peak["e2e"] and peak["e2e_checkpoint"] < peak["e2e"]
    k2 = predict(lambda: _module("local", num_blocks=2), 16, shape, 10).peak_bytes
    k8 = predict(lambda: _module("local", num_blocks=8), 16, shape, 10).peak_bytes
    assert k8 < peak["local"] < k2
    # Twice the batch: activations double, parameters do not.
    double = predict(lambda: _module("e2e", batch_size=32), 32, shape, 10).peak_bytes
    assert 1.8 * peak["e2e"] < double < 2.0 * peak["e2e"]


@pytest.mark.slow  # ResNet-110
def test_memory_split_beats_uniform_for_resnet110_k4():
    def peak(split: str):
        est = predict(lambda: _module("local", backbone="resnet110", split=split, head="glcan", batch_size=128),
                      128, (3, 32, 32), 10)
        return est.peak_bytes, est.block_peaks

    uniform, uniform_blocks = peak("uniform")
    memory, memory_blocks = peak("memory")
    assert memory < 0.85 * uniform
    # Balanced: the blocks' peaks are close to one another, unlike the uniform split's.
    assert max(memory_blocks) / min(memory_blocks) < max(uniform_blocks) / min(uniform_blocks)


def test_report_has_the_floor_below_every_split():
    report = memory_report(_module("local"), 16, (3, 32, 32), 10)
    assert report["floor_bytes"] <= report["local_bytes"] < report["e2e_bytes"]
    assert set(report["parts"]) >= {"parameters", "gradients", "optimizer_state", "activations", "heads", "input"}
    assert sum(report["parts"].values()) == report["peak_bytes"]


def test_memory_command_json(capsys):
    assert main(["memory", "--config", LOCAL_CONFIG, "--data.batch_size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("config", "batch_size", "peak_bytes", "e2e_bytes", "e2e_checkpoint_bytes", "local_bytes",
                "ratio_to_e2e", "floor_bytes", "peak_block", "parts"):
        assert key in out
    assert out["batch_size"] == 32 and out["ratio_to_e2e"] < 1


@pytest.mark.parametrize("args, message", [
    (["--data.batch_size", "0"], "batch_size"),
    (["--data.image_size", "16", "--model.backbone", "vgg11_bn", "--model.small_input", "false"], "cannot take inputs"),
    (["--model.num_blocks", "99"], "num_blocks=99"),
])
def test_memory_command_bad_input_is_one_line(capsys, args, message):
    assert main(["memory", "--config", LOCAL_CONFIG, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]


def test_unknown_config_key_is_refused(capsys):
    assert main(["memory", "--config", LOCAL_CONFIG, "--model.num_blockz", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown option --model.num_blockz (did you mean --model.num_blocks?)"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predictor_within_10_percent_of_cuda_max_memory_allocated(tmp_path):
    cli = fit(LOCAL_CONFIG, tmp_path, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
              "--data.batch_size", "256", "--data.fake_size", "1024", "--trainer.limit_train_batches", "4",
              "--trainer.limit_val_batches", "0", "--trainer.limit_test_batches", "1")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["memory_method"] == "torch.cuda.max_memory_allocated"
    predicted = predict(lambda: cli.model.rebuild(), 256, (3, 32, 32), 10).peak_bytes
    assert summary["peak_memory_bytes"] == pytest.approx(predicted, rel=0.10)
