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
    names: set[str] = set()
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


# ---------------------------------------------------------------------------------- 2. every flag honoured or refused
def _exit2(argv, capsys, *fragments) -> str:
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _final_tensors(run: Path) -> tuple[dict, dict]:
    tensors, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
    return tensors, state


def test_resume_with_epochs_equals_the_longer_run_bit_for_bit(run1, tmp_path, capsys):
    """`train --resume RUN --epochs 3` after a 1-epoch run ends exactly where a 3-epoch run ends (constant LR):
    every weight, the optimiser's moments and the RNG state, bit for bit; on old main it trained nothing more."""
    resumed = _copy(run1, tmp_path)
    assert main(["train", "--resume", str(resumed), "--epochs", "3", "--report-samples", "0"]) == 0
    assert "done: 3 epochs" in capsys.readouterr().err
    _train(tmp_path / "straight", epochs=3)
    (a, sa), (b, sb) = _final_tensors(resumed), _final_tensors(tmp_path / "straight")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        uint8 = __import__("torch").uint8
        assert a[key].view(-1).view(uint8).equal(b[key].view(-1).view(uint8)), key
    assert sa["trainer"]["global_step"] == sb["trainer"]["global_step"] == 3 * 23
    assert [r["train_loss"] for r in sa["trainer"]["history"]] == [r["train_loss"] for r in sb["trainer"]["history"]]


@pytest.mark.parametrize("flag", [["--lr", "0.01"], ["--latent-dim", "3"], ["--data", "mnist"], ["--hidden", "8"],
                                  ["--seed", "3"], ["--split-seed", "3"], ["--latent", "3"], ["--overwrite"],
                                  ["--objective", "iwae"]])
def test_resume_refuses_every_flag_it_cannot_apply(run1, tmp_path, capsys, flag):
    run = _copy(run1, tmp_path)
    before = {p.name for p in ckpt.list_checkpoints(run)}
    name = {"--latent": "--latent-dim"}.get(flag[0], flag[0])
    _exit2(["train", "--resume", str(run), "--epochs", "2", *flag], capsys, name)
    assert {p.name for p in ckpt.list_checkpoints(run)} == before


def test_resume_applies_max_minutes_patience_and_checkpoint_every(run1, tmp_path, capsys):
    run = _copy(run1, tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--max-minutes", "10", "--patience", "1",
                 "--checkpoint-every", "5", "--report-samples", "0"]) == 0
    err = capsys.readouterr().err
    assert "time budget: 10 more minutes" in err
    _, state = _final_tensors(run)
    tc = state["train_config"]
    assert tc["epochs"] == 2 and tc["early_stopping_patience"] == 1 and tc["checkpoint_every_steps"] == 5
    assert 600 < tc["max_seconds"] < 700


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, capsys):
    """`--epochs-override 2` on a finished 4-epoch run did nothing and exited 0; the alias now says why not."""
    _train(tmp_path / "r", epochs=2)
    _exit2(["train", "--resume", str(tmp_path / "r"), "--epochs-override", "1"], capsys,
           "already trained 2 epochs", "more than 2")


def test_resume_of_a_cosine_run_says_how_the_schedule_changes(tmp_path, capsys):
    _train(tmp_path / "r", "--lr-schedule", "cosine", epochs=1)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--report-samples", "0"]) == 0
    err = capsys.readouterr().err
    assert "cosine" in err and "stretched" in err and "epoch 2 instead of 1" in err


def test_exponential_schedule_decays_with_lr_decay(tmp_path, capsys):
    _exit2(["train", *SMALL, "--lr-schedule", "exponential", "--out", str(tmp_path / "a")], capsys, "--lr-decay")
    _exit2(["train", *SMALL, "--lr-decay", "0.5", "--out", str(tmp_path / "b")], capsys, "--lr-decay", "exponential")
    _train(tmp_path / "c", "--lr-schedule", "exponential", "--lr-decay", "0.5", epochs=3)
    lrs = [json.loads(line)["train_lr"] for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)


