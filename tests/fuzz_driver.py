"""Hostile and broken inputs, generated from a seed (run as a subprocess by test_campaign.py; prints JSON).

Every case is fed to the toolkit in this process (no process start per case): checkpoints through
``bayesvae.runs.load_run`` (verify, parse, rebuild the model), data files through ``bayesvae.data.load_dataset``.
A case passes when it loads, or raises a :class:`bayesvae.BayesVAEError`, within the time limit; anything else
(another exception type, a hang, a crash, code execution) is a finding. A sample also goes through
``bayesvae.cli.main``, where it must exit 0 or 2 without a traceback.

    python tests/fuzz_driver.py --dir D --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import pickle
import random
import resource
import shutil
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

torch.set_num_threads(1)

from bayesvae import cli, runs  # noqa: E402
from bayesvae import data as bdata  # noqa: E402
from bayesvae.config import TrainConfig  # noqa: E402
from bayesvae.errors import BayesVAEError  # noqa: E402

CASE_SECONDS = 5.0  # per case (the 100 MB CSV line has its own limit)


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------------ checkpoints
def _manifest(step_dir: Path) -> None:
    """Make the manifest agree with the (mutated) files, so the mutation reaches the parsers behind the hashes."""
    path = step_dir / "manifest.json"
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return
    if not isinstance(doc, dict):
        return
    files = {}
    for name in ("tensors.safetensors", "state.json"):
        data = (step_dir / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    doc["files"] = files
    path.write_text(json.dumps(doc))


def _flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes([rng.randrange(256)])
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _mutate(data: bytes, rng: random.Random, other: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flip", "truncate", "extend", "splice", "zero", "repeat"])
    if kind == "flip":
        return kind, _flip(data, rng)
    if kind == "truncate":
        cut = rng.choice([0, 1, 7, 8, 9, len(data) // 2, max(0, len(data) - 1), rng.randrange(len(data) + 1)])
        return kind, data[:cut]
    if kind == "extend":
        return kind, data + rng.randbytes(rng.choice([1, 8, 100, 4096]))
    if kind == "splice":
        i, j = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
        return kind, data[:i] + other[j:j + rng.randint(1, 64)] + data[i + rng.randint(0, 64):]
    if kind == "zero":
        i = rng.randrange(len(data) + 1)
        return kind, data[:i] + bytes(rng.randint(1, 32)) + data[i + 32:]
    return kind, data * rng.randint(2, 3)


def _safetensors_header_edit(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the JSON header: huge shapes, bad offsets or dtypes, a wrong header length."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    key = rng.choice([k for k in header if k != "__metadata__"])
    what = rng.choice(["shape", "offsets", "dtype", "length", "extra"])
    if what == "shape":
        header[key]["shape"] = rng.choice([[10 ** 12], [1 << 62, 1 << 62], [-1], [0], [3, 0, 5]])
    elif what == "offsets":
        header[key]["data_offsets"] = rng.choice([[0, 10 ** 12], [5, 3], [-1, 4], [0, 1]])
    elif what == "dtype":
        header[key]["dtype"] = rng.choice(["F128", "object", "", "U8", "BOOL"])
    elif what == "extra":
        header["__metadata__"] = {"x": "y" * rng.choice([10, 10 ** 5])}
    body = json.dumps(header).encode()
    length = len(body) if what != "length" else rng.choice([0, 1, len(body) + 1, 10 ** 12, 2 ** 64 - 1])
    return struct.pack("<Q", length) + body + data[8 + n:]


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def checkpoint_cases(root: Path, rng: random.Random, count: int, marker: Path):
    """Yields (description, run_dir) for ``count`` mutated copies of a trained run's checkpoint, plus the crafted
    ones. One directory is rewritten per case."""
    base = root / "base"
    runs.train(runs.DataSpec("digits", limit=60), out=base, latent_dim=2, hidden=(8,),
               train_config=TrainConfig(epochs=1, batch_size=32))
    step = next((base / "checkpoints").glob("step-*"))
    originals = {p.name: p.read_bytes() for p in step.iterdir()}
    pointers = {p: (base / "checkpoints" / p).read_bytes() for p in ("last", "best")}
    case = root / "case"
    shutil.copytree(base, case)
    cstep = case / "checkpoints" / step.name

    dirty: set[Path] = set(cstep / n for n in originals) | set(case / "checkpoints" / n for n in pointers)

    def reset():  # rewrite only what the previous case changed
        for path in list(dirty):
            path.write_bytes(originals[path.name] if path.name in originals else pointers[path.name])
        dirty.clear()

    pickled = pickle.dumps({"model.x": Payload(str(marker))})
    crafted = [
        ("safetensors header claims 1e12 elements", "tensors.safetensors",
         lambda d: _safetensors_header_edit_fixed(d, [10 ** 12]), True),
        ("state.json nested 1e5 deep", "state.json", lambda d: _deep(100_000), True),
        ("manifest.json nested 1e5 deep", "manifest.json", lambda d: _deep(100_000), False),
        ("pointer nested 1e5 deep", "last", lambda d: _deep(100_000), False),
        ("state.json with a 20 MB string", "state.json",
         lambda d: json.dumps({"step": 1, "tensors": [], "state_tensors": [], "state": "x" * 20_000_000}).encode(),
         True),
        ("state.json 70 MB (over the JSON limit)", "state.json", lambda d: b" " * (70 << 20) + b"{}", True),
        ("pickle as tensors", "tensors.safetensors", lambda d: pickled, True),
        ("pickle as state", "state.json", lambda d: pickled, True),
        ("torch.save zip as tensors", "tensors.safetensors", lambda d: _torch_save_bytes(marker), True),
        ("pickle as manifest", "manifest.json", lambda d: pickled, False),
        ("pointer escapes the run", "last", lambda d: b'{"checkpoint": "../../etc"}', False),
        ("huge header length", "tensors.safetensors", lambda d: struct.pack("<Q", 2 ** 63) + d[8:], True),
    ]
    for desc, name, make, remanifest in crafted:
        reset()
        target = cstep / name if name not in pointers else case / "checkpoints" / name
        target.write_bytes(make(target.read_bytes()))
        dirty.add(target)
        if remanifest:
            _manifest(cstep)
            dirty.add(cstep / "manifest.json")
        yield f"crafted: {desc}", case
    names = list(originals) + list(pointers)
    for _ in range(count):
        reset()
        name = rng.choice(names + ["tensors.safetensors"] * 3 + ["state.json"] * 2)
        target = cstep / name if name in originals else case / "checkpoints" / name
        data = target.read_bytes()
        if name == "tensors.safetensors" and rng.random() < 0.3:
            kind, new = "header edit", _safetensors_header_edit(data, rng)
        else:
            kind, new = _mutate(data, rng, originals[rng.choice(list(originals))])
        target.write_bytes(new)
        dirty.add(target)
        fixed = name in ("tensors.safetensors", "state.json") and rng.random() < 0.6
        if fixed:
            _manifest(cstep)
            dirty.add(cstep / "manifest.json")
        yield f"{kind} of {name}{' (manifest rewritten to match)' if fixed else ''}", case


def _safetensors_header_edit_fixed(data: bytes, shape: list[int]) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = shape
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data[8 + n:]


def _torch_save_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"model.x": Payload(str(marker))}, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------- data files
def _npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_header_claim(shape: tuple, dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64


def _png_bytes(rng: random.Random, size=(8, 8)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    pixels = np.frombuffer(rng.randbytes(size[0] * size[1]), dtype=np.uint8).reshape(size[1], size[0])
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a tiny (compressed) body: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\0" + b"\0" * width
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(min(height, 64))) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npz_bomb() -> bytes:
    """An .npz whose one member inflates to 16 GiB of zeros (a few MB compressed? no: 16 KiB of deflate stream
    claiming 16 GiB in the zip directory, with an .npy header declaring the full array)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header_claim((1 << 32,), "<f4"))
    data = bytearray(buf.getvalue())
    # patch the uncompressed size in the local header and the central directory to 16 GiB - 1 (zip32 max 4 GiB-1)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        data[i + off:i + off + 4] = struct.pack("<I", 0xFFFFFFFE)
    return bytes(data)


