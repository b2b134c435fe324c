"""Every layout of array data: flattened images are images, tables stream, and nothing is killed for memory.

References are independent: numpy (reshape, /255, float64 mean and std), the 3-D image file that the loader has
always read (for the flattened one), and the in-memory path of the same file (for the on-disk one)."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import torch

from bayesvae import checkpoint as ckpt
from bayesvae import data as bdata
from bayesvae import runs
from bayesvae.arrays import Rows, as_tensor, column_moments
from bayesvae.cli import main
from bayesvae.config import TrainConfig
from bayesvae.errors import InsufficientMemoryError
from bayesvae.training import Callback, TrainingInterrupted
from mnist_path import MNIST_DIR


def _both(monkeypatch, path, **kw):
    """(on disk, in memory): the same file loaded through each path."""
    with monkeypatch.context() as m:
        m.setattr(bdata, "LAZY_BYTES", 0)
        disk = bdata.load_dataset(str(path), **kw)
    with monkeypatch.context() as m:
        m.setattr(bdata, "LAZY_BYTES", 1 << 62)
        mem = bdata.load_dataset(str(path), **kw)
    return disk, mem


# ------------------------------------------------------------------------------------------------ flattened images
def _mnist_slice(n: int) -> np.ndarray:
    with gzip.open(MNIST_DIR / "train-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(16 + n * 784), np.uint8, offset=16)
    return raw.reshape(n, 28, 28)


@pytest.mark.skipif(not MNIST_DIR.exists(), reason="MNIST not available")
@pytest.mark.parametrize("on_disk", [False, True])
def test_flat_mnist_trains_and_scores_like_the_3d_file(tmp_path, monkeypatch, on_disk):
    """The (N, 784) uint8 layout of fetch_openml/CSV exports, with --likelihood bernoulli: same preparation
    (dynamic binarisation, fixed-seed test draws), so the same seed gives the same test NLL as the (N, 28, 28) file
    (tolerance 0: the runs are bitwise the same; before, the 2-D file was refused as a table of constant columns)."""
    if on_disk:
        monkeypatch.setattr(bdata, "LAZY_BYTES", 0)
    images = _mnist_slice(1200)
    np.save(tmp_path / "flat.npy", images.reshape(len(images), 784))
    np.save(tmp_path / "cube.npy", images)
    nll = {}
    for name in ("flat", "cube"):
        out = tmp_path / f"run-{name}"
        assert main(["train", "--data", str(tmp_path / f"{name}.npy"), "--likelihood", "bernoulli", "--epochs", "1",
                     "--latent-dim", "4", "--hidden", "32", "--batch-size", "100", "--report-samples", "0",
                     "--device", "cpu", "--out", str(out)]) == 0
        run = runs.load_run(out)
        assert run.state["data"]["preparation"] == "binarize" and run.state["data"]["standardization"] is None
        assert run.model_config.data_shape == (1, 28, 28)
        x = run.prepared().test
        assert isinstance(x, torch.Tensor) != on_disk
        torch.manual_seed(0)
        from bayesvae.estimators import estimate_log_likelihood
        nll[name] = -estimate_log_likelihood(run.model, x, 20, seed=5, batch_size=50)
    assert torch.isfinite(nll["flat"]).all() and float(nll["flat"].mean()) > 0
    assert torch.equal(nll["flat"], nll["cube"])


@pytest.mark.parametrize("on_disk", [False, True])
def test_flattened_layouts_are_found_and_prepared_as_images(tmp_path, monkeypatch, on_disk):
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0 if on_disk else 1 << 62)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (50, 64), dtype=np.uint8)
    cases = {
        "u8": (u8, {}, (1, 8, 8), u8.reshape(50, 1, 8, 8) / np.float32(255), "image"),
        "openml": (u8.astype(np.float64), {}, (1, 8, 8), u8.reshape(50, 1, 8, 8) / np.float32(255), "image"),
        "k255": ((u8 / np.float32(255)).astype(np.float32), {}, (1, 8, 8), u8.reshape(50, 1, 8, 8) / np.float32(255),
                 "image"),
        "u8-not-square": (u8[:, :60], {}, (60,), u8[:, :60] / np.float32(255), "image"),
        "rgb": (u8[:, :48], {"image_shape": (4, 4, 3)}, (3, 4, 4),
                u8[:, :48].reshape(50, 4, 4, 3).transpose(0, 3, 1, 2) / np.float32(255), "image"),
        "u8-binary": ((u8 > 128).astype(np.uint8), {}, (64,), (u8 > 128).astype(np.float32), "binary"),
        "binary-shaped": ((u8 > 128).astype(np.uint8), {"image_shape": "8 8"}, (1, 8, 8),
                          (u8 > 128).astype(np.float32).reshape(50, 1, 8, 8), "binary"),
    }
    for name, (a, kw, event, expected, kind) in cases.items():
        np.save(tmp_path / f"{name}.npy", a)
        ds = bdata.load_dataset(str(tmp_path / f"{name}.npy"), valid_fraction=0, test_fraction=0.2, **kw)
        assert (ds.kind, ds.event_shape, ds.standardization) == (kind, event, None), name
        got = torch.cat([as_tensor(ds.train), as_tensor(ds.test)])
        rows = np.concatenate([ds.rows("train"), ds.rows("test")])
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected[rows], dtype=np.float32))), name
        assert ds.describe().get("layout") or kind == "binary", name
    ds = bdata.load_dataset(str(tmp_path / "u8.npy"))
    assert ds.levels == 256 and runs.preparation_for(ds, "gaussian-learned") == "dequantize"
    assert runs.preparation_for(ds, "bernoulli") == "binarize" and bdata.default_likelihood(ds) == "bernoulli"


def test_integer_tables_stay_tables_and_shapes_are_checked(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "counts.npy", rng.integers(0, 200, (40, 10)).astype(np.int64))  # no square side: a table
    ds = bdata.load_dataset(str(tmp_path / "counts.npy"))
    assert ds.kind == "tabular" and ds.standardization is not None
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, (40, 64), dtype=np.uint8))
    table = bdata.load_dataset(str(tmp_path / "u8.npy"), image_shape="none")
    assert table.kind == "tabular" and table.event_shape == (64,) and table.standardization is not None
    with pytest.raises(bdata.DataValidationError, match=r"--image-shape 5 5 1 holds 25 pixels, but each row has 64"):
        bdata.load_dataset(str(tmp_path / "u8.npy"), image_shape=(5, 5))
    with pytest.raises(bdata.ConfigError, match="C = 1 or 3"):
        bdata.load_dataset(str(tmp_path / "u8.npy"), image_shape=(4, 4, 4))
    np.save(tmp_path / "normal.npy", rng.normal(size=(40, 64)))
    with pytest.raises(bdata.DataValidationError, match="are not pixels"):
        bdata.load_dataset(str(tmp_path / "normal.npy"), image_shape=(8, 8))
    with pytest.raises(bdata.ConfigError, match="holds images already"):
        bdata.load_dataset("digits", image_shape=(8, 8))


def test_a_csv_of_pixels_is_images(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (30, 64))
    labels = rng.integers(0, 3, 30)
    lines = ["label," + ",".join(f"p{j}" for j in range(64))]
    lines += [f"{y}," + ",".join(map(str, row)) for y, row in zip(labels, pixels, strict=True)]
    (tmp_path / "px.csv").write_text("\n".join(lines) + "\n")
    ds = bdata.load_dataset(str(tmp_path / "px.csv"), label_column="label", valid_fraction=0, test_fraction=0)
    assert ds.kind == "image" and ds.event_shape == (1, 8, 8) and ds.standardization is None
    rows = ds.rows("train")
    expected = (pixels[rows].astype(np.float32) / np.float32(255)).reshape(-1, 1, 8, 8)
    assert torch.equal(ds.train, torch.from_numpy(expected)) and ds.train_labels.tolist() == labels[rows].tolist()


def test_cli_image_shape_is_stored_and_drawn(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "rgb.npy", rng.integers(0, 256, (120, 6 * 5 * 3), dtype=np.uint8))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "rgb.npy"), "--image-shape", "6", "5", "3", "--epochs", "1",
                 "--latent-dim", "2", "--hidden", "8", "--report-samples", "0", "--device", "cpu",
                 "--out", str(out)]) == 0
    run = runs.load_run(out)
    assert run.model_config.data_shape == (3, 6, 5) and tuple(run.spec.image_shape) == (6, 5, 3)
    assert run.state["data"]["preparation"] == "dequantize"  # colour pixels: Gaussian learned σ, dequantised
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert main(["train", "--data", str(tmp_path / "rgb.npy"), "--image-shape", "7", "5", "3", "--epochs", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------------- tables stream
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int32, ">f8"])
def test_a_table_on_disk_equals_the_table_in_memory(tmp_path, monkeypatch, dtype):
    rng = np.random.default_rng(4)
    a = (rng.normal(3, 2, (3000, 7)) * [1, 10, 100, 1, 1, 0.1, 5]).astype(dtype)
    np.save(tmp_path / "t.npy", a)
    disk, mem = _both(monkeypatch, tmp_path / "t.npy")
    assert isinstance(disk.train, Rows) and isinstance(mem.train, torch.Tensor)
    assert isinstance(disk.train.array, np.memmap)
    for split in ("train", "valid", "test"):
        assert torch.equal(as_tensor(getattr(disk, split)), getattr(mem, split)), split
    assert disk.fingerprint() == mem.fingerprint() and disk.kind == mem.kind == "tabular"
    # the statistics: numpy's float64 mean and std of the training rows (the values as float32, as loaded)
    train = a[disk.rows("train")].astype(np.float32).astype(np.float64)
    mean, std = disk.standardization
    assert np.allclose(mean.numpy(), train.mean(0).astype(np.float32), rtol=1e-6, atol=0)
    ref_std = np.maximum(train.std(0), 1e-8)  # a constant column (int32: 0.1 x normal rounds to 0) is floored
    assert np.allclose(std.numpy(), ref_std.astype(np.float32), rtol=1e-6, atol=0)
    z = (a[disk.rows("test")].astype(np.float32).astype(np.float64) - train.mean(0)) / ref_std
    assert np.allclose(as_tensor(disk.test).numpy(), z, rtol=0, atol=1e-5)


def test_one_pass_moments_match_numpy_two_pass():
    rng = np.random.default_rng(5)
    x = rng.normal(1e4, 1e-2, (100_003, 3))  # large mean, small spread: summing squares would cancel
    n, mean, std = column_moments(x[i: i + 4096] for i in range(0, len(x), 4096))
    ref = x.astype(np.float32).astype(np.float64)
    assert n == len(x)
    assert np.allclose(mean, ref.mean(0), rtol=1e-14, atol=0) and np.allclose(std, ref.std(0), rtol=1e-9, atol=0)


def test_streamed_table_density_includes_the_jacobian(tmp_path, monkeypatch):
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0)
    rng = np.random.default_rng(6)
    np.save(tmp_path / "t.npy", (rng.normal(size=(400, 3)) * [1.0, 50.0, 0.02]).astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "t.npy"), "--epochs", "1", "--latent-dim", "2", "--hidden", "8",
                 "--report-samples", "0", "--device", "cpu", "--out", str(out)]) == 0
    run = runs.load_run(out)
    assert isinstance(run.dataset().train, Rows)
    from bayesvae.estimators import evaluate
    result = evaluate(run.model, run.prepared().test, 10)
    log_scale = float(np.log(np.asarray(run.state["data"]["standardization"][1], dtype=np.float32)).sum())
    assert result["standardization_log_scale_sum_nats"] == pytest.approx(log_scale, abs=1e-4)
    assert result["nll_nats"] - result["nll_standardized_nats"] == pytest.approx(log_scale, abs=1e-3)


# ---------------------------------------------------------------------------------- resume on every streamed layout
class _StopAt(Callback):
    def __init__(self, k):
        self.k = k

    def on_step_end(self, trainer, metrics):
        if trainer.state.global_step == self.k:
            trainer.stop_requested = True


def _layout_file(tmp_path, name):
    rng = np.random.default_rng(7)
    arrays = {"flat-u8": rng.integers(0, 256, (500, 64), dtype=np.uint8),
              "table-f64": rng.normal(size=(500, 5)) * [1, 2, 3, 4, 5],
              "nhwc-u8": rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8),
              "nhw-f16": (rng.integers(0, 256, (500, 5, 5)) / 255).astype(np.float16)}
    np.save(tmp_path / f"{name}.npy", arrays[name])
    return str(tmp_path / f"{name}.npy")


@pytest.mark.parametrize("order", ["full", "block"])
@pytest.mark.parametrize("name", ["flat-u8", "table-f64", "nhwc-u8", "nhw-f16"])
def test_resume_mid_epoch_is_exact_on_every_streamed_layout(tmp_path, monkeypatch, name, order):
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0)
    spec = runs.DataSpec(_layout_file(tmp_path, name))
    # 400 training rows: 13 steps an epoch; block order: blocks of 7 rows, windows of 3 blocks (21 rows), so the
    # interruption (step 18, in epoch 2) falls inside a window and batches straddle windows
    geometry = dict(block_rows=7, window_blocks=3) if order == "block" else {}
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, data_order=order, **geometry)
    model = dict(latent_dim=2, hidden=(8,))
    full = runs.train(spec, out=tmp_path / "full", train_config=cfg, **model)
    assert isinstance(full.train_data, Rows)
    assert (full.config.data_order, full.config.block_rows) == (order, geometry.get("block_rows", 0))
    with pytest.raises(TrainingInterrupted):
        runs.train(spec, out=tmp_path / "cut", train_config=cfg, callbacks=[_StopAt(18)], **model)
    torch.manual_seed(12345)
    runs.resume(tmp_path / "cut")
    a = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "full", "last"))[0]
    b = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "cut", "last"))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- refused before memory
def _forbid(monkeypatch, *names):
    def boom(*a, **k):
        raise AssertionError("the source was read although it was refused")
    for n in names:
        monkeypatch.setattr(bdata, n, boom)


def test_sources_that_cannot_fit_are_refused_before_reading(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "t.csv").write_text("a,b\n" + "1,2\n" * 5000)
    (tmp_path / "img").mkdir()
    for i in range(20):
        Image.fromarray(np.full((16, 16), i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    np.savez(tmp_path / "z.npz", x=np.zeros((2000, 50), np.float32))
    np.save(tmp_path / "big.npy", np.zeros((20000, 50), np.float32))
    monkeypatch.setenv("BAYESVAE_MEMORY_BYTES", "100000")  # 0.1 MB: not even the streamed .npy's buffers fit
    _forbid(monkeypatch, "_read_csv", "_read_image_dir", "_npz_array", "_scan_table", "_check_image_chunks")
    for src, figure in (("t.csv", "parsing about"), ("img", "decoding 20 images"), ("z.npz", "reading 100,000 values"),
                        ("big.npy", "streaming 20,000 examples of shape (50,)")):
        with pytest.raises(InsufficientMemoryError, match=re.escape(figure)) as info:
            bdata.load_dataset(str(tmp_path / src))
        assert "MiB" in str(info.value) and "refused before anything was allocated" in str(info.value)
        if src != "big.npy":
            assert "bayesvae data convert" in str(info.value)
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("BAYESVAE_MEMORY_BYTES", str(1 << 40))
    with pytest.raises(AssertionError, match="was read"):  # with room, the same sources are read
        bdata.load_dataset(str(tmp_path / "t.csv"))


def test_an_npy_that_would_not_fit_in_memory_streams_instead(tmp_path, monkeypatch):
    np.save(tmp_path / "t.npy", np.random.default_rng(9).integers(0, 256, (20000, 64), dtype=np.uint8))
    monkeypatch.setattr(bdata, "LAZY_BYTES", 1 << 62)
    monkeypatch.setenv("BAYESVAE_MEMORY_BYTES", str(1 << 30))
    mem = bdata.load_dataset(str(tmp_path / "t.npy"))
    monkeypatch.setenv("BAYESVAE_MEMORY_BYTES", str(400 << 20))  # 20000 x 64 x 16 B = 20 MB + 256 MB buffers fit
    monkeypatch.setattr(bdata.memory, "MEMORY_BYTES_PER_VALUE", 300)  # ... but reading it in (pretend) does not
    disk = bdata.load_dataset(str(tmp_path / "t.npy"))
    assert isinstance(mem.train, torch.Tensor) and isinstance(disk.train, Rows)
    assert disk.fingerprint() == mem.fingerprint()


def test_estimates_cover_what_loading_takes(tmp_path):
    """The per-value figures are upper bounds: load a CSV and an .npz in a child process and compare its peak
    anonymous memory growth with the estimate (tolerance: the estimate may exceed it, never fall short)."""
    import subprocess
    import sys

    rng = np.random.default_rng(8)
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(40000, 50)), delimiter=",", fmt="%.6f")
    np.savez(tmp_path / "z.npz", x=rng.normal(size=(100000, 50)).astype(np.float32))
    code = r"""
