"""Tests of bayesvae.checkpoint: exact round trips, atomic saves under faults, and refusal of hostile files."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bayesvae import checkpoint as ck
from bayesvae.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    decode_state,
    encode_state,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    sha256_file,
)
from bayesvae.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    OutputExistsError,
    UnsafeCheckpointError,
)

SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------------------------- helpers
def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN == NaN, -0.0 != 0.0), plus dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def assert_same(a, b, where="obj"):
    """Exact structural equality, including types (tuple vs list, int vs float keys) and float bit patterns."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert bits_equal(a, b), where
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert type(k) is type([x for x in b if x == k][0])
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def trained_adam(seed=0, steps=3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def model_tensors(model):
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (relative path -> digest)."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def rewrite_manifest(step_dir: Path) -> None:
    """Make the manifest match the files again, as an attacker who can write the directory would."""
    mpath = step_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    for name in ("tensors.safetensors", "state.json"):
        data = (step_dir / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    mpath.write_text(json.dumps(manifest))


@pytest.fixture
def run(tmp_path):
    """A run dir with step 1 (best) and step 2 (last), both valid."""
    model, opt, sched = trained_adam()
    save_checkpoint(tmp_path, 1, model_tensors(model), {"optimizer": opt.state_dict(), "epoch": 0},
                    tags=("last", "best"))
    model2, opt2, _ = trained_adam(seed=1)
    save_checkpoint(tmp_path, 2, model_tensors(model2), {"optimizer": opt2.state_dict(), "epoch": 1})
    return tmp_path


class Evil:
    """Unpickling this creates a marker directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ----------------------------------------------------------------------------------------- encode / decode
def test_encode_decode_round_trip_is_exact_and_json_able():
    model, opt, sched = trained_adam()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": torch.get_rng_state(),
        "int_keys": {0: "a", 7: (1, 2.5, None), -3: [True, False]},
        "floats": [math.nan, math.inf, -math.inf, -0.0, 1e-310, 0.1, 2.0**60],
        "nested_tuple": ((1, (2,)), ()),
        "__dunder": {"__tensor__": "not a reference"},
        "tensors": [torch.tensor(3.5), torch.tensor([True, False]), torch.tensor([2**62], dtype=torch.int64),
                    torch.tensor([math.pi], dtype=torch.float64), torch.tensor([1.5, -0.0], dtype=torch.bfloat16),
                    torch.tensor([math.nan, -math.inf]), base.t(), base[1:, ::2], torch.zeros(0, 5)],
        "big_int": 2**100,
        "text": "ünïcode \"quotes\"",
    }
    tensors, data = encode_state(obj)
    text = json.dumps(data, allow_nan=False)  # must be strict JSON
    from safetensors.torch import load, save
    back = decode_state(load(save(tensors)), json.loads(text))
    assert_same(obj, back)
    assert all(t.is_contiguous() for t in tensors.values())
    assert isinstance(back["optimizer"]["state"], dict) and all(type(k) is int for k in back["optimizer"]["state"])
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)


def test_decoded_optimizer_steps_bitwise_identically():
    model, opt, sched = trained_adam()
    tensors, data = encode_state({"opt": opt.state_dict(), "sched": sched.state_dict()})
    from safetensors.torch import load, save
    state = decode_state(load(save(tensors)), json.loads(json.dumps(data)))

    clone = trained_adam(seed=99, steps=0)[0]
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(clone.parameters(), lr=123.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=7)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    for m, o, s in ((model, opt, sched), (clone, opt2, sched2)):
        for _ in range(3):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
            s.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert bits_equal(p.detach(), q.detach())
    assert_same(opt.state_dict(), opt2.state_dict())


def test_encode_rejects_unsupported_objects():
    with pytest.raises(CheckpointError, match="set"):
        encode_state({"a": [{1, 2}]})


@pytest.mark.parametrize("data", [{"__tensor__": "missing"}, {"__float__": "1e5"}, {"__bogus__": 1},
                                  {"__dict__": [[[1], 2]]}, {"__tuple__": 3}, {"__dict__": [[1]]}])
def test_decode_rejects_malformed_markers(data):
    with pytest.raises(CheckpointCorruptError):
        decode_state({}, data)


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip_bit_exact(tmp_path):
    model, opt, sched = trained_adam()
    shared = torch.randn(4, 6)
    tensors = {**model_tensors(model), "ema.t": shared.t(), "ema.view": shared[1:3],
               "aux.bf16": torch.randn(3).bfloat16(), "aux.nan": torch.tensor([math.nan]),
               "aux.scalar": torch.tensor(7, dtype=torch.int64)}
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
             "step": 5, "best_loss": math.inf, "history": [(1, 2.0)]}
    path = save_checkpoint(tmp_path, 5, tensors, state, tags=("last", "best"))
    expected = {k: v.clone() for k, v in tensors.items()}
    shared.add_(1.0)  # mutating after the save must not change what was saved

    assert path == tmp_path / "checkpoints" / "step-00000005"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.json", "tensors.safetensors"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == ck.FORMAT_VERSION == 1 and manifest["toolkit_version"]
    for name in ("tensors.safetensors", "state.json"):
        assert manifest["files"][name] == {"sha256": sha256_file(path / name), "size": (path / name).stat().st_size}
    for tag in ("last", "best"):
        assert json.loads((tmp_path / "checkpoints" / tag).read_text()) == {"checkpoint": "step-00000005"}
    assert resolve_checkpoint(tmp_path) == path == resolve_checkpoint(tmp_path, "best")
    assert resolve_checkpoint(path) == path

    loaded, loaded_state = load_checkpoint(path)
    assert_same(expected, loaded)
    assert_same(state, loaded_state)
    assert all(t.device.type == "cpu" for t in loaded.values())
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_pre_encoded_state_also_round_trips(tmp_path):
    """A trainer may call encode_state itself and pass its tensors along; that must work too."""
    _, opt, _ = trained_adam()
    enc_tensors, enc = encode_state(opt.state_dict(), prefix="opt.")
    save_checkpoint(tmp_path, 1, enc_tensors, {"opt": enc})
    tensors, state = load_checkpoint(resolve_checkpoint(tmp_path))
    assert_same(opt.state_dict(), decode_state(tensors, state["opt"]))


def test_rotation_keep_one_keeps_last_and_best(tmp_path):
    t = {"model.w": torch.ones(2)}
    save_checkpoint(tmp_path, 1, t, {}, tags=("last", "best"))
    save_checkpoint(tmp_path, 2, t, {})
    save_checkpoint(tmp_path, 3, t, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003"]
    save_checkpoint(tmp_path, 4, t, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003", "step-00000004"]
    save_checkpoint(tmp_path, 10, t, {}, tags=("last", "best"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]


def test_saving_same_step_twice_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 3, {"model.w": torch.zeros(2)}, {"v": 1})
    save_checkpoint(tmp_path, 3, {"model.w": torch.ones(2)}, {"v": 2})
    tensors, state = load_checkpoint(resolve_checkpoint(tmp_path))
    assert state == {"v": 2} and torch.equal(tensors["model.w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last", "step-00000003"]


def test_stale_temp_dirs_are_ignored_then_cleaned(run):
    stale = run / "checkpoints" / ".tmp-step-00000009-1234-abcd"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"partial")
    (run / "checkpoints" / ".tmp-last-1234-abcd").write_text("{")
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001", "step-00000002"]
    assert resolve_checkpoint(run).name == "step-00000002"
    save_checkpoint(run, 3, {"model.w": torch.ones(1)}, {})
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_save_refuses_nonfinite_model_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="model.w"):
        save_checkpoint(tmp_path, 1, {"model.w": torch.tensor([math.nan])}, {})
    assert list_checkpoints(tmp_path) == []


# -------------------------------------------------------------------------------------- faults on save
def _fail_st_save(*a, **k):
    raise RuntimeError("serializer exploded")


@pytest.mark.parametrize("fault", ["serializer", "unstorable_state", "second_file", "replace", "rename", "best"])
@pytest.mark.parametrize("step", [3, 2])  # 2 = saving over an existing step
def test_failure_partway_leaves_everything_byte_identical(run, monkeypatch, fault, step):
    before = snapshot(run)
    state = {"x": 1}
    if fault == "serializer":
        monkeypatch.setattr(ck, "_st_save", _fail_st_save)
    elif fault == "unstorable_state":
        state = {"x": object()}
    elif fault == "second_file":
        real, calls = ck._write_new_file, []

        def flaky(path, data):
            calls.append(path)
            if len(calls) == 2:
                real(path, data[: len(data) // 2])
                raise OSError(errno.EIO, "Input/output error")
            real(path, data)
        monkeypatch.setattr(ck, "_write_new_file", flaky)
    elif fault == "replace":
        def no_replace(*a, **k):
            raise OSError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(os, "replace", no_replace)
    elif fault == "rename":
        real_rename = os.rename

        def rename(src, dst):
            if str(src).startswith(str(run / "checkpoints" / ".tmp-step")):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real_rename(src, dst)
        monkeypatch.setattr(os, "rename", rename)
    elif fault == "best":  # 'last' is replaced, then 'best' fails: 'last' must be rolled back
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == "best":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises((CheckpointError, OSError), match="checkpoint save failed: .+ at .+checkpoints"):
        save_checkpoint(run, step, {"model.w": torch.ones(3)}, state, tags=("last", "best"))
    monkeypatch.undo()
    assert snapshot(run) == before
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert resolve_checkpoint(run).name == "step-00000002"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_disk_full_gives_clear_error_and_keeps_old_checkpoint(run, monkeypatch, code):
    before = snapshot(run)
    written = []

    def full_disk(fd, data):  # accepts a little, then the disk is full
        if sum(written) > 100:
            raise OSError(code, os.strerror(code))
        written.append(min(len(data), 64))
        return os.__dict__["_real_write"](fd, data[:64])

    os._real_write = os.write
    try:
        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(OSError) as info:
            save_checkpoint(run, 3, {"model.w": torch.ones(1000)}, {"x": 1})
    finally:
        monkeypatch.undo()
        del os._real_write
    assert info.value.errno == code
    msg = str(info.value)
    assert "checkpoint save failed" in msg and os.strerror(code).lower() in msg.lower()
    assert str(run / "checkpoints" / "step-00000003") in msg
    if code == errno.ENOSPC:
        assert "no space left on device" in msg
    assert snapshot(run) == before and not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_real_file_size_limit_in_subprocess(run):
    """A real EFBIG from the kernel (RLIMIT_FSIZE, SIGXFSZ ignored), not a mock."""
    before = snapshot(run)
    code = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from bayesvae.checkpoint import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        try:
            save_checkpoint({str(run)!r}, 3, {{"model.w": torch.ones(100000)}}, {{}})
        except OSError as e:
            print("ERR", e.errno, e); sys.exit(3)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 3, res.stderr
    assert f"ERR {errno.EFBIG}" in res.stdout and "file too large" in res.stdout.lower()
    assert snapshot(run) == before and not list((run / "checkpoints").glob(".tmp-*"))


def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    """Kill a process that saves in a tight loop at several random moments; resume must always work."""
    code = textwrap.dedent(f"""
        import torch
        from bayesvae.checkpoint import save_checkpoint
        t = {{"model.w": torch.randn(400_000)}}
        save_checkpoint({str(tmp_path)!r}, 0, t, {{"step": 0}})
        print("ready", flush=True)  # from here on there is always a committed checkpoint
        for step in range(1, 10**6):
            save_checkpoint({str(tmp_path)!r}, step, t, {{"step": step}}, keep=1)
    """)
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(SRC)})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        tensors, state = load_checkpoint(resolve_checkpoint(tmp_path))
        assert tensors["model.w"].shape == (400_000,) and isinstance(state["step"], int)


# ---------------------------------------------------------------------------------- corruption on load
def _header_end(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("cut", ["0", "1", "8", "header_end", "half", "size-1"])
def test_truncated_tensors_are_refused_and_resume_falls_back(run, cut):
    target = run / "checkpoints" / "step-00000002" / "tensors.safetensors"
    data = target.read_bytes()
    n = {"0": 0, "1": 1, "8": 8, "header_end": _header_end(target), "half": len(data) // 2,
         "size-1": len(data) - 1}[cut]
    target.write_bytes(data[:n])
    with pytest.raises(CheckpointCorruptError, match="tensors.safetensors"):
        load_checkpoint(target.parent)
    with pytest.warns(RuntimeWarning, match="step-00000002.*step-00000001"):
        assert resolve_checkpoint(run, "last").name == "step-00000001"


def test_single_bit_flip_is_detected(run):
    target = run / "checkpoints" / "step-00000002" / "tensors.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x10
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="tensors.safetensors.*SHA-256"):
        load_checkpoint(target.parent)


@pytest.mark.parametrize("missing", [["state.json"], ["tensors.safetensors"], ["manifest.json"],
                                     ["state.json", "tensors.safetensors"]])
def test_missing_files_are_listed(run, missing):
    step = run / "checkpoints" / "step-00000002"
    for name in missing:
        (step / name).unlink()
    with pytest.raises(CheckpointCorruptError) as info:
        load_checkpoint(step)
    for name in missing:
        assert name in str(info.value)


def test_corrupt_best_does_not_fall_back(run):
    (run / "checkpoints" / "step-00000001" / "state.json").write_text("{}")
    with pytest.raises(CheckpointCorruptError):
        resolve_checkpoint(run, "best")


def test_future_format_version_is_refused(run):
    mpath = run / "checkpoints" / "step-00000002" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["format_version"] = ck.FORMAT_VERSION + 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="newer bayesvae.*format 2.*upgrade"):
        load_checkpoint(mpath.parent)
    with pytest.raises(CheckpointError, match="newer"):  # no silent fallback to an older step
        resolve_checkpoint(run)


def test_nonfinite_model_tensor_refused_or_warned(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model.enc.w": torch.tensor([1.0, math.inf]), "aux": torch.ones(1)},
                           {}, allow_nonfinite=True)
    with pytest.raises(CheckpointCorruptError, match="model.enc.w"):
        load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match="model.enc.w"):
        tensors, _ = load_checkpoint(path, allow_nonfinite=True)
    assert math.isinf(tensors["model.enc.w"][1])


# ------------------------------------------------------------------------------------------- hostile files
def _payloads(marker: Path) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "x": Evil(marker)}, buf)
    return {"pickle": pickle.dumps(Evil(marker), protocol=pickle.HIGHEST_PROTOCOL),
            "pickle_proto0": pickle.dumps(Evil(marker), protocol=0),
            "pickle_proto2": pickle.dumps(Evil(marker), protocol=2),
            "torch_save_zip": buf.getvalue()}


def test_payloads_really_are_dangerous(tmp_path):
    """Guard for the tests below: unpickling these payloads does create the marker."""
    marker = tmp_path / "pwned"
    for data in _payloads(marker).values():
        if marker.exists():
            marker.rmdir()
        if data[:2] == b"PK":
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "pickle_proto0", "pickle_proto2", "torch_save_zip"])
@pytest.mark.parametrize("victim", ["tensors.safetensors", "state.json", "manifest.json"])
def test_pickle_posing_as_checkpoint_file_is_refused(run, tmp_path, kind, victim):
    marker = tmp_path / "pwned"
    step = run / "checkpoints" / "step-00000002"
    (step / victim).write_bytes(_payloads(marker)[kind])
    if victim != "manifest.json":
        rewrite_manifest(step)  # the attacker fixed the manifest too
    with pytest.raises(UnsafeCheckpointError, match=victim):
        load_checkpoint(step)
    assert not marker.exists()


def test_pickle_pointer_and_pickle_file_path(run, tmp_path):
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "last").write_bytes(_payloads(marker)["pickle"])
    with pytest.warns(RuntimeWarning, match="last"):
        assert resolve_checkpoint(run).name == "step-00000002"
    pt = tmp_path / "model.pt"
    pt.write_bytes(_payloads(marker)["torch_save_zip"])
    with pytest.raises(UnsafeCheckpointError, match="model.pt"):
        load_checkpoint(pt)
    assert not marker.exists()


def test_pointer_cannot_escape_the_run_dir(run):
    (run / "checkpoints" / "last").write_text(json.dumps({"checkpoint": "../../etc"}))
    with pytest.warns(RuntimeWarning, match="does not name a step"):
        assert resolve_checkpoint(run).name == "step-00000002"


def _safetensors(header: dict | bytes, payload: bytes, declared_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + payload


MALFORMED = {
    "huge_header_len": _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
                                    declared_len=2**63),
    "header_not_json": _safetensors(b"{not json at all", b""),
    "header_not_utf8": _safetensors(b'{"\xff\xfe": 1}', b""),
    "overlapping": _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "trailing_bytes": _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9),
    "shape_overflow": _safetensors({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}},
                                   b"\0" * 4),
    "bad_dtype": _safetensors({"a": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "negative_shape": _safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_safetensors_refused_quickly(run, kind):
    step = run / "checkpoints" / "step-00000002"
    (step / "tensors.safetensors").write_bytes(MALFORMED[kind])
    rewrite_manifest(step)
    start = time.perf_counter()
    with pytest.raises(CheckpointCorruptError, match="tensors.safetensors"):
        load_checkpoint(step)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("doc", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                 b"[" * 250 + b"]" * 250])
def test_deeply_nested_state_json_refused(run, doc):
    step = run / "checkpoints" / "step-00000002"
    (step / "state.json").write_bytes(doc)
    rewrite_manifest(step)
    with pytest.raises(CheckpointCorruptError, match="nested deeper"):
        load_checkpoint(step)


@pytest.mark.parametrize("doc", [b'{"step": 1, "state_tensors": [], "state": NaN}',
                                 b'{"step": 1, "step": 2, "state_tensors": [], "state": {}}',
                                 b'{"step": 1, "state_tensors": ["nope"], "state": {}}', b'[]', b'\xff'])
def test_invalid_state_json_refused(run, doc):
    step = run / "checkpoints" / "step-00000002"
    (step / "state.json").write_bytes(doc)
    rewrite_manifest(step)
    with pytest.raises(CheckpointCorruptError, match="state.json"):
        load_checkpoint(step)


def test_fuzzed_checkpoints_raise_only_checkpoint_errors(tmp_path):
    model, opt, _ = trained_adam()
    good = save_checkpoint(tmp_path / "good", 1, model_tensors(model), {"optimizer": opt.state_dict()})
    originals = {n: (good / n).read_bytes() for n in ("tensors.safetensors", "state.json", "manifest.json")}
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for i in range(300):
        name = rng.choice(list(originals))
        data = bytearray(originals[name])
        op = rng.choice(["flip", "byte", "truncate", "splice", "insert"])
        if op == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == "byte":
            data[rng.randrange(min(len(data), 200))] = rng.randrange(256)  # bias towards headers
        elif op == "truncate":
            del data[rng.randrange(len(data)):]
        elif op == "splice":
            a, b = sorted(rng.randrange(len(data)) for _ in range(2))
            data[a:b] = rng.randbytes(rng.randint(0, 16))
        else:
            pos = rng.randrange(len(data))
            data[pos:pos] = rng.choice([b"{", b"[", b"\x80\x04", b"\"__tensor__\"", b"\x00" * 8])
        step = tmp_path / f"fuzz{i}" / "checkpoints" / "step-00000001"
        step.mkdir(parents=True)
        for n, content in originals.items():
            (step / n).write_bytes(bytes(data) if n == name else content)
        if name != "manifest.json":
            rewrite_manifest(step)
        try:
            load_checkpoint(step)
            outcomes["ok"] += 1
        except CheckpointError:
            outcomes["error"] += 1
    assert outcomes["error"] > 150  # the mutations really reach the parsers
    assert time.perf_counter() - start < 15


# ----------------------------------------------------------------------------------------- discovery
def test_resolve_missing_empty_and_garbage_dirs(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no run directory at"):
        resolve_checkpoint(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="is not a run directory"):  # issue 12: says what it is
        resolve_checkpoint(empty)
    garbage = tmp_path / "garbage"
    (garbage / "checkpoints" / "step-xyz").mkdir(parents=True)
    (garbage / "checkpoints" / "step-00000001").mkdir()
    (garbage / "checkpoints" / "step-00000001" / "manifest.json").write_text("garbage")
    (garbage / "checkpoints" / "last").write_text("garbage")
    (garbage / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointNotFoundError, match="no valid checkpoint found in"):
        resolve_checkpoint(garbage)
    with pytest.raises(CheckpointNotFoundError):
        resolve_checkpoint(empty, "best")
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path / "nope")
    assert isinstance(CheckpointNotFoundError("x"), FileNotFoundError)


def test_resolve_explicit_step(run):
    step1 = run / "checkpoints" / "step-00000001"
    assert resolve_checkpoint(run, "step-00000001") == step1
    assert resolve_checkpoint(run, str(step1)) == step1
    with pytest.raises(CheckpointNotFoundError, match="step-00000042"):
        resolve_checkpoint(run, "step-00000042")


def test_missing_last_pointer_falls_back_with_warning(run):
    (run / "checkpoints" / "last").unlink()
    with pytest.warns(RuntimeWarning, match="last"):
        assert resolve_checkpoint(run).name == "step-00000002"


# ---------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_bytes_and_overwrite_protection(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(OutputExistsError, match="metrics.json"):
        atomic_write_bytes(target, b"new", overwrite=False)
    assert target.read_text() == "old"
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append((Path(a), Path(b))), real_replace(a, b)))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert seen and all(a.parent == b.parent == tmp_path for a, b in seen)  # temp file next to the target
    atomic_write_bytes(tmp_path / "fresh.bin", b"x", overwrite=False)
    assert (tmp_path / "fresh.bin").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bin", "metrics.json"]


def test_atomic_write_failure_leaves_old_content(tmp_path, monkeypatch):
    target = tmp_path / "samples.bin"
    atomic_write_bytes(target, b"old")

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="no space left on device at .*samples.bin"):
        atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["samples.bin"]


# ------------------------------------------------------------------------------------------- static check
def test_package_has_no_unsafe_deserialisation():
    banned = [r"pickle\.loads?\b", r"torch\.load\b", r"weights_only\s*=\s*False", r"allow_pickle\s*=\s*True",
              r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"pickle_module", r"\bcloudpickle\b", r"\bdill\b",
              r"\bimport\s+pickle\b"]
    modules = sorted((SRC / "bayesvae").rglob("*.py"))
    assert SRC / "bayesvae" / "checkpoint.py" in modules
    hits = [f"{m.name}:{i}: {line.strip()}" for m in modules
            for i, line in enumerate(m.read_text(encoding="utf-8").splitlines(), 1)
            for pat in banned if re.search(pat, line)]
    assert hits == []
