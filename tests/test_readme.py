"""Every Python block of the README and of the documentation pages (docs/*.md) runs as written (in a directory
where `runs/digits` was trained by the README's own command, shortened); a line commented as refused must raise the
typed error it names. The tutorials (docs/tutorials) are executed by `make docs`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import bayesvae as bv
from bayesvae.cli import main

ROOT = Path(__file__).resolve().parents[1]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


BLOCKS = [(page, i) for page in PAGES for i in range(len(_blocks(page.read_text())))]


def test_the_readme_has_python_blocks():
    assert _blocks((ROOT / "README.md").read_text())


@pytest.mark.parametrize(("page", "index"), BLOCKS, ids=[f"{p.name}-{i}" for p, i in BLOCKS])
def test_readme_python_block_runs_as_written(page, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "digits", "--epochs", "2", "--out", "runs/digits", "--report-samples", "0"]) == 0
    code = _blocks(page.read_text())[index]
    lines = code.splitlines()
    refused = [i for i, line in enumerate(lines) if "# refused: " in line]
    namespace: dict = {}
    start = 0
    for i in refused:  # run up to a refused line, check that line raises what its comment names, go on
        exec(compile("\n".join(lines[start:i]), f"{page.name} block {index}", "exec"), namespace)  # noqa: S102
        error = getattr(bv, re.search(r"# refused: (\w+)", lines[i]).group(1))
        with pytest.raises(error):
            exec(compile(lines[i], f"{page.name} block {index}, line {i + 1}", "exec"), namespace)  # noqa: S102
        start = i + 1
    exec(compile("\n".join(lines[start:]), f"{page.name} block {index}", "exec"), namespace)  # noqa: S102
    assert os.getcwd() == str(tmp_path)


def test_the_readme_stays_a_front_door():
    """Issue 20: the README is about 8,000 characters and points at the site; the rest lives in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 9800, f"README.md has {len(text)} characters; move the detail to a docs page"
    assert "(docs/index.md)" in text and "make docs" in text
