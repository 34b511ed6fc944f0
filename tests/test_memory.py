"""Memory: the tracker counts exactly, the predictor agrees with the meter, the orderings hold."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import E2E_CONFIG, LOCAL_CONFIG, fit, torch_memtracker_peak
from glcan.cli import main
from glcan.lit import GLCanModule
from glcan.lit import plan as plan_module
from glcan.lit.plan import assemble, memory_report, plan
from glcan.memory import MemoryTracker, measure_steps, predict
from glcan.memory.costs import memory_split


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


BASE = dict(backbone="resnet20", num_blocks=4, split="uniform", head="glcan", image_shape=(3, 32, 32), num_classes=10,
            batch_size=16)


def _module(method: str, **kw) -> GLCanModule:
    return GLCanModule(method=method, **{**BASE, **kw})


def _parts(method: str, **kw):
    """What the predictor trains (plain PyTorch parts, built under its FakeTensorMode)."""
    return assemble({**BASE, "method": method, **kw})


def _torch_memtracker_peak(method: str, batch: int = 16) -> int:
    torch.manual_seed(0)
    return torch_memtracker_peak(_parts(method), torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))


@pytest.mark.parametrize("method", ["e2e", "local", "local_recompute"])
def test_meter_and_predictor_agree_with_torchs_memtracker(method):
    """The meter (real tensors) and the predictor (FakeTensors) both equal torch's MemTracker on
    the same steady-state step, to the byte."""
    torch.manual_seed(0)
    parts = _parts(method)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    measured = measure_steps(parts, x, y).peak_bytes
    predicted = predict(lambda: _parts(method), 16, (3, 32, 32), 10).peak_bytes
    assert measured == predicted == _torch_memtracker_peak(method)


@pytest.mark.parametrize("config", [LOCAL_CONFIG, E2E_CONFIG])
def test_a_training_run_measures_what_the_predictor_predicts(tmp_path, config):
    """A real Lightning run's meter (summary.json) against the prediction for its planned model."""
    cli = fit(config, tmp_path, "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "0",
              "--trainer.limit_test_batches", "1")
    measured = json.loads((tmp_path / "summary.json").read_text())["peak_memory_bytes"]
    predicted = predict(lambda: assemble(cli.model.init_arguments), 16, (3, 32, 32), 10).peak_bytes
    assert measured == pytest.approx(predicted, rel=0.01)


def test_memory_orderings():
    shape = (3, 32, 32)
    peak = {m: predict(lambda m=m: _parts(m), 16, shape, 10).peak_bytes for m in ("e2e", "e2e_recompute", "local")}
    assert peak["local"] < peak["e2e"] and peak["e2e_recompute"] < peak["e2e"]
    k2 = predict(lambda: _parts("local", num_blocks=2), 16, shape, 10).peak_bytes
    k8 = predict(lambda: _parts("local", num_blocks=8), 16, shape, 10).peak_bytes
    assert k8 < peak["local"] < k2
    # Twice the batch: activations double, parameters do not.
    double = predict(lambda: _parts("e2e", batch_size=32), 32, shape, 10).peak_bytes
    assert 1.8 * peak["e2e"] < double < 2.0 * peak["e2e"]


@pytest.mark.slow  # ResNet-110
def test_memory_split_beats_uniform_for_resnet110_k4():
    def peak(split: str):
        args = plan({**BASE, "method": "local", "backbone": "resnet110", "split": split, "batch_size": 128})
        est = predict(lambda: assemble(args), 128, (3, 32, 32), 10)
        return est.peak_bytes, est.block_peaks

    uniform, uniform_blocks = peak("uniform")
    memory, memory_blocks = peak("memory")
    assert memory < 0.85 * uniform
    # Balanced: the blocks' peaks are close to one another, unlike the uniform split's.
    assert max(memory_blocks) / min(memory_blocks) < max(uniform_blocks) / min(uniform_blocks)



