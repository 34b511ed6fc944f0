"""Predicted training memory: E2E, E2E with checkpointing and local learning, side by side.

For every backbone below, predicts the steady-state peak of one fp32 training step (SGD with
momentum) with ``glcan.memory.predictor.predict``: the module is built under FakeTensorMode, so
nothing is allocated, and an exact tensor-storage tracker measures the bytes alive at once.
These are tensor bytes only; a GPU adds its CUDA context and the caching allocator's rounding
(see ``glcan/memory/budget.py``).

Rows, per backbone: E2E, E2E with per-unit gradient checkpointing, and local learning at
K in {2, 4, 8, 16, one unit per block} x split in {uniform, memory} x head in {linear, glcan}.
Each row reports the peak (GiB), its ratio to E2E and its ratio to the *floor* (the row's
resident bytes -- parameters, optimizer state, input -- plus the training footprint of the
single largest unit, ``glcan.memory.report.largest_unit_footprint``).

Every row is cached in ``memory_rows.json`` next to the output as soon as it is measured, and
the markdown is rewritten (atomically) after every row, marking rows not measured yet; a rerun
resumes from the cache. ``--fresh`` ignores the cache (e.g. after changing the predictor).

Usage::

    python bench/memory.py                 # full grid -> docs/benchmarks/memory.md
    python bench/memory.py --quick         # ResNet-32 and ResNet-110, K in {4, 16}
    python bench/memory.py --out /tmp/m.md --fresh
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.io import write_text  # noqa: E402
from glcan.lit.plan import assemble, plan  # noqa: E402
from glcan.memory.predictor import fake_mode, predict  # noqa: E402
from glcan.memory.report import largest_unit_footprint  # noqa: E402

GiB = 2**30
CACHE_VERSION = 2  # 2: last block through the backbone's classifier; local_recompute rows

# Published GPU figures for ResNet-110 on CIFAR-10, batch 1024 (InfoPro, Wang et al., ICLR 2021).
PUBLISHED = {"e2e_gb": 9.40, "infopro_k4_gb": 3.52, "checkpoint_gb": 3.91}
TARGETS = {("local", 4): 0.28, ("local", 16): 0.10,  # / E2E, ResNet-110, batch 1024, GLCAN heads, memory split
           ("local_recompute", 4): 0.12, ("local_recompute", 16): 0.065}


@dataclass(frozen=True)
class Setting:
    arch: str
    title: str
    image_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    ks: tuple[int, ...]  # the "one unit per block" K is added from the backbone
    small_input: Optional[bool] = None


def settings(quick: bool) -> list[Setting]:
    cifar = dict(image_shape=(3, 32, 32), num_classes=10, batch_size=1024)
    imagenet = dict(image_shape=(3, 224, 224), num_classes=1000, batch_size=256, small_input=False)
    if quick:
        return [Setting("resnet32", "CIFAR ResNet-32", ks=(4, 16), **cifar),
                Setting("resnet110", "CIFAR ResNet-110", ks=(4, 16), **cifar)]
    ks = (2, 4, 8, 16)
    return [
        Setting("resnet32", "CIFAR ResNet-32", ks=ks, **cifar),
        Setting("resnet110", "CIFAR ResNet-110", ks=ks, **cifar),
        Setting("resnet50", "torchvision ResNet-50", ks=ks, **imagenet),
        Setting("resnet101", "torchvision ResNet-101", ks=ks, **imagenet),
    ]


def optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def module_kwargs(s: Setting) -> dict[str, Any]:
    return dict(backbone=s.arch, image_shape=s.image_shape, num_classes=s.num_classes,
                batch_size=s.batch_size, optimizer=optimizer, small_input=s.small_input)


def rows_of(s: Setting, num_units: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [dict(method="e2e"), dict(method="e2e_recompute")]
    for k in sorted({k for k in s.ks if k <= num_units} | {num_units}):
        for split in ("uniform", "memory"):
            for head in ("linear", "glcan"):
                rows.append(dict(method="local", num_blocks=k, split=split, head=head))
        rows.append(dict(method="local_recompute", num_blocks=k, split="memory", head="glcan"))
    return rows


def setting_key(s: Setting) -> str:
    return f"{s.arch}|b{s.batch_size}|{'x'.join(map(str, s.image_shape))}|c{s.num_classes}|fp32"


def row_key(s: Setting, row: dict[str, Any]) -> str:
    if not row["method"].startswith("local"):
        return f"{setting_key(s)}|{row['method']}"
    return f"{setting_key(s)}|{row['method']}|K{row['num_blocks']}|{row['split']}|{row['head']}"


# ---------------------------------------------------------------------------------------------
# Cache and atomic writes


def load_cache(path: Path, fresh: bool) -> dict[str, Any]:
    if fresh or not path.exists():
        return {"version": CACHE_VERSION, "rows": {}}
    data = json.loads(path.read_text())
    if data.get("version") != CACHE_VERSION:
        print(f"[cache] {path} has version {data.get('version')}, expected {CACHE_VERSION}: ignored", flush=True)
        return {"version": CACHE_VERSION, "rows": {}}
    return data


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Measurement


def measure_row(s: Setting, row: dict[str, Any]) -> dict[str, Any]:
    kwargs = {**module_kwargs(s), **row}
    t0 = time.perf_counter()
    args = plan({**kwargs, "image_shape": tuple(s.image_shape)})
    est = predict(lambda: assemble(args), s.batch_size, s.image_shape, s.num_classes)
    return {**row, "peak_bytes": est.peak_bytes, "parts": est.parts, "boundaries": est.boundaries,
            "num_blocks": est.num_blocks, "peak_block": est.peak_block, "block_peaks": est.block_peaks,
            "seconds": round(time.perf_counter() - t0, 2)}


def measure_unit(s: Setting) -> dict[str, Any]:
    t0 = time.perf_counter()
    with fake_mode():  # one mode for building the units and measuring them (as memory_report does)
        units = list(assemble({**module_kwargs(s), "method": "e2e"}).net.blocks[0])
        index, nbytes = largest_unit_footprint(units, s.image_shape, s.batch_size)
    return {"num_units": len(units), "largest_unit": index, "largest_unit_bytes": nbytes,
            "seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------------------------
# Markdown


def gib(b: float) -> str:
    return f"{b / GiB:.3f}"


def resident(r: dict[str, Any]) -> int:
    return sum(r["parts"].get(c, 0) for c in ("parameters", "optimizer_state", "input"))


def row_label(row: dict[str, Any], num_units: Optional[int]) -> tuple[str, str, str, str]:
    if row["method"] == "e2e":
        return "E2E", "", "", ""
    if row["method"] == "e2e_recompute":
        return "E2E + checkpointing (per unit)", "", "", ""
    k = row["num_blocks"]
    kk = f"{k} (one unit per block)" if k == num_units else str(k)
    return row["method"], kk, row["split"], row["head"]


def section(s: Setting, cache: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The markdown of one backbone, and the keys of its rows not measured yet."""
    meta = cache["rows"].get(setting_key(s) + "|unit")
    out = [f"### {s.title} ({s.arch}), batch {s.batch_size}, input {'x'.join(map(str, s.image_shape))}, "
           f"{s.num_classes} classes", ""]
    missing: list[str] = []
    if meta is None:
        out += ["**Not measured yet** (the backbone's units and floor were not computed).", ""]
        return out, [setting_key(s) + "|unit", f"{setting_key(s)}|* (every row)"]
    n = meta["num_units"]
    plan = rows_of(s, n)
    e2e = cache["rows"].get(row_key(s, {"method": "e2e"}))
    out += [f"{n} units; largest unit: #{meta['largest_unit']}, training footprint "
            f"{gib(meta['largest_unit_bytes'])} GiB.", "",
            "| method | K | split | head | peak GiB | / E2E | / floor | floor GiB | peak block | boundaries |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in plan:
        key = row_key(s, row)
        label = row_label(row, n)
        r = cache["rows"].get(key)
        if r is None:
            missing.append(key)
            out.append(f"| {' | '.join(label)} | **not measured** | | | | | |")
            continue
        floor = resident(r) + meta["largest_unit_bytes"]
        ratio = f"{r['peak_bytes'] / e2e['peak_bytes']:.3f}" if e2e else "n/a"
        local = r["method"].startswith("local")
        pb = "" if not local else str(r["peak_block"])
        bd = "" if not local else "every unit" if r["num_blocks"] == n else str(r["boundaries"])
        out.append(f"| {' | '.join(label)} | {gib(r['peak_bytes'])} | {ratio} | "
                   f"{r['peak_bytes'] / floor:.2f} | {gib(floor)} | {pb} | {bd} |")
    out.append("")
    return out, missing


def targets_section(cache: dict[str, Any]) -> list[str]:
    s = Setting("resnet110", "", (3, 32, 32), 10, 1024, ())
    rows = cache["rows"]
    e2e = rows.get(row_key(s, {"method": "e2e"}))
    ckpt = rows.get(row_key(s, {"method": "e2e_recompute"}))
    out = ["## Targets", "",
           "ResNet-110, CIFAR (3x32x32, 10 classes), batch 1024, fp32, SGD momentum, GLCAN heads (the last block "
           "through the backbone's classifier) + memory split.", "",
           "| target | measured / E2E | GiB | E2E GiB | floor / E2E | status |", "|---|---:|---:|---:|---:|---|"]
    meta = rows.get(setting_key(s) + "|unit")
    for (method, k), goal in TARGETS.items():
        r = rows.get(row_key(s, dict(method=method, num_blocks=k, split="memory", head="glcan")))
        if r is None or e2e is None:
            out.append(f"| {method} K={k}: <= {goal} | **not measured** | | | | unknown |")
            continue
        ratio = r["peak_bytes"] / e2e["peak_bytes"]
        floor = f"{(resident(r) + meta['largest_unit_bytes']) / e2e['peak_bytes']:.3f}" if meta else "n/a"
        status = (f"met ({goal - ratio:.4f} below the target)" if ratio <= goal
                  else f"**missed** by {ratio - goal:.4f} ({ratio / goal:.2f}x the target)")
        out.append(f"| {method} K={k}: <= {goal} | {ratio:.4f} | {gib(r['peak_bytes'])} | {gib(e2e['peak_bytes'])} | "
                   f"{floor} | {status} |")
    if ckpt and e2e:
        out.append(f"| local_recompute K=4: <= half of E2E with checkpointing ({ckpt['peak_bytes'] / e2e['peak_bytes'] / 2:.3f}) "
                   "| see above | | | | |")
    out.append("")
    pub_info = PUBLISHED["infopro_k4_gb"] / PUBLISHED["e2e_gb"]
    pub_ckpt = PUBLISHED["checkpoint_gb"] / PUBLISHED["e2e_gb"]
    ours_ckpt = f"{ckpt['peak_bytes'] / e2e['peak_bytes']:.3f}" if ckpt and e2e else "not measured"
    ours_k4 = rows.get(row_key(s, dict(method="local", num_blocks=4, split="memory", head="glcan")))
    ours_k4 = f"{ours_k4['peak_bytes'] / e2e['peak_bytes']:.3f}" if ours_k4 and e2e else "not measured"
    out += [
        "Published GPU figures for the same setting (InfoPro, Wang et al., ICLR 2021, ResNet-110, batch 1024):",
        "",
        "| | published GPU | ratio to E2E | this predictor, ratio to E2E |",
        "|---|---:|---:|---:|",
        f"| E2E | {PUBLISHED['e2e_gb']:.2f} GB | 1.00 | 1.000 |",
        f"| InfoPro K=4 / glcan local K=4 (GLCAN, memory split) | {PUBLISHED['infopro_k4_gb']:.2f} GB | "
        f"{pub_info:.2f} | {ours_k4} |",
        f"| gradient checkpointing | {PUBLISHED['checkpoint_gb']:.2f} GB | {pub_ckpt:.2f} | {ours_ckpt} |",
        "",
        "These are not like for like. The published numbers were measured on a GPU with their code: they include "
        "the CUDA context, cuDNN workspaces and the caching allocator's rounding and fragmentation (a roughly constant "
        "overhead that pushes every ratio toward 1), their own split, head and checkpointing granularity, and GB "
        "may mean 10^9 bytes. Ours are exact tensor bytes of glcan's own step, in GiB (2^30). Compare ratios, "
        "and expect a real GPU run of glcan to sit somewhat above the predicted ratio "
        "(`glcan/memory/budget.py` adds 512 MiB + 10% for a budget).",
        "",
    ]
    return out


def render(cmd: str, started: str, cfgs: list[Setting],
           cache: dict[str, Any], quick: bool, running: bool, measured_now: int = 0) -> str:
    body: list[str] = []
    missing: list[str] = []
    for s in cfgs:
        lines, miss = section(s, cache)
        body += lines
        missing += miss
    secs = [r.get("seconds", 0.0) for k, r in cache["rows"].items() if not k.endswith("|unit")]
    r110 = [r["seconds"] for k, r in cache["rows"].items() if k.startswith("resnet110|b1024") and "seconds" in r
            and not k.endswith("|unit")]
    head = [
        "# Predicted training memory: E2E vs local learning",
        "",
        f"Generated by `{cmd}` (started {started}, written {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"{measured_now} row(s) measured by this invocation, the rest read from the row cache `memory_rows.json`).",
        "",
        f"Machine: `{platform.platform()}`, {os.cpu_count()} CPUs, torch {torch.__version__}, Python "
        f"{platform.python_version()}. No GPU: FakeTensorMode predictor, exact tensor bytes.",
        "",
    ]
    if missing:
        head += [
            f"> **INCOMPLETE: {len(missing)} item(s) not measured yet"
            + (" (the run is still going, or was stopped)" if running else "") + ".** "
            "Rows marked **not measured** below, and every row of a backbone marked **Not measured yet**, are "
            "missing; nothing shown here is extrapolated. Finish with `" + cmd.replace(" --fresh", "") + "`: it "
            "resumes from `memory_rows.json` next to this file.",
            "",
            "<details><summary>missing rows</summary>", "", *[f"- `{m}`" for m in missing], "", "</details>", "",
        ]
    elif quick:
        head += ["> `--quick` run: ResNet-32 and ResNet-110 only, K in {4, 16} (and one unit per block). "
                 "Run `python bench/memory.py` for the full grid.", ""]
    head += [
        "## What is measured, and how",
        "",
        "- The peak of **tensor bytes** alive at once during a **steady-state training step** (the second of two "
        "steps, so gradients and optimizer state exist), fp32, SGD with momentum (lr 0.1, momentum 0.9), "
        "as `glcan.memory.predictor.predict` measures it: the network, its optimizers and one batch are built "
        "under `FakeTensorMode` (nothing is allocated) and the very step functions training uses run under an exact "
        "tensor-storage tracker. The same code on real tensors is the CPU meter the tests check it against.",
        "- A GPU needs more than this: its CUDA context and cuDNN/cuBLAS workspaces, and the caching allocator's "
        "rounding and fragmentation (see `glcan/memory/budget.py`, which adds 512 MiB + 10%).",
        "- **E2E + checkpointing**: end-to-end backprop with per-unit activation checkpointing (the last unit "
        "is not recomputed: its backward comes first).",
        "- **local**: the network split into K blocks, blocks 1..K-1 each trained by its own auxiliary head "
        "(`linear` or `glcan`), the last through the backbone's own classifier (the deployed network is E2E's); "
        "`uniform` splits give each block the same number of units, `memory` splits balance the predicted "
        "per-block peak (computed at the same batch size as predicted).",
        "- **local_recompute**: local learning with per-unit checkpointing inside every block (memory split "
        "balanced for it): between local learning and checkpointing, less memory than either, at "
        "checkpointing's recomputation cost.",
        "- **/ floor**: the row's peak over its floor = the row's resident bytes (parameters, incl. heads, + "
        "optimizer state + input batch) + the training footprint (input, activations, parameter gradients; no "
        "head) of the largest single unit. No split can go below the floor; 1.00 would be a perfect split.",
        "- **peak block**: the block whose step sets the local peak; **boundaries**: unit indices where blocks start.",
        "- GiB = 2^30 bytes.",
        "",
    ]
    if secs:
        head += [f"Prediction time on this machine (shared, busy): {len(secs)} rows, mean {sum(secs) / len(secs):.1f} s, "
                 f"max {max(secs):.1f} s" + (f"; ResNet-110 batch 1024 mean {sum(r110) / len(r110):.1f} s" if r110 else "")
                 + ".", ""]
    head += targets_section(cache)
    head += ["## Super-resolution (EDSR)", "",
             "EDSR-baseline x2 (batch 16, 96x96 and 192x192 HR patches) and x4, E2E vs local learning at K=4 and "
             "K=8 with SR heads: [memory_sr.md](memory_sr.md), generated by `python bench/sr_memory.py`.", ""]
    return "\n".join(head + ["## Results", ""] + body)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-32 and ResNet-110 only, K in {4, 16}")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "memory.md")
    p.add_argument("--fresh", action="store_true", help="ignore the row cache (it is still rewritten)")
    args = p.parse_args(argv)
    cmd = "python bench/memory.py" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    cache_path = args.out.parent / "memory_rows.json"
    cache = load_cache(cache_path, args.fresh)
    cfgs = settings(args.quick)

    def write(running: bool) -> None:
        save_cache(cache_path, cache)
        write_text(args.out, render(cmd, started, cfgs, cache, args.quick, running, measured_now) + "\n")

    t_all = time.perf_counter()
    measured_now = 0
    for s in cfgs:
        ukey = setting_key(s) + "|unit"
        if ukey not in cache["rows"]:
            print(f"[{s.arch}] units and floor ...", flush=True)
            cache["rows"][ukey] = measure_unit(s)
            write(True)
        meta = cache["rows"][ukey]
        plan = rows_of(s, meta["num_units"])
        print(f"[{s.arch}] {meta['num_units']} units, largest unit #{meta['largest_unit']} "
              f"{gib(meta['largest_unit_bytes'])} GiB ({meta['seconds']} s)", flush=True)
        total = len(plan)
        for i, row in enumerate(plan, 1):
            key = row_key(s, row)
            if key in cache["rows"]:
                r = cache["rows"][key]
                print(f"[{s.arch} {i}/{total}] {key}: cached {gib(r['peak_bytes'])} GiB", flush=True)
                continue
            r = measure_row(s, row)
            measured_now += 1
            cache["rows"][key] = r
            print(f"[{s.arch} {i}/{total}] {key}: {gib(r['peak_bytes'])} GiB in {r['seconds']} s", flush=True)
            write(True)
    write(False)
    print(f"done in {time.perf_counter() - t_all:.0f} s -> {args.out} (rows cached in {cache_path})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
