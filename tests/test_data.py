"""Tests of bayesvae.data: every source loads to the documented shapes, and every bad input fails before training
with a DataValidationError that names the file and the location."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import math
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesvae import data as D
from bayesvae.errors import ConfigError, DataValidationError
from mnist_path import MNIST_DIR

MNIST_FILES = [f"{s}.gz" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
needs_mnist = pytest.mark.skipif(not all((MNIST_DIR / f).is_file() for f in MNIST_FILES),
                                 reason=f"MNIST IDX files not found in {MNIST_DIR}")


def _err(fn, *args, **kw) -> str:
    with pytest.raises(DataValidationError) as info:
        fn(*args, **kw)
    return str(info.value)


# ------------------------------------------------------------------------------------------------------- digits
def test_digits_shapes_labels_splits_and_kind():
    ds = D.load_dataset("digits")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1437, 180, 180)
    assert ds.kind == "image" and ds.event_shape == (1, 8, 8) and ds.num_dims == 64
    assert ds.train.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert ds.value_range == (0.0, 1.0) and ds.standardization is None
    assert len(ds.train_labels) == 1437 and set(ds.train_labels.tolist()) == set(range(10))
    assert D.default_likelihood(ds) == "bernoulli" and D.needs_binarization(ds, "bernoulli")
    # the splits partition the whole data set: same multiset of (image, label) rows as sklearn's
    from sklearn.datasets import load_digits
    bunch = load_digits()
    full = np.c_[bunch.images.reshape(-1, 64), bunch.target]  # grey levels 0..16, label
    ours = np.c_[torch.cat([ds.train, ds.valid, ds.test]).reshape(-1, 64).numpy() * 16,
                 torch.cat([ds.train_labels, ds.valid_labels, ds.test_labels]).numpy()]
    assert sorted(map(tuple, full.round().astype(int))) == sorted(map(tuple, ours.round().astype(int)))


def test_split_is_seeded_and_test_set_ignores_valid_fraction():
    a, b, c = D.load_dataset("digits", seed=1), D.load_dataset("digits", seed=1), D.load_dataset("digits", seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    d = D.load_dataset("digits", seed=1, valid_fraction=0.3)
    assert torch.equal(a.test, d.test) and len(d.valid) == 539


# -------------------------------------------------------------------------------------------------------- MNIST
@needs_mnist
def test_mnist_limit_shapes():
    ds = D.load_dataset("mnist", data_dir=str(MNIST_DIR), limit=7)
    assert [tuple(t.shape) for t in (ds.train, ds.valid, ds.test)] == [(7, 1, 28, 28)] * 3
    assert ds.kind == "image" and ds.train_labels.tolist()[:3] == [5, 0, 4]  # MNIST's famous first digits
    assert 0.0 <= float(ds.train.min()) and float(ds.train.max()) == 1.0
    assert len(D.load_dataset("mnist", data_dir=str(MNIST_DIR), limit=1000).valid) == 400


@needs_mnist
def test_mnist_full_protocol_split():
    ds = D.load_dataset("mnist", data_dir=str(MNIST_DIR))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (59_600, 400, 10_000)
    counts = torch.bincount(torch.cat([ds.train_labels, ds.valid_labels]), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # README's published counts
    assert D.default_likelihood(ds) == "bernoulli" and D.needs_binarization(ds, "bernoulli")


def test_mnist_missing_files_says_how_to_fetch(tmp_path):
    msg = _err(D.load_dataset, "mnist", data_dir=str(tmp_path))
    assert "train-images-idx3-ubyte" in msg and "bayesvae data fetch mnist" in msg and "--data-dir" in msg


def test_mnist_default_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESVAE_DATA", str(tmp_path))
    assert D.default_cache_dir() == tmp_path / "mnist"
    assert str(tmp_path / "mnist") in _err(D.load_dataset, "mnist")


def _mnist_copy(tmp_path: Path) -> Path:
    out = tmp_path / "mnist"
    out.mkdir()
    for f in MNIST_FILES:
        (out / f).symlink_to(MNIST_DIR / f)
    return out


@needs_mnist
@pytest.mark.parametrize("content, expected", [
    (b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(1000), "truncated"),
    (b"\x00\x00\x09\x03" + bytes(64), "bad IDX header"),
    (b"\x00\x00", "bad IDX header"),
])
def test_mnist_corrupt_idx(tmp_path, content, expected):
    d = _mnist_copy(tmp_path)
    (d / "train-images-idx3-ubyte").write_bytes(content)  # an uncompressed file takes precedence over .gz
    msg = _err(D.load_dataset, "mnist", data_dir=str(d), limit=2)
    assert expected in msg and str(d / "train-images-idx3-ubyte") in msg


@needs_mnist
def test_mnist_corrupt_gzip_and_wrong_count(tmp_path):
    d = _mnist_copy(tmp_path)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "t10k-labels-idx1-ubyte.gz" in _err(D.load_dataset, "mnist", data_dir=str(d), limit=2)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5)))
    assert "expected 10000" in _err(D.load_dataset, "mnist", data_dir=str(d), limit=2)


# ------------------------------------------------------------------------------------------------ custom formats
def test_npy_2d_tabular_is_standardised_with_train_stats_only(tmp_path):
    rng = np.random.default_rng(0)
    x = np.c_[np.arange(50.0), rng.normal(5, 3, size=(50, 2)), np.full(50, 7.0)]  # col 0 = row id, col 3 constant
    np.save(tmp_path / "t.npy", x)
    ds = D.load_dataset(str(tmp_path / "t.npy"))
    assert ds.kind == "tabular" and ds.event_shape == (4,)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (40, 5, 5)
    mean, std = ds.standardization
    raw_train = ds.train * std + mean
    ids = raw_train[:, 0].round().long()
    assert np.allclose(mean.numpy(), x[ids.numpy()].mean(0), atol=1e-4)  # train rows only
    assert np.allclose(std[:3].numpy(), x[ids.numpy()].std(0)[:3], rtol=1e-4)
    assert not np.isclose(mean[1].item(), x[:, 1].mean(), atol=1e-6)  # differs from the all-rows mean
    assert torch.isfinite(ds.valid).all() and ds.describe()["constant_columns"] == [3]
    assert D.default_likelihood(ds) == "student-t"  # tables: docs/tabular-defaults.md
    assert D.load_dataset(str(tmp_path / "t.npy"), standardize=False).standardization is None


@pytest.mark.parametrize("shape, event", [((6, 5, 4), (1, 5, 4)), ((6, 3, 5, 4), (3, 5, 4)), ((6, 5, 4, 3), (3, 5, 4)),
                                          ((6, 5, 4, 1), (1, 5, 4))])
def test_npy_uint8_images(tmp_path, shape, event):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    np.save(tmp_path / "im.npy", a)
    ds = D.load_dataset(str(tmp_path / "im.npy"), valid_fraction=0, test_fraction=0)
    assert ds.kind == "image" and ds.event_shape == event and ds.standardization is None
    expected = a.reshape(6, *event) if len(shape) == 3 or shape[1] == 3 else np.moveaxis(a, 3, 1)
    assert torch.allclose(ds.train, torch.from_numpy(expected / 255.0).float())
    assert D.default_likelihood(ds) == ("bernoulli" if event[0] == 1 else "gaussian-learned")


def test_npz_with_given_splits_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {s: rng.random((n, 3)).astype(np.float32) for s, n in (("train", 8), ("valid", 2), ("test", 3))}
    labels = {f"{s}_labels": np.arange(len(a)) for s, a in arrays.items()}
    np.savez(tmp_path / "s.npz", **arrays, **labels)
    ds = D.load_dataset(str(tmp_path / "s.npz"), standardize=False)
    assert torch.equal(ds.train, torch.from_numpy(arrays["train"]))
    assert torch.equal(ds.test, torch.from_numpy(arrays["test"]))
    assert ds.valid_labels.tolist() == [0, 1] and ds.kind == "tabular"
    np.savez(tmp_path / "half.npz", **arrays, train_labels=labels["train_labels"])
    assert "labels" in _err(D.load_dataset, str(tmp_path / "half.npz"))


def test_npz_with_x_and_y_labels_follow_rows(tmp_path):
    y = np.arange(30) % 4
    x = np.repeat(y[:, None], 3, axis=1).astype(np.float64) * 0.25  # each row encodes its own label
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    ds = D.load_dataset(str(tmp_path / "xy.npz"), standardize=False)
    for xs, ys in ((ds.train, ds.train_labels), (ds.valid, ds.valid_labels), (ds.test, ds.test_labels)):
        assert torch.equal((xs[:, 0] * 4).round().long(), ys)
    assert ds.kind == "tabular" and ds.standardization is None
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (24, 3, 3)


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n\n4,5,6.5\n7,8,9\n")
    ds = D.load_dataset(str(tmp_path / "h.csv"), standardize=False, valid_fraction=0, test_fraction=0)
    assert ds.feature_names == ("a", "b", "c") and ds.kind == "tabular"
    assert ds.train.tolist() == [[1, 2, 3], [4, 5, 6.5], [7, 8, 9]]
    (tmp_path / "n.csv").write_text("1,0\n0,1\n1,1\n")
    ds = D.load_dataset(str(tmp_path / "n.csv"), valid_fraction=0, test_fraction=0)
    assert ds.feature_names is None and ds.kind == "binary" and ds.standardization is None
    assert D.default_likelihood(ds) == "bernoulli" and not D.needs_binarization(ds, "bernoulli")
    forced = D.load_dataset(str(tmp_path / "n.csv"), valid_fraction=0, test_fraction=0, standardize=True)
    assert forced.kind == "tabular" and forced.standardization is not None and abs(float(forced.train.mean())) < 1e-6


def _png(path: Path, mode: str, size=(4, 3), value=100):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value, 0, 255) if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)


def test_image_folder_grey(tmp_path):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", "L", value=60 * i)
    ds = D.load_dataset(str(tmp_path / "imgs"), valid_fraction=0, test_fraction=0)
    assert ds.kind == "image" and ds.event_shape == (1, 3, 4) and ds.train_labels is None
    assert sorted(round(v * 255) for v in ds.train[:, 0, 0, 0].tolist()) == [0, 60, 120, 180]


def test_image_folder_colour_and_mixed_becomes_rgb(tmp_path):
    _png(tmp_path / "imgs" / "a.png", "RGB")
    _png(tmp_path / "imgs" / "b.jpg", "L", value=255)
    _png(tmp_path / "imgs" / "c.bmp", "L", value=0)
    ds = D.load_dataset(str(tmp_path / "imgs"), valid_fraction=0, test_fraction=0)
    assert ds.event_shape == (3, 3, 4) and ds.kind == "image"
    assert ds.train[0, :, 0, 0].mul(255).round().tolist() == [100, 0, 255]
    assert D.default_likelihood(ds) == "gaussian-learned"


def test_image_folder_class_subfolders(tmp_path):
    for cls, n in (("zebra", 2), ("apple", 3)):
        for i in range(n):
            _png(tmp_path / "imgs" / cls / f"{i}.png", "L", value=10 if cls == "apple" else 200)
    ds = D.load_dataset(str(tmp_path / "imgs"), valid_fraction=0, test_fraction=0)
    assert ds.class_names == ("apple", "zebra")
    assert torch.equal(ds.train_labels, (ds.train[:, 0, 0, 0] > 0.5).long())
    assert ds.train_labels.tolist().count(0) == 3


# --------------------------------------------------------------------------------------------------- bad inputs
def test_nan_in_npy_names_row_and_column(tmp_path):
    x = np.ones((5, 3))
    x[2, 1] = np.nan
    np.save(tmp_path / "n.npy", x)
    msg = _err(D.load_dataset, str(tmp_path / "n.npy"))
    assert "n.npy" in msg and "example 2, feature 1" in msg and "nan" in msg


def test_inf_in_image_stack_names_pixel(tmp_path):
    x = np.zeros((4, 1, 3, 3))
    x[3, 0, 2, 1] = -np.inf
    np.save(tmp_path / "i.npy", x)
    assert "example 3, channel 0, row 2, column 1" in _err(D.load_dataset, str(tmp_path / "i.npy"))


def test_inf_in_csv_names_line_and_column(tmp_path):
    (tmp_path / "f.csv").write_text("x,y\n1,2\n3,inf\n5,6\n")
    msg = _err(D.load_dataset, str(tmp_path / "f.csv"))
    assert "f.csv" in msg and "line 3" in msg and "column 2 ('y')" in msg


def test_ragged_csv_names_line_and_counts(tmp_path):
    (tmp_path / "r.csv").write_text("1,2,3\n4,5,6\n\n7,8\n")
    msg = _err(D.load_dataset, str(tmp_path / "r.csv"))
    assert "line 4" in msg and "has 2 columns, expected 3" in msg


def test_non_numeric_csv_cell(tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n1,2\n3,oops\n")
    msg = _err(D.load_dataset, str(tmp_path / "c.csv"))
    assert "line 3, column 2 ('b')" in msg and "'oops'" in msg
    (tmp_path / "e.csv").write_text("1,2\n3,\n4,5\n")
    assert "line 2, column 2" in _err(D.load_dataset, str(tmp_path / "e.csv"))


@pytest.mark.parametrize("text", ["", "\n\n", "a,b\n"])
def test_empty_csv(tmp_path, text):
    (tmp_path / "e.csv").write_text(text)
    assert "no data rows" in _err(D.load_dataset, str(tmp_path / "e.csv"))


def test_unreadable_image_named(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", "L")
    (tmp_path / "imgs" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "1.png" in _err(D.load_dataset, str(tmp_path / "imgs"))


def test_mixed_image_sizes_named(tmp_path):
    _png(tmp_path / "imgs" / "a.png", "L", size=(4, 3))
    _png(tmp_path / "imgs" / "b.png", "L", size=(5, 3))
    _png(tmp_path / "imgs" / "c.png", "L", size=(4, 3))
    msg = _err(D.load_dataset, str(tmp_path / "imgs"))
    assert "b.png" in msg and "5x3" in msg and "4x3" in msg and "esize" in msg


def test_empty_npy_and_too_few_examples(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    assert "no examples" in _err(D.load_dataset, str(tmp_path / "e.npy"))
    np.save(tmp_path / "two.npy", np.zeros((2, 3)))
    assert "at least 3" in _err(D.load_dataset, str(tmp_path / "two.npy"))


def test_object_npz_refused_without_pickle(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    msg = _err(D.load_dataset, str(tmp_path / "o.npz"))
    assert "o.npz" in msg and "'x'" in msg and "pickle" in msg


def test_float64_overflow_on_cast(tmp_path):
    x = np.ones((4, 2))
    x[1, 0] = 1e300
    np.save(tmp_path / "big.npy", x)
    msg = _err(D.load_dataset, str(tmp_path / "big.npy"))
    assert "example 1, feature 0" in msg and "overflows float32" in msg
    (tmp_path / "big.csv").write_text("1,2\n3,1e39\n5,6\n")
    assert "line 2, column 2" in _err(D.load_dataset, str(tmp_path / "big.csv"))


@pytest.mark.parametrize("array, expected", [
    (np.ones((4, 2), dtype=np.complex64), "complex"), (np.array([["a", "b"]] * 4), "Strings"),
    (np.ones(5), "expected a 2-D table"), (np.ones((4, 5, 5, 5)), "no channel axis"),
    (np.full((4, 5, 5), 3.0), "neither a table"),
])
def test_bad_arrays(tmp_path, array, expected):
    np.save(tmp_path / "bad.npy", array)
    msg = _err(D.load_dataset, str(tmp_path / "bad.npy"))
    assert expected in msg and "bad.npy" in msg


def test_bad_sources_and_options(tmp_path):
    assert "no such file" in _err(D.load_dataset, str(tmp_path / "missing.npy"))
    (tmp_path / "x.dat").write_text("1")  # (.txt is text now: bayesvae.text)
    assert "unsupported file type" in _err(D.load_dataset, str(tmp_path / "x.dat"))
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY\x01\x00")
    assert "trunc.npy" in _err(D.load_dataset, str(tmp_path / "trunc.npy"))
    with pytest.raises(ConfigError, match="valid_fraction"):
        D.load_dataset("digits", valid_fraction=1.5)
    with pytest.raises(ConfigError, match="tabular"):
        D.load_dataset("digits", standardize=True)


# ---------------------------------------------------------------------------------------- likelihood and binarisation
def test_check_likelihood_support(tmp_path):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(20, 3)))
    ds = D.load_dataset(str(tmp_path / "t.npy"))
    msg = _err(D.check_likelihood_support, ds, "bernoulli")
    lo, hi = ds.value_range
    assert f"{lo:g}" in msg and f"{hi:g}" in msg and "gaussian" in msg.lower()
    D.check_likelihood_support(ds, "gaussian-learned")
    np.save(tmp_path / "u.npy", np.arange(60, dtype=np.int16).reshape(20, 3))  # a table (uint8 rows are pixels)
    raw = D.load_dataset(str(tmp_path / "u.npy"), standardize=False)
    assert "59" in _err(D.check_likelihood_support, raw, "bernoulli")
    D.check_likelihood_support(D.load_dataset("digits"), "bernoulli")
    assert not D.needs_binarization(D.load_dataset("digits"), "gaussian-learned")


def test_binarize_mean_matches_p():
    p = torch.tensor([0.0, 0.03, 0.5, 0.9, 1.0]).repeat(100_000, 1)
    draws = D.binarize(p, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and set(draws.unique().tolist()) <= {0.0, 1.0}
    sigma = (p[0] * (1 - p[0]) / 100_000).sqrt()
    assert ((draws.mean(0) - p[0]).abs() <= 5 * sigma + 1e-12).all()  # 5 sigma; exact at p = 0 and 1
    with pytest.raises(DataValidationError):
        D.binarize(torch.tensor([1.5]))


def test_fixed_binarization_is_deterministic():
    x = D.load_dataset("digits").test
    a, b, c = D.fixed_binarization(x, 123), D.fixed_binarization(x, 123), D.fixed_binarization(x, 124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    D.fixed_binarization(x, 123)  # a private generator: the global RNG is not consumed
    assert torch.equal(torch.rand(1), expected)


# ------------------------------------------------------------------------------------------- summary & fingerprint
def test_fingerprint_ignores_name_and_sees_content(tmp_path):
    x = np.random.default_rng(0).random((10, 3))
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x)
    x[0, 0] += 0.5
    np.save(tmp_path / "c.npy", x)
    fa, fb, fc = (D.load_dataset(str(tmp_path / f"{n}.npy")).fingerprint() for n in "abc")
    assert fa == fb != fc and len(fa) == 64


def test_describe_and_info_are_json(tmp_path):
    info = D.dataset_info("digits", limit=10)
    assert json.loads(json.dumps(info))["splits"] == {"train": 10, "valid": 10, "test": 10}
    assert info["default_likelihood"] == "bernoulli" and info["labels"] and len(info["fingerprint"]) == 64


def test_module_never_unpickles():
    src = Path(D.__file__).read_text()
    assert "allow_pickle=True" not in src and "import pickle" not in src and src.count("allow_pickle=False") >= 2


# ------------------------------------------------------------------------------------------------- fetch_mnist
@pytest.fixture
def mnist_server(tmp_path):
    """A local HTTP server (no network in tests) serving a folder; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    server.shutdown()
    server.server_close()
    thread.join()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@needs_mnist
