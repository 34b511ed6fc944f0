"""Every Python example in docs/guide.md runs, in order, as a user would paste it."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT


def python_blocks() -> list[str]:
    text = (ROOT / "docs" / "guide.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_guide_examples_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/guide.md[python block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "chose " in out and " K = " in out and "split:" in out
    assert namespace["auto"].net.num_blocks >= 1
