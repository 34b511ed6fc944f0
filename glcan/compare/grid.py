"""A comparison's grid and the runs it expands to.

The command line (glcan.cli.compare) gives :class:`Options`: ``--grid`` keys and values, the
seeds, the output folder, and the fit options passed to every run. :func:`expand` makes the
cross product; points whose method is not ``local`` ignore the local-only keys
(``STRUCTURAL``) and are kept once per seed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from glcan.core.build import is_local

STRUCTURAL = ("model.num_blocks", "model.head", "model.split", "model.head_kwargs", "model.block_lr_scale",
              "model.last_head")


class CompareError(ValueError):
    """Bad compare input: the command line prints it as one ``error: ...`` line (exit 2)."""


@dataclass
class Options:
    grid: list[tuple[str, list[str]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Optional[str] = None
    name: Optional[str] = None
    baseline: Optional[str] = None  # "key=value": the row every other row is also paired with
    shard: Optional[tuple[int, int]] = None  # (i, n): train only the points j with j % n == i
    report_only: bool = False  # train nothing: the report from the runs on disk
    fixed: list[str] = field(default_factory=list)  # passed through to every run


@dataclass
class Point:
    """One run: ``overrides`` (grid key -> value) at one seed."""

    run_id: str
    seed: int
    overrides: dict[str, str]
    method: str
    num_blocks: Optional[Union[int, str]]
    head: Optional[str]
    extras: dict[str, str]  # grid keys other than method/num_blocks/head (E2E reference is matched on these)

    @property
    def config_id(self) -> str:
        """The run id without its seed: the row of the table it belongs to."""
        return self.run_id.rsplit("_s", 1)[0]

    def args(self) -> list[str]:
        return [a for k, v in self.overrides.items() for a in (f"--{k}", v)]


@dataclass
class Plan:
    points: list[Point]
    grid: list[tuple[str, list[str]]]
    seeds: list[int]


def split_values(text: str) -> list[str]:
    """``a,[1,2],b`` -> ``['a', '[1,2]', 'b']`` (commas inside brackets or braces stay)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


RESERVED_KEYS = {  # keys compare sets itself -> what to use instead
    "seed_everything": "--seeds N or --seed_list",
    "run_dir": "--out DIR",
    "logger.group": "--name NAME",
    "config": "--config (passed to every run)",
    "ckpt_path": "nothing: an interrupted comparison resumes its runs by itself",
}


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """``model.num_blocks=2,4,8`` -> ``("model.num_blocks", ["2", "4", "8"])`` (one ``--grid``)."""
    bad = CompareError(f"--grid '{spec}' needs key=v1,v2 (e.g. --grid model.num_blocks=2,4,8)")
    key, eq, rest = spec.partition("=")
    key = key.strip().removeprefix("--")
    if not eq or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", key):
        raise bad
    values = split_values(rest)
    if not values or any(v == "" for v in values):
        raise bad
    if key in RESERVED_KEYS:
        raise CompareError(f"--grid '{spec}': {key} is set by compare; use {RESERVED_KEYS[key]}")
    if len(set(values)) != len(values):
        raise CompareError(f"--grid '{spec}': a value is repeated")
    return key, values


