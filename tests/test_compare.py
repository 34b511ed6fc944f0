"""``train.py compare``: the grid, its outputs, resume, failures and bad input.

One small comparison (method=e2e,local x head=glcan,linear -> 3 runs, on fake data) is trained
once for the module and shared; the resume test then deletes one run's summary.json. W&B is
offline (every run and the comparison run leave an offline-run directory); nothing here
touches the network.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from conftest import LOCAL_CONFIG, ROOT, TINY_RUN

from glcan.cli import compare
from glcan.cli import main as entry_main
from glcan.cli.compare import main as compare_main
from glcan.compare.grid import CompareError, expand
from glcan.lit.rundir import RunDir, holder

REPO = ROOT
BASE = LOCAL_CONFIG
FAST = TINY_RUN
GRID = ["--grid", "model.method=e2e,local", "--grid", "model.head=glcan,linear"]
IDS = ["e2e_s0", "local_k2_glcan_s0", "local_k2_linear_s0"]
PNGS = ["acc_vs_memory.png", "block_acc.png", "loss_curves.png"]


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--config", BASE, *GRID, *FAST, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        rc = compare_main(_argv(out, "--name", "cmp_test"))
    return out, rc, (out / "report.md").read_text()


def parse_args(argv: list[str]):
    return compare.parse(argv)[1]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "comparison.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# --- the grid (no training) ---------------------------------------------------------------

def test_grid_expands_with_e2e_once_per_seed():
    opts = parse_args(["--grid", "model.method=e2e,local", "--grid", "model.num_blocks=2,4", "--grid",
                       "model.head=glcan,linear", "--seeds", "2", "--data.name", "fake"])
    assert opts.fixed == ["--data.name", "fake"] and opts.seeds == [0, 1]
    plan = expand(opts, {"model.method": "local", "model.num_blocks": 4, "model.head": "glcan"})
    ids = [p.run_id for p in plan.points]
    assert ids[:5] == ["e2e_s0", "local_k2_glcan_s0", "local_k2_linear_s0", "local_k4_glcan_s0", "local_k4_linear_s0"]
    assert len(ids) == 10 and len(set(ids)) == 10 and ids[5] == "e2e_s1"
    e2e = plan.points[0]
    assert e2e.overrides == {"model.method": "e2e"} and e2e.args() == ["--model.method", "e2e"]


def test_grid_ids_name_other_keys_and_brackets():
    opts = parse_args(["--grid=model.split=uniform,[3,6]", "--grid", "data.batch_size=16,32", "--seed_list", "3"])
    plan = expand(opts, {"model.method": "local", "model.num_blocks": 3, "model.head": "glcan"})
    assert [p.run_id for p in plan.points] == [
        "local_k3_glcan_split-uniform_batch_size-16_s3", "local_k3_glcan_split-uniform_batch_size-32_s3",
        "local_k3_glcan_split-3-6_batch_size-16_s3", "local_k3_glcan_split-3-6_batch_size-32_s3"]
    assert plan.points[2].overrides["model.split"] == "[3,6]"


@pytest.mark.parametrize("argv, message", [
    (["--grid", "model.num_blocks"], "--grid 'model.num_blocks' needs key=v1,v2"),
    (["--grid", "model.num_blocks="], "needs key=v1,v2"),
    (["--grid", "=2,4"], "needs key=v1,v2"),
    (["--grid", "seed_everything=1,2"], "use --seeds"),
    (["--grid", "model.head=glcan", "--grid", "model.head=linear"], "already in the grid"),
    (["--seeds", "0"], "--seeds needs a positive count"),
    (["--run_dir", "x"], "set by compare"),
])
def test_bad_arguments_are_one_line(argv: list[str], message: str):
    with pytest.raises(CompareError, match=re.escape(message)):
        parse_args(argv)


@pytest.mark.parametrize("grid, message", [
    ("model.num_blocks", "error: --grid 'model.num_blocks' needs key=v1,v2"),
    ("model.nonsense=1,2", "error: --grid 'model.nonsense=1,2': unknown option --model.nonsense"),
    ("model.num_block=2,4",
     "error: --grid 'model.num_block=2,4': unknown option --model.num_block (did you mean --model.num_blocks?)"),
    ("model.method=e2e,bogus", "error: --grid 'model.method=e2e,bogus': --model.method: 'bogus' is not one of"),
])
def test_bad_grid_fails_before_any_training(tmp_path, monkeypatch, capsys, grid, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def no_fit(args):
        raise AssertionError("a run started despite a bad grid")

    monkeypatch.setattr(compare, "run_fit", no_fit)
    rc = entry_main(["compare", "--config", BASE, "--grid", grid, *FAST, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(message)
    assert not (tmp_path / "out").exists()


# --- one real comparison ----------------------------------------------------------------------

def test_comparison_rows_and_files(compared):
    out, rc, report = compared
    assert rc == 0
    rows = _rows(out)
    assert [r["run_id"] for r in rows] == IDS  # E2E once, not once per head
    assert all(r["status"] == "ok" for r in rows)
    assert [r["method"] for r in rows] == ["e2e", "local", "local"]
    assert [r["head"] for r in rows] == ["", "glcan", "linear"]
    assert len(json.loads(rows[1]["block_acc"])) == 2 and float(rows[0]["peak_memory_bytes"]) > 0
    assert "memory_parts.activations" in rows[0]  # nested summary fields are flattened
    for png in PNGS:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    manifest = json.loads((out / "comparison.json").read_text())
    assert manifest["id"] == "cmp_test" and [r["run_id"] for r in manifest["runs"]] == IDS


def test_report_table_and_provenance(compared):
    out, _, report = compared
    assert "**Complete:** all 3 planned runs finished." in report
    table = [ln for ln in report.splitlines() if ln.startswith("| e2e") or ln.startswith("| local")]
    assert len(table) == 3
    header = [h.strip() for h in report.splitlines()[[ln.startswith("| method") for ln in report.splitlines()].index(True)].split("|")[1:-1]]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in table]
    col = {h: i for i, h in enumerate(header)}
    # the ratios are the summaries' peak bytes and CPU times, local over E2E
    rows = {r["run_id"]: r for r in _rows(out)}
    e2e, local = rows["e2e_s0"], rows["local_k2_glcan_s0"]
    mem = float(local["peak_memory_bytes"]) / float(e2e["peak_memory_bytes"])
    cpu = float(local["step_cpu_ms"]) / float(e2e["step_cpu_ms"])
    assert cells[1][col["mem / E2E"]] == f"{mem:.2f}×" and cells[1][col["CPU / E2E"]].rstrip("*") == f"{cpu:.2f}×"
    assert all(float(c[col["step CPU (ms)"]]) > 0 for c in cells)
    # fake data has random labels: every run is at chance, counted apart as collapsed, in no mean
    assert "| local | 2 | glcan | 0 (+1 collapsed) | missing |" in table[1]
    assert "## Collapsed runs (counted apart, in no mean)" in report
    # the deployed network is E2E's (the last block trains through the backbone's classifier)
    assert cells[1][col["params"]] == cells[0][col["params"]] and cells[0][col["head params"]] == "0"
    for text in ("peak mem (MiB)", "mem / E2E", "step CPU (ms)", "CPU / E2E", "tensor-storage tracker", "## Machine",
                 "cores", "python train.py compare --config", "--grid model.method=e2e,local", *PNGS):
        assert text in report, text


def test_wandb_offline_runs_share_the_group(compared):
    out, _, _ = compared
    for run_id in IDS:
        summary = json.loads((out / "runs" / run_id / "summary.json").read_text())
        assert summary["wandb_dir"] and Path(summary["wandb_dir"]).name.startswith("offline-run-")
        assert Path(summary["wandb_dir"]).parent == out / "runs" / run_id / "wandb"
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1  # the comparison's own run
    config = (out / "runs" / "e2e_s0" / "config.yaml").read_text()
    assert "group: cmp_test" in config


def test_resume_reruns_only_the_missing_point(compared, monkeypatch, capsys):
    out, _, _ = compared
    monkeypatch.setenv("WANDB_MODE", "disabled")
    deleted = out / "runs" / "local_k2_glcan_s0" / "summary.json"
    saved = deleted.read_text()
    deleted.unlink()
    kept = {i: (out / "runs" / i / "summary.json").stat().st_mtime_ns for i in ("e2e_s0", "local_k2_linear_s0")}
    ran: list[list[str]] = []

    def recording_fit(args):  # stands in for the real fit (trained above): records, writes the summary
        ran.append(args)
        run_dir = Path(args[args.index("--run_dir") + 1])
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # kept: the run continues from it
        (run_dir / "summary.json").write_text(saved)
        return 0

    monkeypatch.setattr(compare, "run_fit", recording_fit)
    assert compare_main(_argv(out)) == 0
    assert [Path(a[a.index("--run_dir") + 1]).name for a in ran] == ["local_k2_glcan_s0"]
    assert ran[0][ran[0].index("--logger.group") + 1] == "cmp_test"  # the resumed run keeps the group
    assert ran[0][-2:] == ["--ckpt_path", "last"]  # and continues from its checkpoint, not from scratch
    assert "skipping 2 complete run(s)" in capsys.readouterr().out
    assert {i: (out / "runs" / i / "summary.json").stat().st_mtime_ns for i in kept} == kept
    assert [r["status"] for r in _rows(out)] == ["ok"] * 3
    report = (out / "report.md").read_text()
    assert "reused (resume)" in report and "**Complete:**" in report


def test_resume_refuses_other_fit_options(compared):
    out, _, _ = compared
    with pytest.raises(CompareError, match="other fit options"):
        compare_main(_argv(out, "--trainer.max_epochs", "2"))


def test_a_failed_run_is_reported_and_the_comparison_marked_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "out"
    calls: list[str] = []

    def fake_fit(args):  # the first point fails, the second "trains" by writing a summary
        run_dir = Path(args[args.index("--run_dir") + 1])
        calls.append(run_dir.name)
        if run_dir.name.startswith("e2e"):
            raise RuntimeError("out of memory (simulated)")
        run_dir.mkdir(parents=True)
        summary = {"method": "local", "num_blocks": 2, "head": "glcan", "test_acc": 0.5, "block_acc": [0.4, 0.5],
                   "peak_memory_bytes": 2**20, "memory_method": "test", "step_time_ms": 10.0, "timed_steps": 20}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0

    monkeypatch.setattr(compare, "run_fit", fake_fit)
    rc = compare_main(["--config", BASE, "--grid", "model.method=e2e,local", *FAST, "--out", str(out)])
    assert rc == 1 and calls == ["e2e_s0", "local_k2_glcan_s0"]  # the failure did not stop the comparison
    assert [(r["run_id"], r["status"]) for r in _rows(out)] == [("e2e_s0", "failed"), ("local_k2_glcan_s0", "ok")]
    report = (out / "report.md").read_text()
    assert "INCOMPLETE: 1 of 2 planned runs are missing" in report and "out of memory (simulated)" in report
    assert "RuntimeError" in (out / "runs" / "e2e_s0" / "error.txt").read_text()


def test_a_base_config_with_num_blocks_auto_plans_each_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ran: list[list[str]] = []

    def recording_fit(args):
        ran.append(args)
        return 1  # nothing written: the comparison reports it, the point is that it planned

    monkeypatch.setattr(compare, "run_fit", recording_fit)
    rc = compare_main(["--config", BASE, "--grid", "model.method=e2e,local", *FAST, "--model.num_blocks", "auto",
                       "--model.memory_budget", "4GiB", "--out", str(tmp_path / "out")])
    assert rc == 1 and [Path(a[a.index("--run_dir") + 1]).name for a in ran] == ["e2e_s0", "local_kauto_glcan_s0"]


def test_shards_train_their_share_and_the_report_merges_them(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ran: list[str] = []

    def fake_fit(args):
        run_dir = Path(args[args.index("--run_dir") + 1])
        ran.append(run_dir.name)
        run_dir.mkdir(parents=True)
        summary = {"method": "local" if "local" in run_dir.name else "e2e", "test_acc": 0.9, "block_acc": [0.9],
                   "seed": int(run_dir.name[-1]), "peak_memory_bytes": 2**20, "num_classes": 10}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0

    monkeypatch.setattr(compare, "run_fit", fake_fit)
    argv = ["--config", BASE, "--grid", "model.method=e2e,local", "--seeds", "2", *FAST, "--out", str(tmp_path / "o")]
    assert compare_main([*argv, "--shard", "0/2"]) == 0 and not (tmp_path / "o" / "report.md").exists()
    assert compare_main([*argv, "--shard", "1/2"]) == 0  # the last shard writes the report
    assert sorted(ran) == ["e2e_s0", "e2e_s1", "local_k2_glcan_s0", "local_k2_glcan_s1"] and len(set(ran)) == 4
    assert "**Complete:** all 4 planned runs finished." in (tmp_path / "o" / "report.md").read_text()
    (tmp_path / "o" / "report.md").unlink()
    assert compare_main([*argv, "--report_only"]) == 0 and len(ran) == 4  # nothing trained again
    assert (tmp_path / "o" / "report.md").is_file()
    with pytest.raises(CompareError, match="needs i/n"):
        compare_main([*argv, "--shard", "2/2"])


def test_a_run_in_use_by_another_process_is_left_alone(tmp_path, monkeypatch):
    """Overlapping shards or a second compare on one folder: a run directory whose lock is held
    (a run training right now) is neither removed nor trained again; it is reported as not run.
    Before, compare deleted the directory under the running process and trained into it too,
    and both runs died on a mixed metrics.csv."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ran: list[str] = []

    def fake_fit(args):
        run_dir = Path(args[args.index("--run_dir") + 1])
        ran.append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = {"method": "local" if "local" in run_dir.name else "e2e", "test_acc": 0.9, "block_acc": [0.9],
                   "seed": 0, "peak_memory_bytes": 2**20, "num_classes": 10}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0

    monkeypatch.setattr(compare, "run_fit", fake_fit)
    out = tmp_path / "o"
    busy = RunDir(out / "runs" / "local_k2_glcan_s0", record={}).acquire()  # "another process" training it
    (busy.path / "metrics.csv").write_text("epoch\n0\n")
    argv = ["--config", BASE, "--grid", "model.method=e2e,local", "--seeds", "1", *FAST, "--out", str(out)]
    try:
        assert compare_main(argv) == 1  # incomplete: one run is still someone else's
        assert ran == ["e2e_s0"] and (busy.path / "metrics.csv").read_text() == "epoch\n0\n"
        assert "in use by another process" in (out / "report.md").read_text()
    finally:
        busy.release()
    assert holder(busy.path) is None  # released: the next compare trains it
    assert compare_main(argv) == 0 and ran == ["e2e_s0", "local_k2_glcan_s0"]