def test_memory_split_counts_the_lookahead_copies():
    """A lookahead head runs a copy of the next block: the memory split weighs it, and its
    measured peak is below the split that ignores the copies (ResNet-20, K=4, two lookaheads)."""
    args = {**BASE, "method": "local", "backbone": "resnet20", "num_blocks": 4, "batch_size": 128, "lookahead": 2}
    blind = memory_split(plan_module._split_costs(args), 4)
    aware = plan_module.memory_boundaries(args)
    assert aware != blind
    peak = lambda b: plan_module.predicted_peak({**args, "boundaries": b}).peak_bytes  # noqa: E731
    assert peak(aware) < 0.9 * peak(blind)


def test_recompute_split_is_the_candidate_with_the_lower_measured_peak():
    """Under recomputation the cost model's two counts of a head's gradient can pick different
    splits; the plan measures both and keeps the lower peak (ResNet-32, K=8: they differ)."""
    args = {**BASE, "method": "local_recompute", "backbone": "resnet32", "num_blocks": 8, "split": "memory",
            "batch_size": 128, "boundaries": None}
    costs = plan_module._split_costs(args)
    candidates = [memory_split(costs, 8, recompute=True, shared_gradient=s) for s in (False, True)]
    assert candidates[0] != candidates[1]
    chosen = plan_module.memory_boundaries(args)
    peaks = {tuple(b): plan_module.predicted_peak({**args, "boundaries": b}).peak_bytes for b in candidates}
    assert tuple(chosen) in peaks and peaks[tuple(chosen)] == min(peaks.values())

def test_report_has_the_floor_below_every_split():
    module = _module("local")
    report = memory_report(module, 16, (3, 32, 32), 10)
    assert report["floor_bytes"] <= report["local_bytes"] < report["e2e_bytes"]
    # The parts are the tensors themselves: the network's parameters and buffers (BatchNorm's
    # statistics), SGD's momentum buffers (one per parameter), and the batch (16 images and their
    # int64 labels).
    param_bytes = sum(p.numel() * p.element_size() for p in module.net.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in module.net.buffers())
    assert report["parts"]["parameters"] == param_bytes + buffer_bytes
    assert report["parts"]["optimizer_state"] == param_bytes
    assert report["parts"]["input"] == 16 * 3 * 32 * 32 * 4 + 16 * 8


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_floor_is_below_every_method_at_its_precision(precision):
    """The floor (the largest unit alone) is measured at the report's precision: under bf16-mixed
    it was measured in fp32 and stood above local_recompute's bf16 peak (ViT-B/16: 0.285 of E2E
    against 0.266)."""
    report = memory_report(_module("local"), 16, (3, 32, 32), 10, precision=precision)
    assert report["floor_bytes"] <= min(report[f"{m}_bytes"] for m in ("local", "local_recompute", "e2e_recompute"))


def test_memory_command_json(capsys):
    assert main(["memory", "--config", LOCAL_CONFIG, "--data.batch_size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("config", "batch_size", "peak_bytes", "e2e_bytes", "e2e_recompute_bytes", "local_bytes",
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
    predicted = predict(lambda: assemble(cli.model.init_arguments), 256, (3, 32, 32), 10).peak_bytes
    assert summary["peak_memory_bytes"] == pytest.approx(predicted, rel=0.10)


def test_memory_json_ratio_is_the_configs_own_method(capsys):
    """peak_bytes and ratio_to_e2e describe the same method: the config's."""
    assert main(["memory", "--config", LOCAL_CONFIG, "--model.method", "local_recompute", "--data.batch_size", "32",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["config_method"] == "local_recompute" and out["peak_bytes"] == out["local_recompute_bytes"]
    assert out["ratio_to_e2e"] == pytest.approx(out["local_recompute_bytes"] / out["e2e_bytes"])
    assert out["ratio_to_e2e"] < out["local_ratio_to_e2e"]


@pytest.mark.parametrize("config", [E2E_CONFIG, LOCAL_CONFIG])
def test_memory_accepts_num_blocks_auto_for_every_method(config, capsys):
    assert main(["memory", "--config", config, "--model.num_blocks", "auto", "--budget", "2GiB", "--data.batch_size",
                 "16"]) == 0
    assert "local K=" in capsys.readouterr().out
