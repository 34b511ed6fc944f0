"""Check the whole comparison with the fit parser before anything trains.

``GLCanCLI`` is built with instantiation and the subcommand turned off, so parsing a full
argument list costs a fraction of a second: the pass-through options once, then every grid
value on its own. An unknown key or a value of the wrong type becomes one ``CompareError``
line. What only instantiation can reveal (say K larger than the network has units) surfaces
as that run's failure.
"""

from __future__ import annotations

import argparse
from typing import Any

from glcan.cli import GLCanCLI
from glcan.compare.grid import CompareError, Options


class _ParseOnly(GLCanCLI):
    """Parses like ``train.py fit`` and stops there."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse_fit(args: list[str]) -> Any:
    """The resolved ``fit`` config for ``args``; raises ``argparse.ArgumentError`` (or ``SystemExit``)."""
    cli = _ParseOnly(args=["fit", *args], parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}})
    return cli.config.fit


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Parser key") and len(lines) > 1:
        return f"{lines[0].split(':')[0][len('Parser key '):].strip(chr(34))}: {lines[1]}"
    return lines[0]


def _try(args: list[str]) -> tuple[Any, str]:
    try:
        return parse_fit(args), ""
    except (argparse.ArgumentError, ValueError, TypeError, KeyError) as e:
        return None, _reason(e)
    except SystemExit as e:  # a parser that exits anyway (e.g. an unreadable --config)
        return None, f"fit options rejected (exit {e.code})"


def check(opts: Options) -> Any:
    """Validate the pass-through options and every grid value; return the base config."""
    base, why = _try(opts.fixed)
    if base is None:
        raise CompareError(f"bad fit option: {why}")
    for key, values in opts.grid:
        spec = f"{key}={','.join(values)}"
        for value in values:
            cfg, why = _try([*opts.fixed, f"--{key}", value])
            if cfg is None:
                if "unrecognized arguments" in why:
                    raise CompareError(f"--grid '{spec}': unknown key '{key}' (python train.py fit --help lists them)")
                raise CompareError(f"--grid '{spec}': bad value '{value}': {why}")
    return base


def base_values(cfg: Any) -> dict[str, Any]:
    """What a point that leaves them unset gets: method, K, aux, and the W&B options."""
    return {
        "model.method": cfg.model.method,
        "model.num_blocks": cfg.model.num_blocks,
        "model.aux": cfg.model.aux,
        "logger": cfg.get("logger"),
        "data.name": cfg.data.name,
    }