def test_conv_with_several_hidden_widths_is_refused(tmp_path, capsys):
    _exit2(["train", "--architecture", "conv", "--hidden", "128", "64", "--out", str(tmp_path / "r")], capsys,
           "--hidden 128 64", "one width")
    assert not (tmp_path / "r").exists()


def test_gaussian_fixed_prints_the_sigma_it_uses(tmp_path, capsys):
    _train(tmp_path / "a", "--likelihood", "gaussian-fixed", epochs=1)
    assert "gaussian-fixed with σ = 1 (the default; set it with --sigma)" in capsys.readouterr().err
    _train(tmp_path / "b", "--likelihood", "gaussian-fixed", "--sigma", "0.2", epochs=1)
    assert "gaussian-fixed with σ = 0.2" in capsys.readouterr().err


@pytest.mark.parametrize("options,fragments", [
    ('{"optimal": "yes"}', ["'optimal'", "true or false", '"yes"']),
    ('{"optimal": 1}', ["'optimal'", "true or false"]),
    ('{"init_sigma": "big"}', ["'init_sigma'", "number"]),
    ('{"sigma": 0.1}', ["'sigma'", "gaussian-fixed"]),
    ("{bad", ["--likelihood-options", "not valid JSON"]),
])
def test_json_options_are_type_checked(tmp_path, capsys, options, fragments):
    _exit2(["train", *SMALL, "--likelihood", "gaussian-shared", "--likelihood-options", options,
            "--out", str(tmp_path / "r")], capsys, *fragments)
    assert not (tmp_path / "r").exists()


def test_flag_messages_say_what_to_do(tmp_path, capsys):
    _exit2(["train", *SMALL, "--sigma", "0.1", "--out", str(tmp_path / "r")], capsys,
           "--sigma has no effect with the default likelihood", "σ of --likelihood gaussian-fixed")
    err = _exit2(["train", *SMALL, "--max-minutes", "-1", "--out", str(tmp_path / "r")], capsys, "--max-minutes")
    assert "max_seconds" not in err and "-60" not in err
    _exit2(["train", *SMALL, "--lr", "-1", "--out", str(tmp_path / "r")], capsys, "--lr must be")
    assert not (tmp_path / "r").exists()


def test_data_dir_is_refused_where_it_has_no_effect(run1, tmp_path, capsys):
    _exit2(["train", *SMALL, "--data", "digits", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")], capsys,
           "--data-dir")
    _exit2(["export", str(run1), "--data-dir", str(tmp_path), "--out", str(tmp_path / "e")], capsys, "--data-dir")
    _exit2(["sample", str(run1), "--data-dir", str(tmp_path), "--out", str(tmp_path / "s.png")], capsys, "--data-dir")
    _exit2(["report", str(run1), "--data-dir", str(tmp_path)], capsys, "--data-dir has no effect")
    _exit2(["evaluate", str(run1), "--data-dir", str(tmp_path)], capsys, "--data-dir has no effect")
    _exit2(["score", str(run1), "--data", str(tmp_path / "x.npy"), "--data-dir", str(tmp_path), "--out",
            str(tmp_path / "s.csv")], capsys, "--data-dir")
    assert not any((tmp_path / n).exists() for n in ("r", "e", "s.png", "s.csv"))


def test_score_new_mnist_data_reads_data_dir(run1, tmp_path, capsys):
    """`score --data mnist --data-dir DIR` used to ignore DIR; an empty DIR now fails naming it."""
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    err = _exit2(["score", str(run1), "--data", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "s.csv")],
                 capsys)
    assert str(empty) in err