import sys, threading, time, resource
from pathlib import Path
import numpy as np
def anon():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) * 1024
from bayesvae import data as bdata, memory
peak = [0]; stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
src = sys.argv[1]
path = Path(src)
est = (bdata._csv_cells(path) * memory.CSV_BYTES_PER_CELL if src.endswith('.csv') else
       100000 * 50 * (4 + memory.NPZ_BYTES_PER_VALUE))
base = anon(); t = threading.Thread(target=sample); t.start()
ds = bdata.load_dataset(src)
stop.set(); t.join(); peak[0] = max(peak[0], anon())
print(peak[0] - base, est)
"""
    for src in ("t.csv", "z.npz"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / src)], capture_output=True, text=True,
                             check=True)
        grew, estimate = map(int, out.stdout.split())
        assert grew < estimate, (src, grew, estimate)


# ------------------------------------------------------------------------------------------------------- data convert
def _loads_the_same(src, npy, **kw):
    a, b = bdata.load_dataset(str(src), **kw), bdata.load_dataset(str(npy))
    assert a.fingerprint() == b.fingerprint() and (a.kind, a.event_shape) == (b.kind, b.event_shape)
    for split in ("train", "valid", "test"):
        assert torch.equal(as_tensor(getattr(a, split)), as_tensor(getattr(b, split))), split
        la, lb = getattr(a, f"{split}_labels"), getattr(b, f"{split}_labels")
        assert (la is None and lb is None) or torch.equal(la, lb), split
    return a, b


@pytest.mark.parametrize("pixels", [False, True])
def test_convert_a_csv_streams_it_into_the_same_data(tmp_path, capsys, pixels):
    import hashlib

    rng = np.random.default_rng(10)
    x = rng.integers(0, 256, (300, 64)) if pixels else rng.normal(size=(300, 5)) * [1, 1e3, 1e-3, 1, 1]
    y = rng.integers(0, 4, 300)
    names = [f"f{j}" for j in range(x.shape[1])]
    cells = [[f"{v}" if pixels else f"{v:.9g}" for v in row] for row in x]
    (tmp_path / "d.csv").write_text("kind," + ",".join(names) + "\n" +
                                    "".join(f"{yy}," + ",".join(r) + "\n" for yy, r in zip(y, cells, strict=True)))
    out = tmp_path / "d.npy"
    assert main(["data", "convert", str(tmp_path / "d.csv"), "--out", str(out), "--label-column", "kind"]) == 0
    err = capsys.readouterr().err
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"SHA-256 {digest}" in err and "convert: 300 / 300 rows" in err
    assert (tmp_path / "d.npy.sha256").read_text() == f"{digest}  d.npy\n"
    assert np.load(out).dtype == (np.uint8 if pixels else np.float32)
    assert np.load(tmp_path / "d.labels.npy").tolist() == y.tolist()
    a, b = _loads_the_same(tmp_path / "d.csv", out, label_column="kind")
    assert a.kind == ("image" if pixels else "tabular")
    # never replaced without --overwrite; with it, a conversion without labels removes the old labels
    assert main(["data", "convert", str(tmp_path / "d.csv"), "--out", str(out)]) == 2
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert main(["data", "convert", str(tmp_path / "d.csv"), "--out", str(out), "--overwrite"]) == 0  # kind: a feature
    assert np.load(out).shape == (300, x.shape[1] + 1) and not (tmp_path / "d.labels.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_convert_an_image_folder_keeps_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(11)
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(7):
            mode = "RGB" if (cls, i) == ("dog", 3) else "L"
            shape = (5, 6, 3) if mode == "RGB" else (5, 6)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / "img" / cls / f"{i}.png")
    out = tmp_path / "img.npy"
    assert main(["data", "convert", str(tmp_path / "img"), "--out", str(out)]) == 0
    assert np.load(out).shape == (14, 3, 5, 6)  # one colour image: all colour, as the loader does
    a, b = _loads_the_same(tmp_path / "img", out)
    assert b.class_names == ("cat", "dog") and a.class_names == b.class_names


def test_convert_an_npz_in_chunks(tmp_path, monkeypatch):
    from bayesvae import convert as conv

    rng = np.random.default_rng(12)
    np.savez_compressed(tmp_path / "z.npz", x=rng.integers(0, 256, (10000, 4, 4), dtype=np.uint8),
                        y=rng.integers(0, 3, 10000))
    monkeypatch.setattr(conv, "_ROWS", 999)  # several chunks, the last one short
    out = tmp_path / "z.npy"
    result = conv.convert(tmp_path / "z.npz", out)
    assert result["shape"] == [10000, 4, 4] and result["dtype"] == "uint8"
    _loads_the_same(tmp_path / "z.npz", out)
    np.savez(tmp_path / "s.npz", train=np.zeros((4, 2)), test=np.zeros((2, 2)))
    with pytest.raises(bdata.DataValidationError, match="holds the splits"):
        conv.convert(tmp_path / "s.npz", tmp_path / "s.npy")
    bad = rng.normal(size=(50, 3))
    bad[33, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(bdata.DataValidationError, match=r"nan\.npz: non-finite value nan at example 33, feature 2"):
        conv.convert(tmp_path / "nan.npz", tmp_path / "nan.npy")
    assert not (tmp_path / "nan.npy").exists() and not list(tmp_path.glob(".*part"))


def test_scoring_a_table_from_disk_equals_scoring_it_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    np.save(tmp_path / "t.npy", (rng.normal(size=(300, 4)) * [1, 10, 100, 1000]).astype(np.float32))
    np.save(tmp_path / "new.npy", (rng.normal(size=(40, 4)) * [1, 10, 100, 1000]).astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "t.npy"), "--epochs", "1", "--latent-dim", "2", "--hidden", "8",
                 "--report-samples", "0", "--device", "cpu", "--out", str(out)]) == 0
    run = runs.load_run(out)
    mem, rows = run.new_data(str(tmp_path / "new.npy"))
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0)
    disk, rows_disk = run.new_data(str(tmp_path / "new.npy"))
    assert isinstance(disk, Rows) and isinstance(mem, torch.Tensor) and rows.tolist() == rows_disk.tolist()
    assert torch.equal(as_tensor(disk), mem)
    mean, std = (np.asarray(v, np.float32).astype(np.float64) for v in run.state["data"]["standardization"])
    reference = (np.load(tmp_path / "new.npy").astype(np.float64) - mean) / std  # numpy, float64
    assert np.allclose(mem.numpy(), reference, rtol=0, atol=1e-5)


def test_batches_read_ahead_in_a_thread_train_exactly_as_in_memory(tmp_path, monkeypatch):
    """A split on disk is read a few batches ahead by a background thread; the run ends with the same weights as
    the same file trained in memory (read when asked), bit for bit."""
    import threading

    path = _layout_file(tmp_path, "flat-u8")
    threads = set()
    real = Rows.read

    def read(self, rows):
        threads.add(threading.current_thread().name.split("_")[0])
        return real(self, rows)
    monkeypatch.setattr(Rows, "read", read)
    cfg = TrainConfig(epochs=2, batch_size=32, seed=4)
    weights = {}
    for lazy in (0, 1 << 62):
        monkeypatch.setattr(bdata, "LAZY_BYTES", lazy)
        trainer = runs.train(runs.DataSpec(path), out=None, train_config=cfg, latent_dim=2, hidden=(8,))
        assert isinstance(trainer.train_data, Rows) == (lazy == 0)
        weights[lazy] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert "bayesvae-prefetch" in threads
    assert all(torch.equal(weights[0][k], weights[1 << 62][k]) for k in weights[0])


# ------------------------------------------------------------------------------------------- binary uint8 stacks
@pytest.mark.parametrize("shape", [(120, 8, 8), (120, 1, 8, 8), (120, 8, 8, 3)])
def test_a_uint8_stack_of_zeros_and_ones_is_binary_pixels_not_grey_levels(tmp_path, monkeypatch, capsys, shape):
    """(x > t).astype(np.uint8) is a common way to save binary images: its 1s are white pixels, not the grey level
    1/255. Reference: the same images saved as float32 0.0/1.0, which the loader always took as binary."""
    from PIL import Image

    rng = np.random.default_rng(3)
    u8 = (rng.random(shape) < 0.4).astype(np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    np.save(tmp_path / "f32.npy", u8.astype(np.float32))
    np.savez(tmp_path / "u8.npz", x=u8)
    ref = bdata.load_dataset(str(tmp_path / "f32.npy"))
    assert ref.kind == "binary"
    for src in ("u8.npy", "u8.npz"):
        for ds in (_both(monkeypatch, tmp_path / src) if src.endswith(".npy") else
                   (bdata.load_dataset(str(tmp_path / src)),)):
            assert ds.kind == "binary" and ds.value_range == (0.0, 1.0), src
            for split in ("train", "valid", "test"):
                assert torch.equal(as_tensor(getattr(ds, split)), as_tensor(getattr(ref, split))), (src, split)
            assert ds.describe()["layout"] == bdata.BINARY_UINT8_NOTE
            assert bdata.default_likelihood(ds) == "bernoulli" and not bdata.needs_binarization(ds, "bernoulli")
    if len(shape) == 3:  # a folder of PNGs of 0 and 1 reads the same way (the same rows: one file per image)
        (tmp_path / "img").mkdir()
        for i, im in enumerate(u8):
            Image.fromarray(im).save(tmp_path / "img" / f"{i:03d}.png")
        ds = bdata.load_dataset(str(tmp_path / "img"))
        assert ds.kind == "binary" and float(as_tensor(ds.train).max()) == 1.0
    grey = u8 * np.uint8(255)  # 0/255: grey levels that happen to be black and white, as before
    grey[0].flat[0] = 7
    np.save(tmp_path / "grey.npy", grey)
    ds = bdata.load_dataset(str(tmp_path / "grey.npy"))
    assert ds.kind == "image" and ds.describe().get("layout") is None
    assert main(["data", "info", str(tmp_path / "u8.npy")]) == 0
    assert "binary pixels (0 and 1), not as grey levels" in capsys.readouterr().out
