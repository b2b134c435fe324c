"""Run directories that cannot be lost: one writer at a time, outputs kept out of runs, data that can move.

* :class:`RunLock`: ``RUN/.lock`` names the process (pid, host, command) that writes the run. It appears through
  one ``os.link`` of a complete file, so it is never half-written; a second writer fails with
  :class:`RunLockedError` while the holder lives, and a lock left by a dead process on this host is taken over.
  Re-entrant within a process (``train`` holds it while ``runs.train`` takes it again).
* :func:`enclosing_run`, :func:`check_directory_output`: a directory output (``export --out``, ``train --out``)
  equal to or inside an existing run is refused, as is replacing a training run with an export.
* :func:`relocated_spec` and :func:`compare_fingerprint`: a run stores absolute data paths and the data's
  fingerprint; ``--data``/``--data-dir`` point it at moved data, and the fingerprint says whether they are the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import ConfigError, OutputExistsError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "enclosing_run", "is_run_dir", "check_directory_output",
           "relocated_spec", "compare_fingerprint", "absolute_spec"]

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # resolved run dir -> nesting depth, for this process


class RunLockedError(ConfigError):
    """Another live process writes this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class RunLock:
    """``with RunLock(run_dir): ...`` — exclusive writer of a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, command: str = "train"):
        self.run_dir, self.command = Path(run_dir), command
        self.key = str(self.run_dir.resolve())
        self.path = self.run_dir / LOCK_NAME

    def acquire(self) -> RunLock:
        if _HELD.get(self.key):
            _HELD[self.key] += 1
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        data = json.dumps(me).encode()
        for _ in range(3):
            tmp = self.run_dir / f".tmp-lock-{os.getpid()}-{time.monotonic_ns()}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, self.path)
                    _HELD[self.key] = 1
                    return self
                except FileExistsError:
                    pass
            except OSError as err:
                raise ConfigError(f"cannot lock run directory {self.run_dir}: {err.strerror or err}; "
                                  "choose a writable directory") from None
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            holder = _read_lock(self.path)
            if holder is None or (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                                  and not _alive(holder["pid"])):
                try:  # stale: its process is gone (or the file is not a lock we wrote)
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                print(f"note: removed a stale lock of {self.run_dir} (process "
                      f"{(holder or {}).get('pid', '?')} is gone)", file=sys.stderr)
                continue
            raise RunLockedError(
                f"{self.run_dir} is being written by another process (pid {holder.get('pid')} on "
                f"{holder.get('host')}, `{holder.get('command')}` since {holder.get('started')}); wait for it to "
                f"finish, or if that process no longer exists, delete {self.path}")
        raise RunLockedError(f"could not lock {self.run_dir}: {self.path} keeps reappearing")

    def release(self) -> None:
        depth = _HELD.get(self.key, 0)
        if depth > 1:
            _HELD[self.key] = depth - 1
            return
        _HELD.pop(self.key, None)
        holder = _read_lock(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked_by_other(run_dir: Path) -> dict | None:
    """The holder of a live lock on ``run_dir`` held by another process, else None."""
    holder = _read_lock(Path(run_dir) / LOCK_NAME)
    if holder is None or holder.get("pid") == os.getpid():
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
        return None
    return holder


# ------------------------------------------------------------------------------------------------------ outputs
def is_run_dir(path: Path) -> bool:
    """A bayesvae run (or exported model) directory: it has run.json or checkpoints/."""
    return path.is_dir() and ((path / "run.json").is_file() or (path / "checkpoints").is_dir())


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The run directory that ``path`` is, or lies inside, if any."""
    p = Path(path).resolve()
    for cand in (p, *p.parents):
        if is_run_dir(cand):
            return cand
    return None


def check_directory_output(out: str | os.PathLike, flag: str = "--out", *, replacing_allowed: str | None = None
                           ) -> None:
    """Refuse a directory output that is a file, or equal to or inside an existing run.

    ``replacing_allowed`` names the kind of directory ``out`` may itself be and replace with ``--overwrite``
    (``"export"``: a directory written by ``export``; ``"run"``: any run directory).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{flag} {out} is an existing file, but a directory is written there; "
                                "choose another path")
    run = enclosing_run(out)
    if run is None:
        return
    if run == out.resolve():
        if replacing_allowed == "run":
            return
        if replacing_allowed == "export" and _is_export(run):
            return
        raise OutputExistsError(f"{flag} {out} is an existing training run; writing there would destroy its "
                                "checkpoints and metrics: choose a new directory")
    raise OutputExistsError(f"{flag} {out} lies inside the run directory {run}; choose a directory outside it")


def _is_export(run: Path) -> bool:
    try:
        doc = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "exported_from" in doc


# --------------------------------------------------------------------------------------------------------- data
_BUILTIN = ("digits", "mnist")


def absolute_spec(spec):
    """The spec with absolute paths (a run works from any directory): the file source, the MNIST directory."""
    changes = {}
    if spec.source not in _BUILTIN:
        changes["source"] = str(Path(spec.source).expanduser().resolve())
    if spec.data_dir is not None:
        changes["data_dir"] = str(Path(spec.data_dir).expanduser().resolve())
    return dataclasses.replace(spec, **changes) if changes else spec


def relocated_spec(spec, data: str | None = None, data_dir: str | None = None):
    """Point a stored spec at moved data: ``data`` replaces a file source, ``data_dir`` the MNIST directory.

    Each is refused where it has no effect (``--data-dir`` for a file source; ``--data`` for the embedded digits,
    or a different kind of source)."""
    if data is not None:
        if spec.source in _BUILTIN or data in _BUILTIN:
            if data != spec.source:
                raise ConfigError(f"--data {data!r}: this run was trained on {spec.source!r}; --data can only point "
                                  "a file-trained run at the moved file (or name the same built-in source)")
        else:
            spec = dataclasses.replace(spec, source=str(Path(data).expanduser().resolve()))
    if data_dir is not None:
        if spec.source != "mnist":
            raise ConfigError(f"--data-dir has no effect here: it is where the MNIST files are, but this run's data "
                              f"are {spec.source!r}" + ("" if spec.source in _BUILTIN else
                                                        "; use --data NEW_PATH if the file moved"))
        spec = dataclasses.replace(spec, data_dir=str(Path(data_dir).expanduser().resolve()))
    return spec


def compare_fingerprint(stored: str | None, actual: str, where: str) -> str | None:
    """None when the data are the ones the run was trained on; else a warning saying they differ."""
    if not stored or stored == actual:
        return None
    return (f"warning: the data at {where} differ from those the run was trained on (fingerprint {actual[:12]}... "
            f"vs {stored[:12]}... stored in the run); the figures are for these data")
