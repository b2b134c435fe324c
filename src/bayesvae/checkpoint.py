"""Safe, atomic, self-describing checkpoints.

Nothing here ever runs code from a file: tensors are stored with safetensors and everything else as JSON, so a
tampered checkpoint can at worst be refused, never executed.  Layout of a run::

    <run_dir>/checkpoints/step-00000123/{tensors.safetensors, state.json, manifest.json}
    <run_dir>/checkpoints/last, .../best      tiny JSON pointers {"checkpoint": "step-00000123"}

A step directory appears only through one ``os.rename`` of a fully written and fsynced temp directory, so a reader
(or a resume after SIGKILL) sees either no checkpoint or a complete one.  ``manifest.json`` records the SHA-256 and
size of the other two files, so truncation and bit rot are detected instead of being loaded silently.
Single-writer assumption: only one process (rank 0) saves into a run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    IncompatibleCheckpointError,
    OutputExistsError,
    UnsafeCheckpointError,
)

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
TENSORS_FILE, STATE_FILE, MANIFEST_FILE = "tensors.safetensors", "state.json", "manifest.json"
POINTERS = ("last", "best")
STATE_PREFIX = "state."  # tensors that save_checkpoint extracts from `state` are stored under this prefix
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 200
MAX_ST_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_MARKERS = ("__tensor__", "__tuple__", "__dict__", "__float__")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ----------------------------------------------------------------------------------------------------- encoding
def encode_state(obj: Any, *, prefix: str = STATE_PREFIX) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into (tensors, json_able) so it can be stored without pickle and restored exactly.

    Tensors become ``{"__tensor__": key}`` (contiguous CPU clones, so later in-place updates do not leak into a
    pending save; the same tensor object is stored once), tuples ``{"__tuple__": [...]}``, nan/inf
    ``{"__float__": "nan"}``, and dicts whose keys are not all plain strings (int keys of optimizer state, or
    keys starting with "__") ``{"__dict__": [[key, value], ...]}``.  Anything else raises CheckpointError,
    because silently stringifying it would not round-trip.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}

    def enc(x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            if math.isfinite(x):
                return float(x)
            return {"__float__": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                key = f"{prefix}{len(tensors):06d}"
                tensors[key] = x.detach().to("cpu").clone(memory_format=torch.contiguous_format)
                seen[id(x)] = key
            return {"__tensor__": seen[id(x)]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{where}[{k!r}]") for k, v in x.items()}
            return {"__dict__": [[enc(k, f"{where}<key>"), enc(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        raise CheckpointError(f"cannot store {type(x).__name__} at {where}: only tensors, dicts, lists, tuples, "
                              "str, int, float, bool and None are supported")

    return tensors, enc(obj, "state")


def decode_state(tensors: dict[str, torch.Tensor], data: Any) -> Any:
    """Inverse of :func:`encode_state`.  ``data`` may come from disk, so every marker is checked strictly and any
    surprise raises CheckpointCorruptError rather than KeyError/TypeError deep inside the trainer."""

    def bad(msg: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"invalid encoded state: {msg}")

    def dec(x: Any) -> Any:
        if x is None or isinstance(x, (bool, int, str, float)):
            return x
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            raise bad(f"unexpected {type(x).__name__}")
        if not any(isinstance(k, str) and k.startswith("__") for k in x):
            return {k: dec(v) for k, v in x.items()}
        if len(x) != 1 or next(iter(x)) not in _MARKERS:
            raise bad(f"unknown marker object with keys {sorted(map(str, x))[:5]}")
        (tag, val), = x.items()
        if tag == "__tensor__":
            if not isinstance(val, str) or val not in tensors:
                raise bad(f"reference to missing tensor {val!r}")
            return tensors[val]
        if tag == "__float__":
            if val not in _NONFINITE:
                raise bad(f"bad float {val!r}")
            return _NONFINITE[val]
        if not isinstance(val, list):
            raise bad(f"{tag} needs a list")
        if tag == "__tuple__":
            return tuple(dec(v) for v in val)
        out = {}
        for item in val:
            if not isinstance(item, list) or len(item) != 2:
                raise bad("__dict__ items must be [key, value] pairs")
            key = dec(item[0])
            try:
                hash(key)
            except TypeError:  # a list/dict key crafted by hand
                raise bad(f"unhashable dict key of type {type(key).__name__}") from None
            out[key] = dec(item[1])
        return out

    return dec(data)


# ------------------------------------------------------------------------------------------------- atomic I/O
def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed so big files need little memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Persist a rename/creation in ``path``; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(parent: Path, stem: str) -> Path:
    """A unique temp name *next to* the target, so the final rename never crosses filesystems (no EXDEV)."""
    return parent / f".tmp-{stem}-{os.getpid()}-{secrets.token_hex(4)}"


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist), write all of ``data`` with os.write, fsync, close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, what: str, path: Path) -> OSError:
    """Same errno (so ``except OSError``/errno checks still work) but a message naming the path and reason."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    reason = reason[:1].lower() + reason[1:]
    return OSError(exc.errno, f"{what} failed: {reason} at {path}") if exc.errno else OSError(
        f"{what} failed: {reason} at {path}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``, never a mix.

    With ``overwrite=False`` an existing file raises OutputExistsError; the final step is ``os.link``, which
    refuses atomically if another process created the file meanwhile (falls back to a checked rename where
    hard links are unsupported)."""
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = _tmp_name(path.parent, path.name)
    try:
        _write_new_file(tmp, bytes(data))
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
                os.unlink(tmp)
            except FileExistsError:
                raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
            except OSError:
                if path.exists():
                    raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputExistsError):
            raise _os_error(exc, "write", path) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------ saving
def _toolkit_version() -> str:
    ours = getattr(sys.modules.get(__package__ or "bayesvae"), "__version__", None)
    if ours:
        return str(ours)
    try:
        from importlib.metadata import version
        return version("bayesvae")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def _serialise(step: int, tensors: dict, state: dict, allow_nonfinite: bool) -> dict[str, bytes]:
    """Build the three files' bytes in memory; any failure here happens before the disk is touched."""
    if any(not isinstance(k, str) or k.startswith(STATE_PREFIX) for k in tensors):
        raise CheckpointError(f"tensor keys must be str and must not start with {STATE_PREFIX!r}")
    state_tensors, state_json = encode_state(state, prefix=STATE_PREFIX)
    blob = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    if not allow_nonfinite:
        bad = _nonfinite_keys(blob)
        if bad:
            raise CheckpointError(f"refusing to save non-finite values in {', '.join(bad)}")
    blob.update(state_tensors)
    doc = {"step": step, "tensors": list(tensors), "state_tensors": sorted(state_tensors), "state": state_json}
    if _json_depth(doc) > MAX_JSON_DEPTH:  # would be refused on load, so refuse now
        raise CheckpointError(f"state is nested deeper than {MAX_JSON_DEPTH} levels once encoded")
    files = {
        TENSORS_FILE: _st_save(blob, metadata={"bayesvae_format": str(FORMAT_VERSION)}),
        STATE_FILE: json.dumps(doc, allow_nan=False).encode("ascii"),
    }
    manifest = {"format_version": FORMAT_VERSION, "toolkit": "bayesvae", "toolkit_version": _toolkit_version(),
                "step": step, "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                                        for name, data in files.items()}}
    files[MANIFEST_FILE] = json.dumps(manifest, indent=1, allow_nan=False).encode("ascii")
    return files


def save_checkpoint(run_dir: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor], state: dict, *,
                    tags: tuple[str, ...] | list[str] = ("last",), keep: int = 1,
                    allow_nonfinite: bool = False) -> Path:
    """Commit ``checkpoints/step-XXXXXXXX`` atomically, then move the pointers in ``tags``, then rotate.

    ``state`` may hold tensors, tuples, int keys and nan directly (it goes through :func:`encode_state`), e.g.
    ``{"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3}``.  Each mutation is recorded
    with an undo action, so a failure anywhere before the commit-and-pointers are done leaves the previous
    checkpoints and pointers byte-identical.  Deleting old steps comes last and is best-effort (warns), because
    by then the new checkpoint is safely committed.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep < 1 or any(t not in POINTERS for t in tags):
        raise ValueError(f"keep must be >= 1 and tags a subset of {POINTERS}")
    ckdir = Path(run_dir) / CHECKPOINTS
    final = ckdir / f"step-{step:08d}"
    undo: list[Callable[[], None]] = []
    target, trash = final, None
    try:
        files = _serialise(step, tensors, state, allow_nonfinite)
        ckdir.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(ckdir, final.name)
        tmp.mkdir()
        undo.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
        for name, data in files.items():
            target = final / name
            _write_new_file(tmp / name, data)
        _fsync_dir(tmp)
        target = final
        if final.exists():  # same step saved twice: park the old one until the new one is in place
            trash = _tmp_name(ckdir, f"old-{final.name}")
            os.rename(final, trash)
            undo.append(lambda: os.rename(trash, final))
        os.rename(tmp, final)
        undo.append(lambda: shutil.rmtree(final, ignore_errors=True))
        _fsync_dir(ckdir)
        for tag in tags:
            target = ckdir / tag
            old = target.read_bytes() if target.is_file() else None
            atomic_write_text(target, json.dumps({"checkpoint": final.name}))

            def restore(p: Path = target, b: bytes | None = old) -> None:
                if b is not None:
                    atomic_write_bytes(p, b)
                else:
                    p.unlink(True)
            undo.append(restore)
    except BaseException as exc:
        for action in reversed(undo):
            try:
                action()
            except Exception:
                pass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, OSError):
            raise _os_error(exc, "checkpoint save", target) from exc
        raise CheckpointError(f"checkpoint save failed: {exc} at {target}") from exc
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    try:
        _rotate(ckdir, keep)
    except OSError as exc:  # the new checkpoint is committed; failing to tidy up must not lose it
        warnings.warn(f"could not rotate old checkpoints in {ckdir}: {exc}", RuntimeWarning, stacklevel=2)
    return final


def _rotate(ckdir: Path, keep: int) -> None:
    """Delete step dirs neither among the newest ``keep`` nor named by a pointer, and stale temp entries."""
    protected = {p.name for p in list_checkpoints(ckdir.parent)[-keep:]}
    for tag in POINTERS:
        try:
            protected.add(_read_pointer(ckdir / tag))
        except CheckpointError:
            pass
    doomed = [p for p in list_checkpoints(ckdir.parent) if p.name not in protected]
    doomed += [p for p in ckdir.iterdir() if p.name.startswith(".tmp-")]
    for p in doomed:
        try:
            if p.is_dir() and not p.is_symlink():
                if not p.name.startswith(".tmp-"):  # out of sight first: a kill mid-delete leaves only a temp dir
                    p = p.rename(_tmp_name(ckdir, f"del-{p.name}"))
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            warnings.warn(f"could not delete old checkpoint {p}: {exc}", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------- loading
def _looks_pickled(data: bytes) -> bool:
    """A torch.save zip archive, or a pickle: a typical first opcode (protocol 2+ magic b"\\x80" + version, or
    a protocol 0/1 opcode) and the STOP opcode b"." at the end, which every pickle has."""
    if data[:4] == b"PK\x03\x04":
        return True
    first_ok = data[:1] in (b"c", b"(", b"]", b"}", b"\x8c") or (data[:1] == b"\x80" and data[1:2] <= b"\x05")
    return len(data) >= 2 and first_ok and data.endswith(b".")


def _unsafe(path: Path) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path} contains pickle/torch.save data, which bayesvae never loads "
                                 "because it can execute code; re-export the checkpoint with bayesvae")


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointCorruptError(f"{path} is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointCorruptError(f"cannot read {path}: {exc}") from exc


def _head_and_tail(path: Path) -> bytes:
    """First 4 and last byte of a file: enough for :func:`_looks_pickled` without reading a huge file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(path.stat().st_size - 1, 0))
            return head + f.read(1)
    except OSError:
        return b""