# ------------------------------------------------------------------------------------------ 3. run directories are safe
def _env() -> dict:
    import os
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_second_writer_is_refused_while_the_first_holds_the_run(run1, tmp_path, capsys):
    """Two `train` into one --out (one with --overwrite) both exited 0 and mixed their files."""
    import os
    import socket
    import subprocess

    run = _copy(run1, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "command": "train"}))
        before = {p.name for p in ckpt.list_checkpoints(run)}
        for argv in (["train", *SMALL, "--overwrite", "--out", str(run)],
                     ["train", "--resume", str(run), "--epochs", "2"],
                     ["report", str(run), *QUICK_REPORT]):
            _exit2(argv, capsys, f"pid {holder.pid}", "being written by another process")
        assert {p.name for p in ckpt.list_checkpoints(run)} == before and (run / "run.json").is_file()
        assert main(["evaluate", str(run), "--samples", "2", "--limit", "5"]) == 0  # readers are welcome
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and is taken over
    assert main(["train", "--resume", str(run), "--epochs", "2", "--report-samples", "0"]) == 0
    assert "stale lock" in capsys.readouterr().err
    assert not (run / ".lock").exists()  # released at the end
    assert os.path.exists(run / "run.json")


def test_outputs_inside_or_equal_to_a_run_are_refused(run1, tmp_path, capsys):
    """`export RUN --out RUN --overwrite` deleted the run's metrics, optimiser state and checkpoints."""
    run = _copy(run1, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    _exit2(["export", str(run), "--out", str(run), "--overwrite"], capsys, "existing training run")
    _exit2(["export", str(run), "--out", str(run / "checkpoints" / "x")], capsys, "inside the run directory")
    _exit2(["train", *SMALL, "--out", str(run / "sub")], capsys, "inside the run directory")
    (tmp_path / "file").write_text("x")
    _exit2(["train", *SMALL, "--out", str(tmp_path / "file")], capsys, "existing file")
    _exit2(["export", str(run), "--out", str(tmp_path / "file")], capsys, "existing file")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    # an export may replace an export
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--overwrite"]) == 0


def test_a_run_works_from_any_directory_and_can_follow_moved_data(tmp_path, capsys, monkeypatch):
    """A run stored its data path relative to where training ran; evaluate/score/report/resume failed from any
    other directory and nothing pointed a run at moved data."""
    import shutil

    import numpy as np

    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    work.mkdir()
    np.save(work / "table.npy", rng.normal(size=(120, 5)).astype(np.float32))
    monkeypatch.chdir(work)
    assert main(["train", "--data", "table.npy", "--epochs", "1", *SMALL, "--report-samples", "0",
                 "--out", "run"]) == 0
    stored = json.loads((work / "run" / "run.json").read_text())["data"]
    assert stored["source"] == str(work / "table.npy") and len(stored["fingerprint"]) == 64
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "work/run", "--samples", "2"]) == 0  # from another directory
    capsys.readouterr()
    shutil.move(work / "table.npy", tmp_path / "moved.npy")
    _exit2(["evaluate", "work/run", "--samples", "2"], capsys, "--data NEW_PATH")
    assert main(["evaluate", "work/run", "--samples", "2", "--data", "moved.npy"]) == 0
    assert "differ" not in capsys.readouterr().err  # same fingerprint: accepted silently
    assert main(["train", "--resume", "work/run", "--epochs", "2", "--data", "moved.npy", "--report-samples", "0"]) == 0
    np.save(tmp_path / "other.npy", rng.normal(size=(120, 5)).astype(np.float32))
    assert main(["evaluate", "work/run", "--samples", "2", "--data", "other.npy"]) == 0
    assert "differ from those the run was trained on" in capsys.readouterr().err
    assert main(["score", "work/run", "--out", "s.csv"] + ["--samples", "2"]) == 2  # data gone: says how to fix
    assert "--data NEW_PATH" in capsys.readouterr().err
    _exit2(["train", "--resume", "work/run", "--epochs", "3", "--data", "other.npy"], capsys, "differ")


def test_the_split_seed_is_separate_from_the_training_seed(tmp_path, capsys):
    """--seed reshuffled the train/valid/test split, so runs with different seeds were tested on different test
    sets; now --split-seed (fixed default 0) decides the split."""
    from bayesvae import runs

    a, b = tmp_path / "a", tmp_path / "b"
    _train(a, "--seed", "1")
    _train(b, "--seed", "2")
    ta, tb = runs.load_run(a).prepared().test, runs.load_run(b).prepared().test
    assert ta.equal(tb)
    _train(tmp_path / "c", "--seed", "1", "--split-seed", "5")
    assert not runs.load_run(tmp_path / "c").prepared().test.equal(ta)
    assert json.loads((a / "run.json").read_text())["data"]["split_seed"] == 0
    help_text = _exit0_help(["train", "--help"], capsys)
    assert "--split-seed" in help_text and "not the data split" in help_text
    assert "--split-seed" in (ROOT / "docs" / "command-line.md").read_text()  # the Seeds section of the CLI page


