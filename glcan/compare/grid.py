"""The compare command line and the grid it expands to.

``compare [--config BASE.yaml] --grid model.method=e2e,local --grid model.num_blocks=2,4
[--seeds N | --seed_list 0,3] [--out DIR] [--name NAME] [any fit option ...]``

Our own flags are taken out; everything else (``--config`` included, in order) is passed to
every run. A ``--grid`` value may hold brackets (``model.split=uniform,[3,6]``): commas inside
``[...]`` do not split. Points whose method is not ``local`` ignore the local-only keys
(``STRUCTURAL``) and are kept once per seed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Optional

STRUCTURAL = ("model.num_blocks", "model.aux", "model.split", "model.aux_kwargs", "model.block_lr_scale")
RESERVED = {  # keys compare sets itself -> what to use instead
    "seed_everything": "--seeds N or --seed_list",
    "run_dir": "--out DIR",
    "logger.group": "--name NAME",
    "config": "--config (passed to every run)",
}
OWN_FLAGS = ("--grid", "--seeds", "--seed_list", "--out", "--name")


class CompareError(ValueError):
    """Bad compare input: ``glcan.entry`` prints it as one ``error: ...`` line (exit 2)."""


@dataclass
class Options:
    grid: list[tuple[str, list[str]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Optional[str] = None
    name: Optional[str] = None
    fixed: list[str] = field(default_factory=list)  # passed through to every run
    help: bool = False


@dataclass
class Point:
    """One run: ``overrides`` (grid key -> value) at one seed."""

    run_id: str
    seed: int
    overrides: dict[str, str]
    method: str
    num_blocks: Optional[int]
    aux: Optional[str]
    extras: dict[str, str]  # grid keys other than method/num_blocks/aux (E2E reference is matched on these)

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


def parse_grid(spec: str) -> tuple[str, list[str]]:
    bad = CompareError(f"--grid '{spec}' needs key=v1,v2 (e.g. --grid model.num_blocks=2,4,8)")
    key, eq, rest = spec.partition("=")
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    if not eq or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", key):
        raise bad
    values = split_values(rest)
    if not values or any(v == "" for v in values):
        raise bad
    if key in RESERVED:
        raise CompareError(f"--grid '{spec}': {key} is set by compare; use {RESERVED[key]}")
    if len(set(values)) != len(values):
        raise CompareError(f"--grid '{spec}': a value is repeated")
    return key, values


def _int_list(flag: str, text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_values(text.strip("[]"))]
    except ValueError:
        raise CompareError(f"{flag} needs integers, got '{text}'") from None
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"{flag} '{text}' repeats a seed")
    return seeds


def parse_args(argv: list[str]) -> Options:
    """Split ``argv`` into compare's own flags and the fit options passed to every run."""
    opts, i, seeds_from = Options(), 0, None
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if arg in ("-h", "--help"):
            opts.help = True
            i += 1
            continue
        if flag in OWN_FLAGS or flag in ("--seed_everything", "--run_dir", "--logger.group"):
            if eq:
                value, i = inline, i + 1
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 2
            else:
                raise CompareError(f"{flag} needs a value")
            if flag == "--grid":
                key, values = parse_grid(value)
                if any(k == key for k, _ in opts.grid):
                    raise CompareError(f"--grid '{value}': {key} is already in the grid")
                opts.grid.append((key, values))
            elif flag == "--seeds":
                if not value.isdigit() or int(value) < 1:
                    raise CompareError(f"--seeds needs a positive count (seeds 0..N-1), got '{value}'")
                if seeds_from not in (None, "--seed_everything"):
                    raise CompareError(f"--seeds and {seeds_from} both given; use one")
                opts.seeds, seeds_from = list(range(int(value))), flag
            elif flag in ("--seed_list", "--seed_everything"):
                if seeds_from not in (None, "--seed_everything"):
                    raise CompareError(f"{flag} and {seeds_from} both given; use one")
                if flag == "--seed_list" or seeds_from is None:
                    opts.seeds, seeds_from = _int_list(flag, value), flag
            elif flag == "--out":
                opts.out = value
            elif flag == "--name":
                if not re.fullmatch(r"[\w.+-]+", value):
                    raise CompareError(f"--name '{value}' may only use letters, digits and . _ + -")
                opts.name = value
            else:
                raise CompareError(f"{flag} is set by compare for every run; use {RESERVED[flag[2:]]}")
            continue
        opts.fixed.append(arg)
        i += 1
    return opts


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", value).strip("-") or "x"


def expand(opts: Options, base: dict[str, Any]) -> Plan:
    """The cross product of the grid, E2E points deduplicated, each at every seed (seed-major).

    ``base`` holds the resolved ``model.method``, ``model.num_blocks`` and ``model.aux`` of the
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
        if method != "local":
            over = {k: v for k, v in over.items() if k not in STRUCTURAL}
        ident = tuple(over.items())
        if ident in seen:
            continue
        seen.add(ident)
        k = int(over.get("model.num_blocks", base["model.num_blocks"])) if method == "local" else None
        aux = over.get("model.aux", base["model.aux"]) if method == "local" else None
        extras = {kk: v for kk, v in over.items() if kk not in ("model.method", "model.num_blocks", "model.aux")}
        configs.append((over, method, k, aux, extras))
    stems = []
    for over, method, k, aux, extras in configs:
        stem = f"local_k{k}_{_slug(str(aux))}" if method == "local" else _slug(method)
        stems.append(stem + "".join(f"_{shorts[kk]}-{_slug(v)}" for kk, v in extras.items()))
    stems = [f"{s}-{i}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]  # values that slug alike
    points = [Point(f"{stem}_s{seed}", seed, over, method, k, aux, extras)
              for seed in opts.seeds for stem, (over, method, k, aux, extras) in zip(stems, configs)]
    return Plan(points, opts.grid, opts.seeds)