def data_cases(root: Path, rng: random.Random, count: int, marker: Path):
    """Yields (description, path) of hostile .npy/.npz/.csv/image-folder inputs."""
    d = root / "data"
    d.mkdir()
    good_npy = _npy_bytes(np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    good_img = _npy_bytes(np.random.default_rng(0).integers(0, 256, (30, 1, 6, 6)).astype(np.uint8))
    good_csv = ("a,b,c\n" + "".join(f"{i},{i * 0.5},{-i}\n" for i in range(30))).encode()
    good_npz = _npz_bytes({"x": np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)})
    crafted = [
        ("npy object dtype (pickled)", ".npy", _npy_bytes(np.array([Payload(str(marker))] * 3, dtype=object),
                                                        allow_pickle=True)),
        ("npy claiming 1e12 elements", ".npy", _npy_header_claim((10 ** 12,))),
        ("npy claiming 2^62 x 2^62", ".npy", _npy_header_claim((1 << 62, 1 << 62))),
        ("npy negative shape", ".npy", _npy_header_claim((-5, 3))),
        ("npy header is code", ".npy", b"\x93NUMPY\x01\x00\x20\x00__import__('os').system('touch x')       \n"),
        ("npz pickled member", ".npz", _zip_member("x.npy", _npy_bytes(np.array([Payload(str(marker))]),
                                                                        allow_pickle=True))),
        ("npz decompression bomb", ".npz", _npz_bomb()),
        ("npz member claiming 1e12", ".npz", _zip_member("x.npy", _npy_header_claim((10 ** 12,)))),
        ("csv 100 MB line", ".csv", b"1," * (50 << 20) + b"1\n"),
        ("csv huge cell", ".csv", b"a\n" + b"9" * (1 << 20) + b"\n"),
        ("png claiming 100000 x 100000", "png", _png_claiming(100_000, 100_000)),
        ("png claiming 20000 x 20000", "png", _png_claiming(20_000, 20_000)),
        ("png claiming 1 x 10^9", "png", _png_claiming(1, 1_000_000_000)),
    ]
    for i, (desc, kind, blob) in enumerate(crafted):
        yield f"crafted: {desc}", _write_input(d, f"c{i}", kind, blob, rng)
    bases = [(".npy", good_npy), (".npy", good_img), (".csv", good_csv), (".npz", good_npz), ("png", None)]
    for i in range(count):
        kind, base = rng.choice(bases)
        if kind == "png":
            base = _png_bytes(rng)
        assert base is not None
        how, blob = _mutate(base, rng, base)
        yield f"{how} of {kind}", _write_input(d, f"m{i % 50}", kind, blob, rng)