def _exit0_help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_old_runs_without_split_seed_keep_their_split(tmp_path):
    """A run made before --split-seed stored its training seed as the split seed; it still loads that split."""
    from bayesvae import runs

    _train(tmp_path / "r", "--seed", "4", "--split-seed", "4")
    run = runs.load_run(tmp_path / "r")
    state = dict(run.state["data"])
    state.pop("split_seed")
    old_spec = runs._spec_from_state(state)  # what an old run's state holds: seed = its training seed
    assert old_spec.seed == 4 and old_spec.load().fingerprint() == run.state["data"]["fingerprint"]


# ------------------------------------------------------------------------------------------- 4. signals, pipes, errors
def _popen(args: list[str], log: Path):
    import subprocess
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "bayesvae", *args], stdout=subprocess.DEVNULL, stderr=fh,
                                env=_env())


def _wait_for(log: Path, text: str, proc, timeout: float = 90) -> None:
    import time
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def _temp_entries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".tmp-*")]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_signals_are_honoured_in_every_phase(run1, tmp_path):
    """Ctrl-C during the end-of-training report was swallowed (exit 0 twelve seconds later); SIGTERM and SIGINT
    now stop the report, evaluation and training's report at once, leaving no partial output."""
    import signal

    train_run, report_run = tmp_path / "t", _copy(run1, tmp_path)
    procs = {
        "train-report": (_popen(["train", "--epochs", "1", *SMALL, "--report-samples", "200000", "--out",
                                 str(train_run)], tmp_path / "a.log"), tmp_path / "a.log", signal.SIGINT, "epoch 1/1"),
        "report": (_popen(["report", str(report_run), "--samples", "200000"], tmp_path / "b.log"), tmp_path / "b.log",
                   signal.SIGTERM, None),
        "evaluate": (_popen(["evaluate", str(run1), "--samples", "200000"], tmp_path / "c.log"), tmp_path / "c.log",
                     signal.SIGINT, None),
    }
    import time
    try:
        for proc, log, _sig, marker in procs.values():
            if marker:
                _wait_for(log, marker, proc)
        time.sleep(4.0)  # all three are inside their long phase now (evaluation: K = 200,000)
        for name, (proc, log, sig, _marker) in procs.items():
            assert proc.poll() is None, (name, log.read_text())
            proc.send_signal(sig)
        codes = {name: p.wait(30) for name, (p, *_rest) in procs.items()}
    finally:
        for p, *_rest in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == {"train-report": 130, "report": 143, "evaluate": 130}
    for name, (_, log, _, _) in procs.items():
        text = log.read_text()
        assert "Traceback" not in text and "no partial output" in text, (name, text)
    assert not (train_run / "report.html").exists() and not (report_run / "report.html").exists()
    assert _temp_entries(train_run) == [] and _temp_entries(report_run) == []
    assert not (train_run / ".lock").exists() and not (report_run / ".lock").exists()
    ckpt.verify_checkpoint(ckpt.resolve_checkpoint(train_run, "last"))


def test_a_closed_stdout_ends_quietly(run1, tmp_path):
    import subprocess
    proc = subprocess.run(f"{sys.executable} -m bayesvae evaluate {run1} --samples 2 --json | head -c 1",
                          shell=True, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.stdout == "{", proc.stderr
    for noise in ("Traceback", "BrokenPipe", "Broken pipe", "Exception ignored", "error"):
        assert noise not in proc.stderr, proc.stderr


def test_clean_errors_instead_of_tracebacks(tmp_path, capsys):
    import numpy as np

    one = tmp_path / "one"
    _train(one, "--test-fraction", "0.0005")  # a 1-example test split
    _exit2(["plot", str(one), "latent", "--out", str(tmp_path / "l.png")], capsys, "at least 2 test examples",
           "--split train")
    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).integers(0, 256, (60, 1, 3, 3)).astype(np.uint8))
    _exit2(["train", "--data", str(tmp_path / "tiny.npy"), "--architecture", "conv", "--out", str(tmp_path / "c")],
           capsys, "4x4 px", "3x3", "--architecture mlp")
    assert not (tmp_path / "c").exists() and not (tmp_path / "l.png").exists()