def test_fetch_mnist_from_local_mirror_then_skips(tmp_path, mnist_server):
    served, url = mnist_server
    shutil.copytree(MNIST_DIR, served / "mnist")
    out = D.fetch_mnist(str(tmp_path / "cache"), mirrors=[_dead_url(), url], timeout=10)
    assert sorted(p.name for p in out.iterdir()) == sorted(MNIST_FILES)  # no temp files left
    assert D.load_dataset("mnist", data_dir=str(out), limit=3).train.shape == (3, 1, 28, 28)
    assert D.fetch_mnist(str(out), mirrors=[_dead_url()], timeout=10) == out  # all present and valid: no download


@needs_mnist
def test_fetch_mnist_checksum_failure_leaves_nothing(tmp_path, mnist_server):
    served, url = mnist_server
    shutil.copytree(MNIST_DIR, served / "mnist")
    raw = bytearray(gzip.decompress((MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] ^= 1  # a valid gzip of tampered content
    (served / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    cache = tmp_path / "cache"
    msg = _err(D.fetch_mnist, str(cache), mirrors=[url], timeout=10)
    assert "checksum" in msg and "train-labels-idx1-ubyte.gz" in msg and "--data-dir" in msg
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert [p.name for p in cache.iterdir()] == ["train-images-idx3-ubyte.gz"]  # only the file before it


def test_fetch_mnist_network_failure_names_url(tmp_path, mnist_server):
    served, url = mnist_server  # serves an empty folder: 404 for every file
    dead = _dead_url()
    msg = _err(D.fetch_mnist, str(tmp_path / "c"), mirrors=[dead, url], timeout=10)
    assert f"{dead}train-images-idx3-ubyte.gz" in msg and f"{url}train-images-idx3-ubyte.gz" in msg
    assert "--data-dir" in msg and list((tmp_path / "c").iterdir()) == []


def test_math_sanity_of_split_sizes():
    ds = D.load_dataset("digits", valid_fraction=0.25, test_fraction=0.05)
    assert len(ds.test) == math.floor(1797 * 0.05 + 0.5) and len(ds.valid) == math.floor(1797 * 0.25 + 0.5)


@pytest.mark.parametrize("scale,levels", [(255, 256), (16, 17), (3, 256), (None, None)])
def test_pixel_levels_are_found_from_the_data(tmp_path, scale, levels):
    from bayesvae import runs

    rng = np.random.default_rng(0)
    if scale is None:  # continuous values in [0, 1]: nothing to dequantise, values used as they are
        x = rng.random((60, 1, 4, 4)).astype(np.float32)
    else:
        x = (rng.integers(0, scale + 1, (60, 1, 4, 4)) / scale).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dataset = D.load_dataset(str(tmp_path / "x.npy"))
    assert dataset.kind == "image"
    assert dataset.levels == levels
    prepared = runs.prepare_data(dataset, "gaussian-learned")
    assert prepared.levels == levels
    if levels is None:
        assert prepared.preparation == "none" and torch.equal(prepared.test, dataset.test)
    else:  # each value lands in its own bin [k / L, (k + 1) / L)
        assert prepared.preparation == "dequantize"
        k = torch.round(dataset.test * (levels - 1))
        assert bool(((prepared.test >= k / levels) & (prepared.test < (k + 1) / levels)).all())


def test_levels_are_decided_from_every_value_not_a_prefix():
    """Issue 13.11: the grid was chosen from the first 2^20 values only, so data whose later values need a finer
    grid got None (or a grid that does not fit them)."""
    from bayesvae.data import Dataset
    n = (1 << 20) + 4096
    values = torch.tensor([0.0, 0.5, 1.0]).repeat(n // 3 + 1)[:n]  # on the 3-level grid ...
    values[-7:] = 0.25  # ... but the last few need 5 levels
    x = values.reshape(-1, 64)
    ds = Dataset("t", "image", x, x[:0], x[:0])
    assert ds.levels == 5
    assert Dataset("t", "image", x[:-1], x[:0], x[:0]).levels == 3  # without the last row: 3 levels fit
    y = torch.tensor([0.0, 0.5, 1.0]).repeat(1000).reshape(-1, 10)
    assert Dataset("t", "image", y, y[:0], y[:0]).levels == 3
