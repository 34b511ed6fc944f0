"""The guide's path for a user's own network, from the user's own directory (not the repository):
their units (pooling and dropout included), the memory report, a fit from a config that names
their factory by class_path, a stop and a resume, a test and a predict on a folder of images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT

NETS = '''
from torch import nn

def make_units(width=8):  # no return annotation: the guide's example as written
    """A user's own CNN as units: conv, max-pool, dropout, conv."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Dropout2d(0.1),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()),
    )
'''
CONFIG = '''
model:
  backbone:
    class_path: mynets.make_units
    init_args: {width: 12}
  method: local
  num_blocks: 3
  head: glcan
data:
  name: folder
  root: images
  image_size: 32
  batch_size: 8
  val_fraction: 0.2
trainer:
  max_epochs: 2
'''


def _images(root: Path, n: int, classes=("cat", "dog")) -> None:
    for c, colour in zip(classes, ((200, 40, 40), (40, 40, 200))):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (36 + i % 3, 30), tuple(v + 3 * i for v in colour)).save(root / c / f"{i}.png")


def _train_py(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(home), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=home, env=env, capture_output=True,
                          text=True, timeout=600)


def test_units_with_pooling_and_dropout_get_a_memory_report():
    import glcan
    from torch import nn

    units = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), nn.MaxPool2d(2), nn.Dropout2d(0.1),
             nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())]
    model = glcan.GLCanModule.planned(backbone=units, method="local", num_blocks=3, split="memory", num_classes=10,
                                      image_shape=(3, 32, 32))
    report = glcan.memory_report(model, batch_size=64, image_shape=(3, 32, 32), num_classes=10)
    assert 0 < report["floor_bytes"] <= report["local_bytes"] < report["e2e_bytes"]


@pytest.mark.slow  # four commands in subprocesses, as a user runs them
def test_the_guide_from_a_users_own_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "mynets.py").write_text(textwrap.dedent(NETS))
    (home / "my.yaml").write_text(textwrap.dedent(CONFIG))
    _images(home / "images", 10)
    _images(home / "new", 2)

    stopped = _train_py(home, "fit", "--config", "my.yaml", "--trainer.callbacks+=conftest.SignalAt",
                        "--trainer.callbacks.step", "3", "--trainer.callbacks.signal", "SIGTERM")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    resume = stopped.stderr.split("Resume with:")[1].strip().splitlines()[0]
    assert "--ckpt_path last" in resume
    resumed = _train_py(home, "fit", "--config", "my.yaml", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (run,) = [p for p in (home / "runs").glob("folder_make_units-*_local_k3_glcan/version_0")]  # named by its factory
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["peak_memory_bytes"] and summary["num_classes"] == 2

    tested = _train_py(home, "test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))  # no data options repeated
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert json.loads((run / "test_last.json").read_text())["epochs"] == 2

    predicted = _train_py(home, "predict", "--ckpt_path", str(run), "--images", "new", "--out", "new.csv")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = list(csv.DictReader((home / "new.csv").open()))
    assert len(rows) == 4 and {r["class"] for r in rows} <= {"cat", "dog"}


def test_two_custom_networks_never_share_a_run(tmp_path):
    """Same factory, other arguments: two experiments, so --ckpt_path last never resumes the other."""
    from glcan.lit.rundir import backbone_label

    a = backbone_label({"class_path": "mynets.make_units", "init_args": {"width": 12}}, "Sequential")
    b = backbone_label({"class_path": "mynets.make_units", "init_args": {"width": 16}}, "Sequential")
    assert a.startswith("make_units-") and b.startswith("make_units-") and a != b
    assert backbone_label("resnet20", "resnet20") == "resnet20"