def test_messages_say_what_to_do(run1, tmp_path, capsys, monkeypatch):
    (tmp_path / "notarun").mkdir()
    _exit2(["evaluate", str(tmp_path / "notarun")], capsys, "not a run directory")
    run = _copy(run1, tmp_path)
    (run / "checkpoints" / "best").unlink()  # killed before the pointer was written: the lowest recorded loss
    assert main(["evaluate", str(run), "--samples", "5"]) == 0
    err = capsys.readouterr().err
    assert "no 'best' pointer" in err and "lowest recorded validation loss" in err and "Traceback" not in err

    # a signal before the first step: nothing to resume, and both messages say so
    from bayesvae import cli

    def stop_now(*args):
        raise cli.Terminated()
    monkeypatch.setattr(cli, "_on_ready", stop_now)
    assert main(["train", *SMALL, "--out", str(tmp_path / "early")]) == 143
    assert "nothing to resume" in capsys.readouterr().err
    monkeypatch.undo()
    _exit2(["train", "--resume", str(tmp_path / "early")], capsys, "no checkpoint", "nothing to resume", "--overwrite")


@pytest.mark.parametrize("how", [["-m", "bayesvae"], ["-c", "import sys; from bayesvae.cli import main; "
                                                           "sys.exit(main())"]])
def test_version(how):
    import subprocess

    import torch

    import bayesvae
    proc = subprocess.run([sys.executable, *how, "--version"], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"bayesvae {bayesvae.__version__}" in proc.stdout and f"torch {torch.__version__}" in proc.stdout


def test_a_lost_rank_is_one_line_with_the_checkpoint_to_resume(run1, tmp_path, capsys, monkeypatch):
    """Under torchrun, a survivor whose peer was SIGKILLed used to print a ~40-line gloo traceback."""
    from bayesvae import cli

    def peer_gone(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:29500\nmore lines of the traceback")
    monkeypatch.setattr(cli, "cmd_train", peer_gone)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run = _copy(run1, tmp_path)
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "lost contact with another process" in err and "--resume" in err and "step-" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_a_failed_overwrite_keeps_the_old_run(run1, tmp_path, capsys):
    """`train --overwrite` that failed before its first checkpoint used to leave only run.json: the old run was
    deleted first. Now it is set aside and put back; a replacement that commits a checkpoint replaces it."""
    run = _copy(run1, tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", *SMALL, "--epochs", "1", "--lr", "1e30", "--out", str(run), "--overwrite"]) == 2
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert main(["evaluate", str(run), "--samples", "3"]) == 0
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--overwrite", "--report-samples", "0"]) == 0
    assert not (run / ".replaced").exists() and len(ckpt.list_checkpoints(run)) == 1


def test_a_run_without_a_test_split_gets_a_whole_report(tmp_path, capsys):
    """`--test-fraction 0` used to give a report with 5 failed sections whose advice could not be followed."""
    from bayesvae.report import report_failures

    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--test-fraction", "0", "--report-samples", "5",
                 "--out", str(run)]) == 0
    assert not report_failures(run / "report.html")
    text = (run / "report.html").read_text()
    assert "no test split" in text and "optimistic" in text


def test_the_latent_title_fits_in_the_picture(run1):
    """The title used to be clipped at the left ("atent space") next to the legend."""
    fig = plots.plot(str(run1), "latent")
    fig.canvas.draw()
    ax = fig.axes[0]
    box, frame = ax.title.get_window_extent(), fig.bbox
    assert box.x0 >= frame.x0 - 0.5 and box.x1 <= frame.x1 + 0.5