def _zip_member(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def _write_input(d: Path, stem: str, kind: str, blob: bytes, rng: random.Random) -> Path:
    if kind == "png":  # a folder of images: the mutated one among good ones
        folder = d / stem
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for j in range(4):
            (folder / f"ok{j}.png").write_bytes(_png_bytes(rng))
        (folder / "bad.png").write_bytes(blob)
        return folder
    path = d / f"{stem}{kind}"
    path.write_bytes(blob)
    return path


# -------------------------------------------------------------------------------------------------------- main
def run_case(fn, limit: float) -> tuple[str, float, str]:
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning where an error belongs is a finding too
            warnings.filterwarnings("ignore", message="checkpoint pointer .* is unusable", category=RuntimeWarning)
            fn()
        outcome = "ok"
        detail = ""
    except BayesVAEError as err:
        outcome, detail = "typed", type(err).__name__
    except BaseException as err:  # noqa: BLE001 - the finding
        outcome, detail = "untyped", f"{type(err).__name__}: {str(err)[:200]}"
    seconds = time.perf_counter() - t0
    if seconds > limit:
        outcome, detail = "slow", f"{seconds:.1f} s > {limit} s ({detail or outcome})"
    return outcome, seconds, detail


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cli-sample", type=int, default=40)
    a = p.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "PWNED"
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    n_ckpt = int(a.cases * 0.6)
    res: dict[str, Any] = {"cases": 0, "checkpoint_cases": 0, "data_cases": 0, "loaded": 0, "typed_errors": 0,
                           "untyped": 0, "slow": 0, "findings": [], "max_case_seconds": 0.0, "cli_cases": 0,
                           "cli_bad": 0}
    sample_every = max(1, a.cases // max(1, a.cli_sample))

    def _record(desc, outcome, seconds, detail):
        res["cases"] += 1
        res["max_case_seconds"] = max(res["max_case_seconds"], round(seconds, 3))
        res[{"ok": "loaded", "typed": "typed_errors", "untyped": "untyped", "slow": "slow"}[outcome]] += 1
        if outcome in ("untyped", "slow") and len(res["findings"]) < 20:
            res["findings"].append(f"{desc}: {detail}")

    def _cli(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
        res["cli_cases"] += 1
        if code not in (0, 2) or "Traceback" in err.getvalue():
            res["cli_bad"] += 1
            if len(res["findings"]) < 20:
                res["findings"].append(f"CLI {argv[:2]} exit {code}: {err.getvalue()[-300:]}")

    timing = {"checkpoint": 0.0, "data": 0.0, "cli": 0.0, "crafted": 0.0}
    res["timing"] = timing

    def cli_sample(argv):
        t = time.perf_counter()
        _cli(argv)
        timing["cli"] += time.perf_counter() - t

    def record(desc, outcome, seconds, detail):
        kind = "crafted" if desc.startswith("crafted") else ("checkpoint" if res["data_cases"] == 0 else "data")
        timing[kind] += seconds
        _record(desc, outcome, seconds, detail)

    for i, (desc, case) in enumerate(checkpoint_cases(root, rng, n_ckpt, marker)):
        limit = 20.0 if desc.startswith("crafted") else CASE_SECONDS
        record(desc, *run_case(lambda case=case: runs.load_run(case, "last"), limit))
        res["checkpoint_cases"] += 1
        if i % sample_every == 0:
            cli_sample(["evaluate", str(case), "--checkpoint", "last", "--samples", "2", "--limit", "3"])
    for i, (desc, path) in enumerate(data_cases(root, rng, a.cases - n_ckpt, marker)):
        limit = 30.0 if desc.startswith("crafted") else CASE_SECONDS
        record(desc, *run_case(lambda path=path: bdata.load_dataset(str(path)), limit))
        res["data_cases"] += 1
        if i % sample_every == 0 or desc.startswith("crafted"):
            out = root / "cli-run"
            cli_sample(["train", "--data", str(path), "--epochs", "1", "--hidden", "4", "--latent-dim", "2",
                        "--report-samples", "0", "--out", str(out), "--overwrite"])
    res["code_executed"] = marker.exists()
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