def _json_depth(obj: Any) -> int:
    """Nesting depth, computed iteratively so a hostile file cannot blow the Python stack here either."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


def _parse_json(data: bytes, path: Path) -> Any:
    """Strict, bounded JSON: no NaN tokens, no duplicate keys, depth <= MAX_JSON_DEPTH."""
    if _looks_pickled(data):
        raise _unsafe(path)
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointCorruptError(f"{path} is over the {MAX_JSON_BYTES}-byte JSON limit")

    def pairs(items: list) -> dict:
        out = dict(items)
        if len(out) != len(items):
            raise ValueError("duplicate key")
        return out

    def no_constants(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constants)
    except RecursionError:
        raise CheckpointCorruptError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise CheckpointCorruptError(f"{path} is not valid JSON: {exc}") from None
    if _json_depth(obj) > MAX_JSON_DEPTH:
        raise CheckpointCorruptError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _parse_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """Parse with safetensors (which checks offsets, dtypes and coverage) after a cheap header-size check."""
    try:
        if len(data) < 8 or not 2 <= struct.unpack("<Q", data[:8])[0] <= min(len(data) - 8, MAX_ST_HEADER):
            raise ValueError("bad header length")
        return _st_load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # BaseException: a Rust panic surfaces as PanicException, not an Exception
        if _looks_pickled(data):
            raise _unsafe(path) from None
        raise CheckpointCorruptError(f"{path} is not a valid safetensors file: {exc}") from None


def _nonfinite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, t in tensors.items() if k.startswith("model.") and (t.is_floating_point() or t.is_complex())
            and not bool(torch.isfinite(t).all())]


def _file_entry(manifest: dict, name: str, mpath: Path) -> tuple[str, int]:
    entry = manifest.get("files", {}).get(name) if isinstance(manifest.get("files"), dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and type(entry.get("size")) is int):
        raise CheckpointCorruptError(f"{mpath} has no valid entry for {name}")
    return entry["sha256"], entry["size"]


def _read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything load_checkpoint checks except the non-finite policy; also used by resolve_checkpoint."""
    path = Path(path)
    if not path.is_dir():
        if path.is_file() and _looks_pickled(_head_and_tail(path)):
            raise _unsafe(path)
        raise CheckpointNotFoundError(f"no checkpoint directory at {path}")
    missing = [n for n in (MANIFEST_FILE, TENSORS_FILE, STATE_FILE) if not (path / n).is_file()]
    if len(missing) == 3:
        raise CheckpointNotFoundError(f"no checkpoint at {path} (no {MANIFEST_FILE})")
    if missing:
        raise CheckpointCorruptError(f"checkpoint {path} is incomplete; missing: {', '.join(missing)}")
    mpath = path / MANIFEST_FILE
    manifest = _parse_json(_read_bounded(mpath, MAX_JSON_BYTES), mpath)
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version < 1:
        raise CheckpointCorruptError(f"{mpath} has no valid format_version")
    if version > FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            f"{path} was written by a newer bayesvae (format {version}, toolkit "
            f"{manifest.get('toolkit_version', '?')}); this version reads format {FORMAT_VERSION}: upgrade bayesvae")
    blobs = {}
    for name, limit in ((TENSORS_FILE, 1 << 62), (STATE_FILE, MAX_JSON_BYTES)):
        fpath = path / name
        sha, size = _file_entry(manifest, name, mpath)
        data = _read_bounded(fpath, limit)
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            if _looks_pickled(data):
                raise _unsafe(fpath)
            what = f"size {len(data)} != {size}" if len(data) != size else "SHA-256 mismatch"
            raise CheckpointCorruptError(f"{fpath} is corrupt or truncated ({what} in manifest)")
        blobs[name] = data
    tensors = _parse_safetensors(blobs[TENSORS_FILE], path / TENSORS_FILE)
    doc = _parse_json(blobs[STATE_FILE], path / STATE_FILE)
    doc = doc if isinstance(doc, dict) else {}
    keys, order = doc.get("state_tensors"), doc.get("tensors")
    if not (isinstance(keys, list) and isinstance(order, list) and "state" in doc
            and all(isinstance(k, str) for k in keys + order) and sorted(keys + order) == sorted(tensors)):
        raise CheckpointCorruptError(f"{path / STATE_FILE} does not match the bayesvae state schema")
    state = decode_state({k: tensors[k] for k in keys}, doc["state"])
    return {k: tensors[k] for k in order}, state  # in the order they were given to save_checkpoint


