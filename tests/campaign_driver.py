"""The fault campaign's driver (run as a subprocess by test_campaign.py; prints one JSON object).

It imports bayesvae once and forks a child per command (a command starts in milliseconds instead of seconds), so
dozens of SIGKILLs and injected storage faults fit in the default test run. A child runs ``bayesvae.cli.main``;
the parent kills it at a seeded random moment, or the child arms a *fault point* (the n-th call of a function that
writes, renames or deletes) where it kills itself or raises ENOSPC/EIO. After every kill the parent checks the run
directory: every committed checkpoint verifies, the newest one is not older than before, ``last`` loads.

    python tests/campaign_driver.py kills  --dir D --seed 0 --train-kills 20 --report-kills 6 --export-kills 6
    python tests/campaign_driver.py faults --dir D
    python tests/campaign_driver.py reader --dir D
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)  # before any torch op: forked children must not inherit a thread pool

import matplotlib  # noqa: E402
import sklearn.datasets  # noqa: E402,F401 - imported once here, not in every child
import torch._dynamo  # noqa: E402,F401 - torch.optim imports it on first use

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401

from bayesvae import checkpoint as ckpt  # noqa: E402
from bayesvae import cli, estimators, plots, report, runs  # noqa: E402,F401
from bayesvae.errors import CheckpointError  # noqa: E402

SMALL = ["--hidden", "16", "--latent-dim", "3", "--batch-size", "64"]
TRAIN = ["train", "--data", "digits", "--limit", "200", "--epochs", "3", *SMALL, "--checkpoint-every", "2",
         "--report-samples", "0"]


def train_argv(epochs: int, limit: int = 200) -> list[str]:
    argv = list(TRAIN)
    argv[argv.index("--epochs") + 1] = str(epochs)
    argv[argv.index("--limit") + 1] = str(limit)
    return argv


# ------------------------------------------------------------------------------------------------- fault points
def _arm(point: str | None, nth: int, action: str) -> None:
    """In the child: the ``nth`` call of the function behind ``point`` kills the process (``action="kill"``) or
    raises OSError (``"ENOSPC"``/``"EIO"``); ``point`` may be ``write:NAME`` to hit only writes whose target
    contains NAME (the temp file of an atomic write carries its target's name)."""
    if point is None:
        return
    counter = {"n": 0}

    def hit() -> bool:
        counter["n"] += 1
        return counter["n"] == nth

    def fire(what: str) -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        code = getattr(errno, action)
        raise OSError(code, os.strerror(code), what)

    kind, _, name = point.partition(":")
    if kind in ("write", "fsync"):
        real = getattr(os, kind)

        def wrapped(fd, *args):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if name in os.path.basename(target) and hit():
                if kind == "write" and action == "kill":  # half the bytes reach the disk, then the kill
                    data = args[0]
                    real(fd, bytes(data[: max(1, len(data) // 2)]))
                fire(target)
            return real(fd, *args)
        setattr(os, kind, wrapped)
    elif kind in ("replace", "rename", "link"):
        real = getattr(os, kind)

        def moved(src, dst, *args, **kw):
            if name in os.path.basename(str(dst)) and hit():
                fire(str(dst))
            return real(src, dst, *args, **kw)
        setattr(os, kind, moved)
    elif kind == "rmtree":  # mid-rotation: some files of the old step are gone, then the kill
        real = shutil.rmtree

        def rmtree(path, *args, **kw):
            if hit():
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                if files:
                    files[0].unlink()
                fire(str(path))
            return real(path, *args, **kw)
        shutil.rmtree = rmtree  # type: ignore[assignment]  # the fault injection's monkeypatch
    elif kind == "step":
        from bayesvae.training import Trainer
        real = Trainer.train_step

        def step(self, *args, **kw):
            out = real(self, *args, **kw)  # the update is applied, the counters are not: mid-step
            if hit():
                fire("train_step")
            return out
        Trainer.train_step = step  # type: ignore[method-assign]  # the fault injection's monkeypatch
    elif kind == "png":
        from bayesvae import plots
        real = plots.to_png

        def to_png(*args, **kw):
            if hit():
                fire("report figure")
            return real(*args, **kw)
        plots.to_png = to_png
    elif kind == "open":  # a read-only directory: creating anything below NAME fails (EROFS)
        real = os.open

        def opener(path, flags, *args, **kw):
            if str(path).startswith(name) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, flags, *args, **kw)
        os.open = opener
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kw):
            if str(path).startswith(name):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kw)
        os.mkdir = mkdir
    else:
        raise ValueError(point)


def child(argv: list[str], log: Path, point: str | None = None, nth: int = 1, action: str = "kill",
          kill_after: float | None = None) -> tuple[str, int]:
    """Run ``bayesvae argv`` in a forked child; returns ("exit", code) or ("killed", signal)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 98
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            warnings.simplefilter("default")
            _arm(point, nth, action)
            code = cli.main(list(argv))
        except BaseException:  # noqa: BLE001 - a traceback here is a finding: the parent sees code 99
            import traceback
            traceback.print_exc()
            code = 99
        finally:
            os._exit(code if isinstance(code, int) else 97)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _status(status)
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _status(status)


def _status(status: int) -> tuple[str, int]:
    if os.WIFSIGNALED(status):
        return "killed", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


# ------------------------------------------------------------------------------------------------------ checks
def check_run(run: Path, previous_step: int) -> dict:
    """Every committed checkpoint verifies; the newest is not older than before; ``last`` resolves and loads."""
    committed = ckpt.list_checkpoints(run)
    unreadable = 0
    for step_dir in committed:
        try:
            ckpt.verify_checkpoint(step_dir)
        except CheckpointError:
            unreadable += 1
    newest = int(committed[-1].name.split("-")[1]) if committed else -1
    lost = int(newest < previous_step)
    loads, fallback = True, False
    if committed:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
            except CheckpointError:
                loads = False
        fallback = any("falling back" in str(w.message) for w in caught)
    for name in ("metrics.jsonl", "report.html"):  # never half-written
        path = run / name
        if path.exists():
            text = path.read_text()
            if name == "metrics.jsonl":
                [json.loads(line) for line in text.splitlines()]
            elif not text.rstrip().endswith("</html>"):
                raise AssertionError(f"partial {path}")
    return {"committed": len(committed), "unreadable": unreadable, "newest": newest, "lost": lost, "loads": loads,
            "fallback": fallback}


def tensors_of(run: Path) -> dict[str, str]:
    tensors, _ = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
    return {k: hashlib.sha256(v.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in tensors.items()}


def tree_hash(root: Path) -> dict[str, str]:
    """Hashes of the files of a directory, without the lock and the temp files a killed writer could not remove."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock" and not p.name.startswith(".tmp-")}


# ------------------------------------------------------------------------------------------------------- kills
def kills(root: Path, seed: int, train_kills: int, report_kills: int, export_kills: int) -> dict:
    rng = random.Random(seed)
    log = root / "children.log"
    ref = root / "ref"
    assert child([*TRAIN, "--out", str(ref)], log) == ("exit", 0), log.read_text()[-3000:]
    ref_tensors = tensors_of(ref)
    run = root / "run"
    res: dict[str, Any] = {"kills": 0, "kills_by_point": {}, "unreadable": 0, "lost": 0, "not_loadable": 0,
                           "fallbacks": 0, "restarts": 0, "children": 0, "tracebacks": 0}
    points = [None, None, "write:tensors", "write:state", "write:manifest", "replace:last", "replace:best",
              "rename:step-", "rmtree", "step", "write:metrics", "fsync:tensors"]
    previous, attempts = -1, 0
    while res["kills"] < train_kills and attempts < 20 * train_kills:
        attempts += 1
        fresh = not ckpt.list_checkpoints(run) or _finished(run)
        argv = [*TRAIN, "--out", str(run), "--overwrite"] if fresh else ["train", "--resume", str(run)]
        if fresh:
            res["restarts"] += 1
            previous = -1
        point = rng.choice(points)
        how = (dict(kill_after=rng.uniform(0.02, 0.6)) if point is None else
               dict(point=point, nth=rng.randint(1, 6 if point.startswith(("replace", "rename", "rmtree")) else 12)))
        outcome = child(argv, log, **how)
        res["children"] += 1
        if outcome == ("exit", 99):
            res["tracebacks"] += 1
        if outcome[0] == "killed":
            res["kills"] += 1
            key = point or "random time"
            res["kills_by_point"][key] = res["kills_by_point"].get(key, 0) + 1
        state = check_run(run, previous)
        res["unreadable"] += state["unreadable"]
        res["lost"] += state["lost"]
        res["not_loadable"] += int(state["committed"] > 0 and not state["loads"])
        res["fallbacks"] += int(state["fallback"])
        previous = max(previous, state["newest"])
    # finish: resume to the end without a kill; the result equals the uninterrupted run bit for bit
    if ckpt.list_checkpoints(run) and not _finished(run):
        final = child(["train", "--resume", str(run)], log)
    else:
        final = child([*TRAIN, "--out", str(run), "--overwrite"], log)
    res["final_exit"] = final[1]
    res["final_equals_uninterrupted"] = tensors_of(run) == ref_tensors
    # mid-report and mid-export kills on the finished run
    before = tree_hash(run)
    for kind, count in (("report", report_kills), ("export", export_kills)):
        done, tries = 0, 0
        while done < count and tries < 10 * count:
            tries += 1
            out = root / "export"
            argv = (["report", str(run), "--samples", "3", "--max-examples", "30"] if kind == "report" else
                    ["export", str(run), "--out", str(out), "--overwrite"])
            point = rng.choice(["png", "write:report", "replace:report"] if kind == "report" else
                               ["write:tensors", "write:run.json", "rename:export", "replace:last"])
            outcome = child(argv, log, point=point, nth=rng.randint(1, 3 if kind == "report" else 2))
            res["children"] += 1
            if outcome == ("exit", 99):
                res["tracebacks"] += 1
            if outcome[0] != "killed":
                continue
            done += 1
            res["kills"] += 1
            res["kills_by_point"][f"{kind} {point}"] = res["kills_by_point"].get(f"{kind} {point}", 0) + 1
            if kind == "report":
                check_run(run, previous)  # report.html absent or complete
            elif out.exists():  # an export is there completely or not at all
                ckpt.load_checkpoint(ckpt.resolve_checkpoint(out, "last"))
                res.setdefault("exports_complete", 0)
                res["exports_complete"] += 1
        res[f"{kind}_kills"] = done
    after = tree_hash(run)
    res["run_untouched_by_report_and_export_kills"] = {k: v for k, v in after.items() if k != "report.html"} == {
        k: v for k, v in before.items() if k != "report.html"}
    res["tracebacks_in_log"] = log.read_text().count("Traceback")
    return res


def _finished(run: Path) -> bool:
    _, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
    return state["trainer"]["epoch"] >= state["train_config"]["epochs"]


# ------------------------------------------------------------------------------------------------------ faults
FAULT_TARGETS = [  # (command kind, fault point, what it hits)
    ("resume", "write:tensors", "checkpoint tensors"), ("resume", "write:state", "checkpoint state"),
    ("resume", "write:manifest", "checkpoint manifest"), ("resume", "fsync:tensors", "checkpoint fsync"),
    ("resume", "replace:last", "pointer last"), ("resume", "rename:step-", "checkpoint commit"),
    ("resume", "write:metrics.jsonl", "metrics line"), ("resume", "write:metrics.csv", "metrics csv"),
    ("report", "write:report", "report"), ("report", "replace:report", "report commit"),
    ("export", "write:tensors", "export tensors"), ("export", "write:run.json", "export run.json"),
    ("export", "rename:export", "export commit"),
]


def faults(root: Path) -> dict:
    log = root / "children.log"
    base = root / "base"
    assert child([*train_argv(1), "--out", str(base)], log) == ("exit", 0), log.read_text()[-3000:]
    assert child(["report", str(base), "--samples", "3", "--max-examples", "30"], log) == ("exit", 0)
    res: dict[str, Any] = {"faults": 0, "clean_exits": 0, "named_path": 0, "checkpoint_intact": 0, "resumable": 0,
                           "cases": []}
    for action in ("ENOSPC", "EIO"):
        for index, (kind, point, what) in enumerate(FAULT_TARGETS):
            run = root / f"case-{action}-{index}"  # (a name free of the targets' names)
            shutil.copytree(base, run)
            before = tree_hash(run)
            last = ckpt.resolve_checkpoint(run, "last")
            last_hash = tree_hash(last)
            out = root / f"exported-{action}-{index}"
            argv = {"resume": ["train", "--resume", str(run), "--epochs", "2", "--report-samples", "0"],
                    "report": ["report", str(run), "--samples", "3", "--max-examples", "30"],
                    "export": ["export", str(run), "--out", str(out)]}[kind]
            mark = log.stat().st_size
            outcome = child(argv, log, point=point, nth=1, action=action)
            text = log.read_bytes()[mark:].decode(errors="replace")
            res["faults"] += 1
            reason = os.strerror(getattr(errno, action)).lower()
            clean = outcome[0] == "exit" and outcome[1] == 1 and "Traceback" not in text
            named = reason in text.lower() and str(root) in text
            intact = tree_hash(last) == last_hash
            if intact:
                ckpt.verify_checkpoint(last)  # raises on a damaged checkpoint
            if kind != "resume":  # nothing else in the run changed either
                intact = intact and {k: v for k, v in tree_hash(run).items()} == before
            if kind == "export":
                intact = intact and not out.exists()
            resumed = child(["train", "--resume", str(run), "--epochs", "2", "--report-samples", "0"], log)
            ok_resume = resumed == ("exit", 0) and check_run(run, -1)["loads"]
            if kind == "resume":
                hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                ok_resume = ok_resume and [r["epoch"] for r in hist] == [1, 2]
            res["clean_exits"] += clean
            res["named_path"] += named
            res["checkpoint_intact"] += intact
            res["resumable"] += ok_resume
            res["cases"].append({"action": action, "target": what, "exit": list(outcome), "clean": clean,
                                 "named": named, "intact": intact, "resumable": ok_resume,
                                 "message": text.strip().splitlines()[-1][:300] if text.strip() else ""})
    # a read-only run directory: refused before training starts (EROFS from every create below it)
    ro = root / "readonly"
    shutil.copytree(base, ro)
    before = tree_hash(ro)
    mark = log.stat().st_size
    outcome = child(["train", "--resume", str(ro), "--epochs", "2"], log, point=f"open:{ro}", action="EROFS")
    text = log.read_bytes()[mark:].decode(errors="replace")
    res["readonly_resume"] = {"exit": list(outcome), "message": text.strip()[-300:],
                              "untouched": tree_hash(ro) == before, "before_training": "epoch 2/2" not in text}
    fresh = root / "readonly-new"
    fresh.mkdir()
    mark = log.stat().st_size
    outcome = child([*TRAIN, "--out", str(fresh / "run")], log, point=f"open:{fresh}", action="EROFS")
    text = log.read_bytes()[mark:].decode(errors="replace")
    res["readonly_new"] = {"exit": list(outcome), "message": text.strip()[-300:],
                           "before_training": "epoch 1/" not in text}
    res["faults"] += 2
    return res


# ------------------------------------------------------------------------------------------------------ reader
def reader(root: Path) -> dict:
    """``evaluate``-style reads (resolve ``last`` and load it) in a loop while a child trains and commits a
    checkpoint every step (each commit rotates the previous one away)."""
    log = root / "children.log"
    run = root / "run"
    assert child([*train_argv(1, limit=2000), "--out", str(run)], log) == ("exit", 0)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if child(["train", "--resume", str(run), "--epochs", "3", "--checkpoint-every", "1",
                              "--report-samples", "0"], log) == ("exit", 0) else 1)
    reads, failures, steps = 0, [], set()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = runs.load_run(run, "last")
            reads += 1
            steps.add(loaded.state["trainer"]["global_step"])
        except Exception as err:  # noqa: BLE001 - counted, and the test fails on any
            failures.append(f"{type(err).__name__}: {err}")
        if done:
            break
    return {"reads": reads, "failures": failures[:5], "failed_reads": len(failures), "distinct_steps_seen":
            len(steps), "writer_exit": os.WEXITSTATUS(status)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["kills", "faults", "reader"])
    p.add_argument("--dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-kills", type=int, default=20)
    p.add_argument("--report-kills", type=int, default=6)
    p.add_argument("--export-kills", type=int, default=6)
    a = p.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.mode == "kills":
        res = kills(root, a.seed, a.train_kills, a.report_kills, a.export_kills)
    elif a.mode == "faults":
        res = faults(root)
    else:
        res = reader(root)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
