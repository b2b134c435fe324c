"""Issue 12, first contact: what a new user met on a fresh install. One test per finding (each fails on the code
before the fix); the fault campaign is in test_campaign.py."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

from bayesvae import checkpoint as ckpt
from bayesvae import plots
from bayesvae.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]
QUICK_REPORT = ["--samples", "5", "--max-examples", "20"]


def _train(out: Path, *extra: str, epochs: int = 1) -> None:
    assert main(["train", "--data", "digits", "--epochs", str(epochs), *SMALL, "--report-samples", "0",
                 "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def run1(tmp_path_factory) -> Path:
    """A 1-epoch digits run (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("fc") / "run"
    _train(out)
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ------------------------------------------------------------------------------ 1. a plain install is the whole tool
def _imported_distributions() -> set[str]:
    """Top-level third-party modules the package imports anywhere (also inside functions)."""
    names = set()
    for path in (ROOT / "src" / "bayesvae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "bayesvae"}


def test_a_plain_install_declares_every_module_the_tool_imports():
    """`pip install bayesvae` alone gives every picture and report section: each third-party module the package
    imports is a dependency, not an extra (matplotlib was an extra, so a plain install's report had 8 failed
    sections). tensorboard is imported only through torch and refused with a message when its extra is absent."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, flags=re.S | re.M).group(1)
    declared = {re.split(r"[<>=!~ \[]", d.strip().strip('",'))[0].lower() for d in deps.split("\n") if d.strip()}
    dist = {"PIL": "pillow", "sklearn": "scikit-learn"}
    needed = {dist.get(m, m).lower() for m in _imported_distributions()}
    assert "matplotlib" in needed
    assert needed <= declared, f"imported but not dependencies: {sorted(needed - declared)}"


def _break_manifold(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("manifold exploded on purpose\nsecond line of the message")
    monkeypatch.setitem(plots.KINDS, "manifold", broken)


def test_a_failed_report_section_is_one_line_and_report_exits_nonzero(run1, tmp_path, monkeypatch, capsys):
    run = _copy(run1, tmp_path)
    _break_manifold(monkeypatch)
    assert main(["report", str(run), *QUICK_REPORT]) == 1
    err = capsys.readouterr().err
    assert "1 failed section(s): Manifold" in err and "Traceback" not in err
    text = (run / "report.html").read_text()
    section = re.search(r'<section id="manifold">(.*?)</section>', text, flags=re.S).group(1)
    assert "RuntimeError: manifold exploded on purpose" in section
    assert "second line" not in section and "traceback" not in section.lower() and "<pre>" not in section


def test_a_worse_report_never_silently_replaces_a_good_one(run1, tmp_path, monkeypatch, capsys):
    run = _copy(run1, tmp_path)
    assert main(["report", str(run), *QUICK_REPORT]) == 0
    good = hashlib.sha256((run / "report.html").read_bytes()).hexdigest()
    _break_manifold(monkeypatch)
    assert main(["report", str(run), *QUICK_REPORT]) == 1
    err = capsys.readouterr().err
    assert hashlib.sha256((run / "report.html").read_bytes()).hexdigest() == good
    assert (run / "report.failed.html").is_file()
    assert "report.failed.html with 1 failed section(s)" in err and "was kept" in err


def test_training_says_how_many_report_sections_failed(tmp_path, monkeypatch, capsys):
    _break_manifold(monkeypatch)
    assert main(["train", "--data", "digits", "--epochs", "1", *SMALL, "--report-samples", "5",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"report: \S+report\.html with 1 failed section\(s\): Manifold", err), err
