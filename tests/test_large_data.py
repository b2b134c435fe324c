"""Data larger than memory: image .npy files over LAZY_BYTES stay memory-mapped and are read a batch at a time.

Every check compares the on-disk path with the in-memory path of the same file (forced by moving the threshold),
which is the independent reference: same values, same fingerprint, same kind and levels, same training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesvae import checkpoint as ckpt
from bayesvae import data as bdata
from bayesvae import runs
from bayesvae.arrays import PreparedRows, Rows, as_tensor
from bayesvae.cli import main
from bayesvae.estimators import estimate_log_likelihood, evaluate


@pytest.fixture
def lazy(monkeypatch):
    """Make every image .npy take the on-disk path; returns a function that loads with the in-memory path."""
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0)

    def in_memory(path, **kw):
        with monkeypatch.context() as m:
            m.setattr(bdata, "LAZY_BYTES", 1 << 62)
            return bdata.load_dataset(str(path), **kw)
    return in_memory


def _images(path, shape=(300, 10, 10), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape).astype(np.uint8)
    a = a if dtype == np.uint8 else (a / 255.0).astype(dtype)
    np.save(path, a)
    return path


@pytest.mark.parametrize("shape,dtype", [((300, 10, 10), np.uint8), ((300, 6, 5, 3), np.uint8),
                                         ((300, 1, 7, 7), np.float32)])
def test_on_disk_split_equals_the_in_memory_one(tmp_path, lazy, shape, dtype):
    path = _images(tmp_path / "x.npy", shape, dtype)
    disk, mem = bdata.load_dataset(str(path)), lazy(path)
    assert isinstance(disk.train, Rows) and isinstance(mem.train, torch.Tensor)
    assert isinstance(disk.train.array, np.memmap) and disk.train.raw_dtype == dtype  # stays uint8 on disk
    for split in ("train", "valid", "test"):
        assert torch.equal(as_tensor(getattr(disk, split)), getattr(mem, split))
    assert disk.fingerprint() == mem.fingerprint()
    assert (disk.kind, disk.levels, disk.value_range, disk.event_shape) == (mem.kind, mem.levels, mem.value_range,
                                                                            mem.event_shape)
    idx = torch.tensor([5, 0, 17, 5])
    assert torch.equal(disk.train[idx], mem.train[idx])  # any order, repeats allowed
    assert torch.equal(as_tensor(disk.train[3:9]), mem.train[3:9])


def test_npy_is_opened_memory_mapped(tmp_path, monkeypatch):
    path = _images(tmp_path / "x.npy")
    modes = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: (modes.append(k.get("mmap_mode")), real(*a, **k))[1])
    bdata.load_dataset(str(path))
    assert modes == ["r"]


def test_chunked_checks_name_the_row(tmp_path, lazy):
    a = np.random.default_rng(0).random((40000, 4, 4)).astype(np.float32)
    a[33000, 2, 1] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(bdata.DataValidationError, match=r"non-finite value nan at example 33000, row 2, column 1"):
        bdata.load_dataset(str(tmp_path / "nan.npy"))
    a[33000, 2, 1] = 3.0
    np.save(tmp_path / "big.npy", a)
    with pytest.raises(bdata.DataValidationError, match=r"outside \[0, 1\] \(rows 32768 to"):
        bdata.load_dataset(str(tmp_path / "big.npy"))


def test_prepared_valid_split_is_fixed_and_independent_of_batching(tmp_path, lazy):
    ds = bdata.load_dataset(str(_images(tmp_path / "x.npy", (5000, 4, 4))))
    prepared = runs.prepare_data(ds, "bernoulli")
    assert isinstance(prepared.valid, PreparedRows) and prepared.preparation == "binarize"
    whole = as_tensor(prepared.valid)
    assert set(whole.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(whole, as_tensor(prepared.valid))  # the same draw every time
    pieces = torch.cat([as_tensor(prepared.valid[i: i + 37]) for i in range(0, len(prepared.valid), 37)])
    assert torch.equal(whole, pieces)
    assert torch.equal(prepared.valid[torch.tensor([400, 3])], whole[[400, 3]])
    p = as_tensor(ds.valid).mean()  # a fair draw: mean of the binarised values matches the grey levels
    assert abs(float(whole.mean()) - float(p)) < 0.01  # 8,000 pixels: 4 standard errors ~ 0.02 / 2
    deq = runs.prepare_data(ds, "gaussian-learned")
    d = as_tensor(deq.valid)
    k = torch.round(as_tensor(ds.valid) * 255)
    assert deq.preparation == "dequantize" and bool(((d * 256 >= k) & (d * 256 < k + 1)).all())


def test_evaluation_streams_a_split_on_disk_with_the_same_values(tmp_path, lazy):
    ds = bdata.load_dataset(str(_images(tmp_path / "x.npy", (400, 6, 6))))
    import bayesvae as bv

    torch.manual_seed(0)
    # grey levels: a Gaussian decoder (a Bernoulli one refuses them)
    model = bv.build_model(bv.ModelConfig(data_shape=(1, 6, 6), latent_dim=2, hidden=(16,),
                                          likelihood="gaussian-learned"))
    a = estimate_log_likelihood(model, ds.test, 30, seed=4, batch_size=7)
    b = estimate_log_likelihood(model, as_tensor(ds.test), 30, seed=4, batch_size=7)
    assert torch.equal(a, b)
    torch.manual_seed(1)
    ra = evaluate(model, ds.test, 10)
    torch.manual_seed(1)
    rb = evaluate(model, as_tensor(ds.test), 10)
    assert ra == rb


def test_training_on_disk_resumes_exactly(tmp_path, lazy):
    path = _images(tmp_path / "x.npy", (600, 6, 6))
    common = ["--data", str(path), "--latent-dim", "2", "--hidden", "16", "--report-samples", "0", "--device", "cpu",
              "--batch-size", "64"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs-override", "2", "--device", "cpu"]) == 0
    a = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "full", "last"))[0]
    b = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "cut", "last"))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = runs.load_run(tmp_path / "full")
    assert isinstance(run.dataset().train, Rows)


def test_score_streams_a_new_file_on_disk(tmp_path, lazy):
    path = _images(tmp_path / "x.npy", (400, 6, 6))
    common = ["--latent-dim", "2", "--hidden", "16", "--report-samples", "0", "--device", "cpu"]
    assert main(["train", "--data", str(path), *common, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    run = runs.load_run(tmp_path / "run")
    x, rows = run.new_data(str(_images(tmp_path / "new.npy", (50, 6, 6), seed=1)))
    assert isinstance(x, PreparedRows) and len(x) == 50 and rows.tolist() == list(range(50))
    assert main(["score", str(tmp_path / "run"), "--data", str(tmp_path / "new.npy"), "--samples", "8",
                 "--out", str(tmp_path / "s.csv"), "--device", "cpu"]) == 0
    scores = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert scores.shape[0] == 50 and np.isfinite(scores).all()
