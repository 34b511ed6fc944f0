"""The packages import one way (docs/architecture.md): every import of a glcan package, late ones
inside functions included, goes to a package below it, and nothing imports the command layer."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# Each package and the packages it may import (the order of docs/architecture.md, top down).
BELOW: dict[str, set[str]] = {
    "cli": {"compare", "parallel", "lit", "memory", "core", "heads", "backbones", "data", "registry", "io"},
    "compare": {"lit", "memory", "core", "heads", "backbones", "registry", "io"},
    "parallel": {"lit", "memory", "core", "heads", "backbones", "data", "registry", "io"},
    "lit": {"memory", "core", "heads", "backbones", "data", "registry", "io"},
    "memory": {"core", "heads", "backbones", "registry", "io"},
    "core": {"heads", "backbones", "registry", "io"},
    "data": {"io"},
    "heads": {"backbones", "registry"},  # detection heads train through the detector's own loss
    "backbones": {"registry"},
    "registry": set(),
    "io": set(),
}


def _imports() -> dict[str, dict[str, list[str]]]:
    """package -> {imported glcan package: [file:line, ...]}, from every import statement."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in sorted((ROOT / "glcan").rglob("*.py")):
        rel = path.relative_to(ROOT / "glcan")
        src = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "glcan"
        if src == "glcan":
            continue  # the package's face re-exports
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "glcan" and len(parts) > 1 and parts[1] != src:
                    found.setdefault(src, {}).setdefault(parts[1], []).append(f"{rel}:{node.lineno}")
    return found


def test_every_package_imports_only_packages_below_it():
    wrong = [f"{src} imports {dst} ({', '.join(where)})" for src, targets in _imports().items()
             for dst, where in targets.items() if dst not in BELOW.get(src, set())]
    assert not wrong, "\n".join(wrong)
    assert set(BELOW) >= {p.name.removesuffix(".py") for p in (ROOT / "glcan").iterdir()
                          if p.name not in ("__init__.py", "__pycache__")}  # every package is placed


def test_nothing_imports_the_command_layer():
    assert not [src for src, targets in _imports().items() if "cli" in targets and src != "cli"]