def parse_shard(spec: str) -> tuple[int, int]:
    """``i/n`` (0 <= i < n, e.g. a Slurm array index): this process trains every n-th point."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise CompareError(f"--shard '{spec}' needs i/n with 0 <= i < n (e.g. --shard 0/4; a Slurm array: "
                           "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(m.group(1)), int(m.group(2))


def make_options(grid: list[str], seeds: Optional[int] = None, seed_list: Optional[str] = None,
                 out: Optional[str] = None, name: Optional[str] = None, baseline: Optional[str] = None,
                 shard: Optional[str] = None, report_only: bool = False, fixed: Optional[list[str]] = None) -> Options:
    """compare's options, checked: ``grid`` as ``KEY=V1,V2`` specs, ``seeds`` a count or
    ``seed_list`` the seeds themselves, ``shard`` as ``i/n``, ``fixed`` (the options every run
    is given) without what compare sets itself; bad ones raise CompareError."""
    opts = Options(out=out, name=name, baseline=baseline, fixed=list(fixed or []),
                   shard=parse_shard(shard) if shard else None, report_only=report_only)
    for flag, hint in RESERVED_KEYS.items():  # among the options every run is given
        if flag != "config" and any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in opts.fixed):
            raise CompareError(f"--{flag} is set by compare for every run; use {hint}")
    for spec in grid:
        key, values = parse_grid(spec)
        if any(k == key for k, _ in opts.grid):
            raise CompareError(f"--grid '{spec}': {key} is already in the grid")
        opts.grid.append((key, values))
    if seeds is not None and seed_list is not None:
        raise CompareError("--seeds and --seed_list both given; use one")
    if seeds is not None:
        if seeds < 1:
            raise CompareError(f"--seeds needs a positive count (seeds 0..N-1), got {seeds}")
        opts.seeds = list(range(seeds))
    elif seed_list is not None:
        try:
            opts.seeds = [int(s) for s in split_values(str(seed_list).strip("[]"))]
        except ValueError:
            raise CompareError(f"--seed_list needs integers, got '{seed_list}'") from None
        if len(set(opts.seeds)) != len(opts.seeds):
            raise CompareError(f"--seed_list '{seed_list}' repeats a seed")
    if name is not None and not re.fullmatch(r"[\w.+-]+", name):
        raise CompareError(f"--name '{name}' may only use letters, digits and . _ + -")
    if baseline is not None:
        key, _, value = baseline.partition("=")
        if value not in dict(opts.grid).get(key, []):
            raise CompareError(f"--baseline '{baseline}' must be key=value of a --grid key and one of its values")
    return opts


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", value).strip("-") or "x"


def expand(opts: Options, base: dict[str, Any]) -> Plan:
    """The cross product of the grid, E2E points deduplicated, each at every seed (seed-major).

    ``base`` holds the resolved ``model.method``, ``model.num_blocks`` and ``model.head`` of the
    base config and pass-through options (a point that does not set them uses those).
    """
    keys = [k for k, _ in opts.grid]
    shorts = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(shorts.values())) != len(shorts):
        shorts = {k: k.replace(".", "-") for k in keys}
    configs: list[tuple[dict[str, str], str, Optional[int], Optional[str], dict[str, str]]] = []
    seen: set[tuple] = set()
    for combo in itertools.product(*[v for _, v in opts.grid]):
        over = dict(zip(keys, combo))
        method = over.get("model.method", str(base["model.method"]))
        if not is_local(method):
            over = {k: v for k, v in over.items() if k not in STRUCTURAL}
        ident = tuple(over.items())
        if ident in seen:
            continue
        seen.add(ident)
        k = over.get("model.num_blocks", base["model.num_blocks"]) if is_local(method) else None
        k = int(k) if k not in (None, "auto") else k  # auto: the run plans its own K (local_kauto_...)
        head = over.get("model.head", base["model.head"]) if is_local(method) else None
        extras = {kk: v for kk, v in over.items() if kk not in ("model.method", "model.num_blocks", "model.head")}
        configs.append((over, method, k, head, extras))
    stems = []
    for over, method, k, head, extras in configs:
        stem = f"{method}_k{k}_{_slug(str(head))}" if is_local(method) else _slug(method)
        stems.append(stem + "".join(f"_{shorts[kk]}-{_slug(v)}" for kk, v in extras.items()))
    stems = [f"{s}-{i}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]  # values that slug alike
    points = [Point(f"{stem}_s{seed}", seed, over, method, k, head, extras)
              for seed in opts.seeds for stem, (over, method, k, head, extras) in zip(stems, configs)]
    return Plan(points, opts.grid, opts.seeds)