def load_checkpoint(path: str | os.PathLike, *, allow_nonfinite: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify and load a step directory; returns (tensors passed to save, decoded state), all on CPU.

    Files are read once into memory and the very bytes that were hashed are parsed, so a file swapped between
    verification and parsing cannot slip through."""
    tensors, state = _read_verified(Path(path))
    bad = _nonfinite_keys(tensors)
    if bad and not allow_nonfinite:
        raise CheckpointCorruptError(f"non-finite values in {', '.join(bad)} of {path}; "
                                     "pass allow_nonfinite=True (--allow-nonfinite) to load anyway")
    if bad:
        warnings.warn(f"loading non-finite values in {', '.join(bad)} of {path}", RuntimeWarning, stacklevel=2)
    return tensors, state


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise the CheckpointError that loading ``path`` would raise (ignoring the non-finite policy)."""
    _read_verified(Path(path))


# ------------------------------------------------------------------------------------------------- discovery
def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Committed step dirs, oldest first; temp dirs of killed saves are ignored."""
    ckdir = Path(run_dir) / CHECKPOINTS
    if not ckdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckdir.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()
             and (p / MANIFEST_FILE).is_file()]
    return [p for _, p in sorted(found)]


def _read_pointer(ptr: Path) -> str:
    """The step-dir name in a pointer file; the strict pattern stops a pointer from escaping the run dir."""
    if not ptr.is_file():
        raise CheckpointNotFoundError(f"no pointer file {ptr}")
    doc = _parse_json(_read_bounded(ptr, 4096), ptr)
    name = doc.get("checkpoint") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not _STEP_RE.match(name):
        raise CheckpointCorruptError(f"pointer {ptr} does not name a step directory")
    return name


def _lowest_recorded_valid_loss(run: Path) -> tuple[Path, float] | None:
    """Among the committed checkpoints that verify, the one whose own step recorded the lowest validation loss
    (every checkpoint's state holds the epoch history up to it)."""
    best = None
    for cand in list_checkpoints(run):
        try:
            _, state = _read_verified(cand)
        except CheckpointError:
            continue
        trainer = state.get("trainer", {}) if isinstance(state, dict) else {}
        last = (trainer.get("history") or [{}])[-1]
        loss = last.get("valid_loss") if last.get("global_step") == trainer.get("global_step") else None
        if isinstance(loss, (int, float)) and math.isfinite(loss) and (best is None or loss < best[1]):
            best = (cand, float(loss))
    return best


def resolve_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> Path:
    """The step dir that pointer ``which`` ("last"/"best") names; ``which`` may also be a step-dir name or path,
    and ``run_dir`` may itself be a step dir.

    For "last", a missing or failing target falls back, with a warning, to the newest step dir that verifies:
    auto-resume should lose as little work as possible.  "best" never falls back, since another checkpoint
    is not "the best" one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointNotFoundError(f"no run directory at {run}")
    if (run / MANIFEST_FILE).is_file():
        return run
    if not (run / CHECKPOINTS).is_dir() and not (run / "run.json").is_file():
        raise CheckpointNotFoundError(f"{run} is not a run directory (it has no checkpoints/ and no run.json); give a "
                                      "directory written by `bayesvae train` or `bayesvae export`")
    if which not in POINTERS:  # an explicit step: "step-00000123" or a path; the loader verifies it
        for cand in (run / CHECKPOINTS / str(which), Path(which)):
            if (cand / MANIFEST_FILE).is_file():
                return cand
        raise CheckpointNotFoundError(f"no checkpoint {which!r} in {run} (use last, best or a step directory)")
    ptr = run / CHECKPOINTS / which
    try:
        target = run / CHECKPOINTS / _read_pointer(ptr)
        _read_verified(target)
        return target
    except CheckpointError as exc:
        if which == "best" and isinstance(exc, CheckpointNotFoundError):
            chosen = _lowest_recorded_valid_loss(run)
            if chosen is not None:  # the run stopped between committing a checkpoint and moving the pointer
                path, loss = chosen
                warnings.warn(f"{run} has no 'best' pointer (the run stopped before writing it); using {path.name}, "
                              f"the committed checkpoint with the lowest recorded validation loss ({loss:.3f} nats)",
                              RuntimeWarning, stacklevel=2)
                return path
        if which != "last" and isinstance(exc, CheckpointNotFoundError):
            hint = ""
            if list_checkpoints(run):
                hint = ("; no committed checkpoint records a validation loss yet (one is recorded at the end of an "
                        "epoch; the run stopped during its first epoch): use --checkpoint last")
            raise CheckpointNotFoundError(f"no {which!r} checkpoint in {run}: {exc}{hint}") from exc
        if which != "last" or isinstance(exc, IncompatibleCheckpointError):
            raise  # a newer format is not damage: resuming from an older step instead would silently lose work
        reason = exc
    for cand in reversed(list_checkpoints(run)):
        try:
            _read_verified(cand)
        except CheckpointError:
            continue
        warnings.warn(f"checkpoint pointer {ptr} is unusable ({reason}); falling back to {cand}",
                      RuntimeWarning, stacklevel=2)
        return cand
    raise CheckpointNotFoundError(f"no valid checkpoint found in {run} (pointer {ptr}: {reason})")
