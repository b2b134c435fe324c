"""The `bayesvae` command end to end: every subcommand on digits, MNIST and user data; bad inputs exit 2 with a
message and no traceback, touching nothing; SIGTERM/SIGINT commit a checkpoint and exit 143/130.

Most calls run in-process through `bayesvae.cli.main` (fast); a real process is used where one matters
(tracebacks, signals). Reliability notes, tests 16, 34-40, 43, 47.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bayesvae
from bayesvae import checkpoint as ckpt
from bayesvae.cli import main
from mnist_path import MNIST_DIR

SMALL = ["--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]
N_TEST_DIGITS = 180




def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (SHA-256, mtime_ns) of every file under root (bytes and timestamps must not change)."""
    root = Path(root)
    if root.is_file():
        return {root.name: (hashlib.sha256(root.read_bytes()).hexdigest(), root.stat().st_mtime_ns)}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _train(out: Path, *extra: str, epochs: int = 2, data: str = "digits") -> None:
    assert main(["train", "--data", data, "--epochs", str(epochs), *SMALL, "--out", str(out), *extra]) == 0


def _grid_scale(img: Image.Image, cols: int, rows: int, tile: int = 8) -> int:
    """The PNG is a cols x rows grid of tile x tile images with 1-pixel padding, enlarged by an integer factor."""
    base = (cols * (tile + 1) + 1, rows * (tile + 1) + 1)
    scale = img.size[0] // base[0]
    assert scale >= 1 and img.size == (base[0] * scale, base[1] * scale), (img.size, base)
    return scale


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli_procs(*argvs: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run several `python -m bayesvae ...` processes concurrently (they spend most of their time importing)."""
    procs = [subprocess.Popen([sys.executable, "-m", "bayesvae", *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for a in argvs]
    out = []
    for p, a in zip(procs, argvs, strict=True):
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(a, p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A 2-epoch digits run shared by the read-only tests (never modified: tests that damage it copy it)."""
    run = tmp_path_factory.mktemp("digits") / "run"
    _train(run)
    return run


@pytest.fixture(scope="module")
def one_checkpoint_run(tmp_path_factory) -> Path:
    """A 1-epoch run: exactly one checkpoint, which `best` and `last` both name."""
    run = tmp_path_factory.mktemp("one") / "run"
    _train(run, epochs=1)
    assert len(ckpt.list_checkpoints(run)) == 1
    return run


@pytest.fixture
def damaged(one_checkpoint_run, tmp_path) -> tuple[Path, Path]:
    """A private copy of the one-checkpoint run and the path of its only checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(one_checkpoint_run, run)
    return run, ckpt.list_checkpoints(run)[0]


# ------------------------------------------------------------------------------------------------------------ help
HELP = {
    ("train",): ["--data", "--out", "--resume", "--epochs", "--likelihood", "--overwrite", "--checkpoint-every",
                 "--on-nonfinite", "--epochs-override"],
    ("evaluate",): ["run_dir", "--samples", "--split", "--json", "--checkpoint"],
    ("sample",): ["run_dir", "-n", "--out", "--overwrite", "--seed", "--draw"],
    ("reconstruct",): ["run_dir", "--out", "-n", "--split", "--overwrite"],
    ("encode",): ["run_dir", "--out", "--split", "--overwrite"],
    ("score",): ["run_dir", "--out", "--samples", "--split", "--overwrite"],
    ("data", "fetch"): ["name", "--cache-dir"],
    ("data", "info"): ["source", "--data-dir"],
}


@pytest.mark.parametrize("command", list(HELP), ids=" ".join)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: bayesvae " + " ".join(command))
    for option in HELP[command]:
        assert option in text, option


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ digits end to end
def test_train_reports_data_likelihood_and_result(tmp_path, capsys):
    _train(tmp_path / "run", epochs=1)
    err = capsys.readouterr().err
    assert "data: digits (image, shape [1, 8, 8], train/valid/test 1437/180/180)" in err
    assert "likelihood: bernoulli" in err and "dynamic binarisation" in err
    assert re.search(r"epoch 1/1 loss \d+\.\d+ nats", err)
    assert "done: 1 epochs, 23 steps" in err
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"run.json", "checkpoints", "metrics.jsonl", "metrics.csv"} <= files


def test_evaluate_json(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--json", "--samples", "137"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_samples"] == 137 and result["num_examples"] == N_TEST_DIGITS
    assert result["split"] == "test" and result["likelihood"] == "bernoulli"
    assert result["checkpoint"].endswith(ckpt.resolve_checkpoint(digits_run, "best").name)
    assert result["nll_nats"] > 0  # binary data: p(x) <= 1
    assert result["log_likelihood_nats"] == -result["nll_nats"]
    # the importance-sampled bound is at least the ELBO on average (0.5 nats covers the 1-sample ELBO's noise)
    assert result["nll_nats"] <= -result["elbo_nats"] + 0.5
    assert -result["elbo_nats"] == pytest.approx(result["reconstruction_nll_nats"] + result["kl_nats"], rel=1e-9)
    assert result["latent_dim"] == 4 and len(result["kl_per_dimension_nats"]) == 4
    assert sum(result["kl_per_dimension_nats"]) == pytest.approx(result["kl_nats"], rel=1e-5)
    assert result["nll_bits_per_dim"] == pytest.approx(result["nll_nats"] / (64 * math.log(2)))


def test_evaluate_text_and_limit(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--samples", "20", "--limit", "50", "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "valid: 50 examples, K = 20 importance samples" in out and "active units" in out


def test_sample_png(digits_run, tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert main(["sample", str(digits_run), "-n", "16", "--out", str(out)]) == 0
    assert "wrote 16 samples" in capsys.readouterr().err
    with Image.open(out) as img:
        img.load()
        assert img.mode == "L"
        _grid_scale(img, 4, 4)  # 4x4 grid of 8x8 images


def test_sample_is_reproducible_with_a_seed(digits_run, tmp_path):
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    for path, seed in ((a, "3"), (b, "3"), (c, "4")):
        assert main(["sample", str(digits_run), "-n", "5", "--seed", seed, "--out", str(path)]) == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    x = np.load(a)
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1  # the data's layout
    # ... which `score --data` takes (an (n, 64) file used to be refused by the run that wrote it)
    assert main(["score", str(digits_run), "--data", str(a), "--samples", "3", "--out", str(tmp_path / "s.csv")]) == 0


def test_reconstruct_png(digits_run, tmp_path):
    out = tmp_path / "recon.png"
    assert main(["reconstruct", str(digits_run), "-n", "4", "--out", str(out)]) == 0
    with Image.open(out) as img:
        img.load()
        _grid_scale(img, 8, 1)  # one row: input, reconstruction x 4


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_encode(digits_run, tmp_path, suffix):
    out = tmp_path / f"z{suffix}"
    assert main(["encode", str(digits_run), "--out", str(out)]) == 0
    if suffix == ".npy":
        z = np.load(out)
        assert z.shape == (N_TEST_DIGITS, 4) and np.isfinite(z).all()
        return
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "z0", "z1", "z2", "z3", "label"]  # index: the row in the source, as in `score`
    assert len(rows) == 1 + N_TEST_DIGITS
    labels = [int(r[5]) for r in rows[1:]]
    assert set(labels) <= set(range(10)) and len(set(labels)) == 10
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:5])
    assert len({int(r[0]) for r in rows[1:]}) == N_TEST_DIGITS


def test_score_csv(digits_run, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", str(digits_run), "--samples", "50", "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "nll_nats"]
    index = [int(r[0]) for r in rows[1:]]
    assert len(index) == N_TEST_DIGITS and len(set(index)) == N_TEST_DIGITS
    # index is the row of the source, not of the split: those rows of scikit-learn's digits are the test split
    from sklearn.datasets import load_digits
    source = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[index]
    from bayesvae.data import load_dataset
    test = load_dataset("digits").test[:, 0]
    assert torch.equal(source, test)
    nll = [float(r[1]) for r in rows[1:]]
    assert all(v > 0 and math.isfinite(v) for v in nll)


def test_load_returns_a_working_model(digits_run):
    model = bayesvae.load(digits_run)
    assert not model.training and model.latent_dim == 4
    torch.manual_seed(0)
    x = model.sample(4)
    assert x.shape == (4, 1, 8, 8) and bool(((x >= 0) & (x <= 1)).all())
    last = bayesvae.load(digits_run, "last")
    assert isinstance(last, bayesvae.VAE)


@pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="MNIST files absent")
def test_mnist_slice_end_to_end(tmp_path, capsys):
    run = tmp_path / "mnist"
    _train(run, "--data-dir", str(MNIST_DIR), "--limit", "300", epochs=1, data="mnist")
    err = capsys.readouterr().err
    assert "mnist (image, shape [1, 28, 28], train/valid/test 300/300/300)" in err and "likelihood: bernoulli" in err
    assert main(["evaluate", str(run), "--json", "--samples", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 300 and result["num_samples"] == 50
    assert 0 < result["nll_nats"] <= -result["elbo_nats"] + 1.0
    assert result["nll_nats"] < 784 * math.log(2)  # better than a coin per pixel after one epoch


# ------------------------------------------------------------------------------------------------ user data
def _write_npy(path: Path, n=80, d=5, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(2.0, 3.0, size=(n, d))
    np.save(path, x)
    return x


def _write_csv(path: Path, n=60, seed=1) -> None:
    x = np.random.default_rng(seed).normal(size=(n, 3))
    path.write_text("height,width,depth\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in x) + "\n")


def _write_images(root: Path, n_per_class=10, size=8) -> None:
    rng = np.random.default_rng(2)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(root / cls / f"{i}.png")


def test_npy_table(tmp_path, capsys):
    data = tmp_path / "table.npy"
    x = _write_npy(data)
    _train(tmp_path / "run", epochs=1, data=str(data))
    err = capsys.readouterr().err
    assert "likelihood: student-t" in err and "(tabular, shape [5]" in err
    for suffix in (".npy", ".csv"):
        out = tmp_path / f"s{suffix}"
        assert main(["sample", str(tmp_path / "run"), "-n", "300", "--out", str(out)]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (300, 5) and np.isfinite(s).all()
    # samples come back in the user's units (the data were standardised: mean 2, std 3)
    assert abs(s.mean() - x.mean()) < 1.5
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == "x0,x1,x2,x3,x4"
    # PNG needs images: refused
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s.png")]) == 2
    assert "PNG output needs image data" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_csv_with_header(tmp_path, capsys):
    data = tmp_path / "table.csv"
    _write_csv(data)
    _train(tmp_path / "run", epochs=1, data=str(data))
    assert "likelihood: student-t" in capsys.readouterr().err
    out = tmp_path / "s.csv"
    assert main(["sample", str(tmp_path / "run"), "-n", "7", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "height,width,depth" and len(lines) == 8
    assert main(["encode", str(tmp_path / "run"), "--out", str(tmp_path / "z.csv")]) == 0
    assert (tmp_path / "z.csv").read_text().splitlines()[0] == "index,z0,z1,z2,z3"  # no labels: no label column


def test_image_folder(tmp_path, capsys):
    folder = tmp_path / "pets"
    _write_images(folder)
    _train(tmp_path / "run", epochs=1, data=str(folder))
    err = capsys.readouterr().err
    assert "(image, shape [3, 8, 8], train/valid/test 16/2/2)" in err
    assert "likelihood: gaussian-learned" in err and "dequantisation" in err
    out = tmp_path / "s.png"
    assert main(["sample", str(tmp_path / "run"), "-n", "4", "--out", str(out)]) == 0
    with Image.open(out) as img:
        img.load()
        assert img.mode == "RGB"
        _grid_scale(img, 2, 2)
    assert main(["sample", str(tmp_path / "run"), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 3, 8, 8)  # images in their own layout


def test_data_info(tmp_path, capsys):
    _write_npy(tmp_path / "t.npy")
    _write_csv(tmp_path / "t.csv")
    _write_images(tmp_path / "imgs")
    expected = {
        "t.npy": {"kind": "tabular", "event_shape": [5], "default_likelihood": "student-t"},
        "t.csv": {"kind": "tabular", "event_shape": [3], "feature_names": ["height", "width", "depth"]},
        "imgs": {"kind": "image", "event_shape": [3, 8, 8], "classes": ["cats", "dogs"], "labels": True},
    }
    for name, fields in expected.items():
        assert main(["data", "info", str(tmp_path / name)]) == 0
        info = json.loads(capsys.readouterr().out)
        for k, v in fields.items():
            assert info[k] == v, (name, k)
        assert len(info["fingerprint"]) == 64 and sum(info["splits"].values()) > 0
    assert main(["data", "info", "digits"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 1437, "valid": 180, "test": 180} and info["value_range"] == [0.0, 1.0]


# ------------------------------------------------------------------------------------------------------ bad inputs
def _bad_data_files(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra train arguments, fragments the error must contain); writes the files."""
    root.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[13, 2] = np.nan
    np.save(root / "nan.npy", x)
    (root / "inf.csv").write_text("a,b,c\n1,2,3\n4,inf,6\n7,8,9\n")
    np.save(root / "wide.npy", np.random.default_rng(0).normal(size=(30, 3)))
    (root / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n10,11,12\n")
    (root / "empty.csv").write_text("")
    images = root / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return {
        "nan-npy": (["--data", str(root / "nan.npy")], ["nan.npy", "non-finite", "example 13", "feature 2"]),
        "inf-csv": (["--data", str(root / "inf.csv")], ["inf.csv", "line 3", "column 2", "'b'", "non-finite"]),
        "bernoulli-on-table": (["--data", str(root / "wide.npy"), "--likelihood", "bernoulli"],
                               ["wide.npy", "bernoulli", "[0, 1]"]),
        "ragged-csv": (["--data", str(root / "ragged.csv")], ["ragged.csv", "line 4", "2 columns, expected 3"]),
        "broken-image": (["--data", str(images)], ["broken.png", "unreadable or corrupt image"]),
        "empty-csv": (["--data", str(root / "empty.csv")], ["empty.csv", "no data rows"]),
    }


@pytest.mark.parametrize("case", ["nan-npy", "inf-csv", "bernoulli-on-table", "ragged-csv", "broken-image",
                                  "empty-csv"])
def test_bad_data_exits_2_before_touching_anything(tmp_path, capsys, case):
    args, fragments = _bad_data_files(tmp_path / "data")[case]
    before = _tree(tmp_path)
    out = tmp_path / "run"
    assert main(["train", *args, *SMALL, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, fragment
    assert not out.exists()  # failed before the run directory was created
    assert _tree(tmp_path) == before
    if case != "bernoulli-on-table":  # `data info` validates the data the same way
        assert main(["data", "info", args[1]]) == 2
        assert fragments[0] in capsys.readouterr().err


def test_bad_inputs_in_a_real_process_show_no_traceback_unless_debug(tmp_path):
    cases = _bad_data_files(tmp_path / "data")
    nan_args, _ = cases["nan-npy"]
    ragged_args, _ = cases["ragged-csv"]
    before = _tree(tmp_path)
    plain_nan, plain_ragged, plain_missing, debug_nan = _cli_procs(
        ["train", *nan_args, "--out", str(tmp_path / "a")],
        ["train", *ragged_args, "--out", str(tmp_path / "b")],
        ["evaluate", str(tmp_path / "no-such-run")],
        ["--debug", "train", *nan_args, "--out", str(tmp_path / "c")],
    )
    for proc, fragment in ((plain_nan, "nan.npy"), (plain_ragged, "line 4"), (plain_missing, "no-such-run")):
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and fragment in proc.stderr
        assert proc.stderr.strip().startswith("error: ")
    assert debug_nan.returncode != 0
    assert "Traceback (most recent call last)" in debug_nan.stderr and "DataValidationError" in debug_nan.stderr
    assert _tree(tmp_path) == before


def _assert_exit_2(argv, capsys, *fragments) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_evaluate_missing_run_dir(tmp_path, capsys):
    _assert_exit_2(["evaluate", str(tmp_path / "nope")], capsys, "nope")
    _assert_exit_2(["evaluate", str(tmp_path)], capsys, "checkpoint")  # exists, but holds no run
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint(damaged, capsys):
    run, step = damaged
    tensors = step / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    before = _tree(run)
    _assert_exit_2(["evaluate", str(run), "--samples", "5"], capsys, str(tensors), "truncated")
    _assert_exit_2(["sample", str(run), "--out", str(run.parent / "s.png")], capsys, str(tensors))
    # resuming from the only (damaged) checkpoint is refused too, naming it
    _assert_exit_2(["train", "--resume", str(run)], capsys, "no valid checkpoint", str(tensors))
    assert _tree(run) == before and not (run.parent / "s.png").exists()


def test_bit_flip_is_detected(damaged, capsys):
    run, step = damaged
    tensors = step / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) - 100] ^= 0x04  # one bit in the tensor payload
    tensors.write_bytes(bytes(data))
    before = _tree(run)
    _assert_exit_2(["evaluate", str(run), "--samples", "5"], capsys, str(tensors), "SHA-256")
    assert _tree(run) == before


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this creates the marker file
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_posing_as_safetensors_never_runs(damaged, capsys, kind):
    run, step = damaged
    marker = run.parent / "PWNED"
    payload = {"model.encoder": _Payload(str(marker))}
    if kind == "pickle":
        blob = pickle.dumps(payload, protocol=4)
    else:
        buf = io.BytesIO()
        torch.save(payload, buf)
        blob = buf.getvalue()
    pickle.loads(pickle.dumps(_Payload(str(marker)))).close()  # the payload is live...
    assert marker.exists()
    marker.unlink()  # ...and is armed again
    (step / "tensors.safetensors").write_bytes(blob)
    manifest = json.loads((step / "manifest.json").read_text())  # a consistent manifest: hashes match
    manifest["files"]["tensors.safetensors"] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    (step / "manifest.json").write_text(json.dumps(manifest))
    before = _tree(run)
    for argv in (["evaluate", str(run), "--samples", "5"], ["sample", str(run), "--out", str(run.parent / "x.npy")],
                 ["train", "--resume", str(run)]):
        err = _assert_exit_2(argv, capsys)
        assert "pickle" in err and "tensors.safetensors" in err
    assert not marker.exists()
    assert _tree(run) == before


def test_train_refuses_existing_run_dir(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    before = _tree(run)
    _assert_exit_2(["train", *SMALL, "--epochs", "1", "--out", str(run)], capsys, str(run), "--overwrite")
    assert _tree(run) == before
    # a non-empty directory that is not a run is never deleted, even with --overwrite
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    before = _tree(other)
    _assert_exit_2(["train", *SMALL, "--epochs", "1", "--out", str(other), "--overwrite"], capsys,
                   "not a bayesvae run directory")
    assert _tree(other) == before


def test_train_overwrite_replaces_a_run(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    _train(run, "--overwrite", epochs=1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000023"]


def test_sample_refuses_existing_output_and_bad_n(digits_run, tmp_path, capsys):
    out, table = tmp_path / "s.png", tmp_path / "t.csv"
    out.write_bytes(b"an earlier result")
    table.write_text("an,earlier\nresult,!\n")
    before = _tree(tmp_path)
    _assert_exit_2(["sample", str(digits_run), "--out", str(out)], capsys, str(out), "--overwrite")
    for n in ("0", "-3"):
        _assert_exit_2(["sample", str(digits_run), "-n", n, "--out", str(tmp_path / "new.png")], capsys, "-n")
    _assert_exit_2(["sample", str(digits_run), "--out", str(tmp_path / "s.txt")], capsys, ".png")
    _assert_exit_2(["sample", str(digits_run), "--out", str(tmp_path / "no" / "dir.png")], capsys, "does not exist")
    for command, target in ((["encode"], table), (["score", "--samples", "5"], table), (["reconstruct"], out)):
        _assert_exit_2([*command, str(digits_run), "--out", str(target)], capsys, "already exists")
    assert _tree(tmp_path) == before
    assert main(["sample", str(digits_run), "-n", "4", "--out", str(out), "--overwrite"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"


def test_resume_nonexistent_path(tmp_path, capsys):
    _assert_exit_2(["train", "--resume", str(tmp_path / "missing")], capsys, "missing")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "notes.txt").write_text("hello")
    before = _tree(garbage)
    _assert_exit_2(["train", "--resume", str(garbage)], capsys, "checkpoint")
    assert _tree(garbage) == before


def test_invalid_options_exit_2(tmp_path, capsys):
    _assert_exit_2(["train", *SMALL, "--epochs", "0", "--out", str(tmp_path / "r")], capsys, "epochs")
    _assert_exit_2(["train", *SMALL, "--likelihood-options", "{not json", "--out", str(tmp_path / "r")], capsys)
    _assert_exit_2(["train", "--data", str(tmp_path / "nothing.npy"), "--out", str(tmp_path / "r")], capsys,
                   "nothing.npy", "no such file")
    assert not (tmp_path / "r").exists()



@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_rejects_nonpositive_limit(digits_run, capsys, limit):
    _assert_exit_2(["evaluate", str(digits_run), "--samples", "5", "--limit", limit, "--json"], capsys, "limit")


@pytest.mark.parametrize("n", ["0", "-2"])
def test_reconstruct_rejects_nonpositive_n(digits_run, tmp_path, capsys, n):
    _assert_exit_2(["reconstruct", str(digits_run), "-n", n, "--out", str(tmp_path / "r.png")], capsys, "-n")
    assert not (tmp_path / "r.png").exists()


def test_likelihood_options_must_be_a_json_object(tmp_path, capsys):
    _assert_exit_2(["train", *SMALL, "--epochs", "1", "--likelihood-options", "[1]", "--out", str(tmp_path / "r")],
                   capsys, "likelihood-options")
    assert not (tmp_path / "r").exists()

# --------------------------------------------------------------------------------------------------------- signals
def _start_training(run: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bayesvae", "train", "--data", "digits", "--epochs", "1000", *SMALL,
           "--out", str(run)]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=_env())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_and_sigint_commit_a_checkpoint_and_resume(tmp_path):
    runs_ = {signal.SIGTERM: tmp_path / "term", signal.SIGINT: tmp_path / "int"}
    procs = {s: _start_training(run, tmp_path / f"{run.name}.log") for s, run in runs_.items()}
    try:
        deadline = time.monotonic() + 90
        waiting = dict(procs)
        while waiting and time.monotonic() < deadline:  # signal each once it is training (a checkpoint exists)
            for s, proc in list(waiting.items()):
                assert proc.poll() is None, (tmp_path / f"{runs_[s].name}.log").read_text()
                if (runs_[s] / "checkpoints" / "last").exists():
                    proc.send_signal(s)
                    del waiting[s]
            time.sleep(0.01)
        assert not waiting, "training never wrote its first checkpoint"
        codes = {s: proc.wait(60) for s, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == {signal.SIGTERM: 143, signal.SIGINT: 130}
    for run in runs_.values():
        err = (tmp_path / f"{run.name}.log").read_text()
        assert "Traceback" not in err
        m = re.search(r"stopped: checkpoint committed at (\S+);", err)
        assert m, err
        path = Path(m.group(1))
        assert path.parent == run / "checkpoints" and path == ckpt.resolve_checkpoint(run, "last")
        ckpt.verify_checkpoint(path)
        assert f"--resume {run}" in err
    # the SIGTERMed run resumes (to the end of its current epoch + 1) and finishes with exit 0
    run = runs_[signal.SIGTERM]
    _, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
    stopped_at = state["trainer"]["global_step"]
    target = state["trainer"]["epoch"] + 1
    assert main(["train", "--resume", str(run), "--epochs-override", str(target)]) == 0
    _, final = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run, "last"))
    assert final["trainer"]["epoch"] == target and final["trainer"]["global_step"] == target * 23 > stopped_at


def test_tensorboard_logging_writes_events_or_says_what_to_install(tmp_path, capsys):
    run = tmp_path / "tb"
    code = main(["train", *SMALL, "--epochs", "1", "--tensorboard", "--out", str(run), "--report-samples", "0"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert code == 2 and "pip install 'bayesvae[tensorboard]'" in capsys.readouterr().err
        assert not run.exists()  # refused before anything was written
    else:
        assert code == 0 and any((run / "tensorboard").iterdir())


def test_export_writes_a_small_model_that_evaluates_like_the_run(digits_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(digits_run), "--out", str(out)]) == 0
    tensors, state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(out, "best"))
    assert tensors and all(k.startswith("model.") for k in tensors)  # no optimiser or RNG state
    assert "trainer" not in state and "optimizer" not in state
    capsys.readouterr()
    results = []
    for run in (digits_run, out):
        assert main(["evaluate", str(run), "--samples", "7", "--json", "--seed", "3"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["nll_nats"] == results[1]["nll_nats"]
    assert main(["export", str(digits_run), "--out", str(out)]) == 2  # never over an existing output


def test_score_new_data_uses_the_runs_standardisation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    table = rng.normal(5.0, 2.0, size=(200, 3)).astype(np.float32)
    np.save(tmp_path / "t.npy", table)
    run = tmp_path / "tab"
    assert main(["train", "--data", str(tmp_path / "t.npy"), *SMALL, "--epochs", "2", "--out", str(run),
                 "--report-samples", "0"]) == 0
    odd = table[:5].copy()
    odd[0] = 1000.0  # far outside the training data, in the file's own units
    np.save(tmp_path / "new.npy", odd)
    assert main(["score", str(run), "--data", str(tmp_path / "new.npy"), "--samples", "20",
                 "--out", str(tmp_path / "s.csv")]) == 0
    rows = (tmp_path / "s.csv").read_text().splitlines()
    nll = [float(r.split(",")[1]) for r in rows[1:]]
    assert len(nll) == 5 and nll[0] > 10 * max(nll[1:])  # the outlier is flagged
    # the rest look like training data only if the run's z-scoring was applied (raw values ~5 sd away: ~40 nats;
    # a 3-d standard normal: ~4.3 nats)
    assert max(nll[1:]) < 15
    np.save(tmp_path / "wrong.npy", table[:, :2])
    assert main(["score", str(run), "--data", str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "w.csv")]) == 2
    assert "shape" in capsys.readouterr().err and not (tmp_path / "w.csv").exists()


def test_train_warns_about_a_gaussian_on_binary_data(tmp_path, capsys):
    x = (np.random.default_rng(0).random((60, 6)) < 0.5).astype(np.float32)
    np.save(tmp_path / "bits.npy", x)
    _train(tmp_path / "run", "--likelihood", "gaussian-fixed", epochs=1, data=str(tmp_path / "bits.npy"))
    err = capsys.readouterr().err
    assert "note: a Gaussian density on 0/1 data is fitted to them dequantised over 2 levels" in err
    _train(tmp_path / "run2", epochs=1, data=str(tmp_path / "bits.npy"))  # the default (bernoulli): no warning
    assert "a Gaussian density on binary data" not in capsys.readouterr().err  # (coin flips may warn of collapse)


def _train_args(argv):
    """The train options ``bayesvae train ARGV`` would run with (presets applied, nothing trained)."""
    from bayesvae import cli as cli_module
    parser = cli_module.build_parser()
    cli_module._apply_preset(parser, ["train", *argv])  # noqa: SLF001
    return parser.parse_args(["train", *argv])


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "src" / "bayesvae" /
                                                         "presets").glob("*.json")))
def test_every_shipped_preset_is_accepted_by_the_cli(name):
    """A preset key the CLI cannot take made `train --preset` exit 2; each shipped preset must parse."""
    args = _train_args(["--preset", name])
    assert args.epochs >= 1 and args.objective in ("elbo", "iwae")


def test_mnist_best_preset_is_the_60_minute_recipe_and_explicit_flags_win():
    args = _train_args(["--preset", "mnist-best"])
    assert (args.objective, args.samples, args.precision, args.lr_schedule) == ("iwae", 10, "auto", "cosine")
    assert args.max_minutes == 60.0  # the preset's max_seconds 3600, in the CLI's unit
    args = _train_args(["--preset", "mnist-best", "--max-minutes", "5", "--samples", "5", "--precision", "float32"])
    assert (args.max_minutes, args.samples, args.precision) == (5.0, 5, "float32")


def test_the_last_line_says_which_rule_ended_a_run_before_its_epochs(tmp_path, capsys):
    """A run ended by its time budget said "(stopped early)", the words of early stopping on patience."""
    assert main(["train", "--data", "digits", "--epochs", "1000", "--max-minutes", "0.01", "--hidden", "16",
                 "--latent-dim", "2", "--report-samples", "0", "--out", str(tmp_path / "budget")]) == 0
    out = "".join(capsys.readouterr())
    assert "(time budget of 0.01 min used)" in out and "stopped early" not in out
    # the epoch cap ending a run that had a budget to spare is no budget's doing (it used to say it was)
    assert main(["train", "--data", "digits", "--epochs", "2", "--max-minutes", "5", "--hidden", "16",
                 "--latent-dim", "2", "--report-samples", "0", "--out", str(tmp_path / "cap")]) == 0
    done = [line for line in "".join(capsys.readouterr()).splitlines() if line.startswith("done:")][-1]
    assert done.startswith("done: 2 epochs") and "budget" not in done
