"""The order of an epoch (bayesvae.orders): the block shuffle is a permutation with the block and window structure
it promises, uniform where it should be (chi-square, fixed seeds), a function of (seed, epoch) alone; ``auto`` picks
it only for a file on disk larger than the memory allows; the prefetcher asks the kernel for the next window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bayesvae import data as bdata
from bayesvae import orders, runs, training
from bayesvae.arrays import Rows
from bayesvae.cli import main
from bayesvae.config import TrainConfig


def _windows(order: np.ndarray, n: int, block_rows: int, window_blocks: int) -> list[np.ndarray]:
    """Cut an order into its windows, found from the data alone: a window ends when the rows seen so far are
    exactly ``window_blocks`` whole blocks (or the order ends)."""
    out, start, seen = [], 0, set()
    for i, r in enumerate(order.tolist()):
        seen.add(r // block_rows)
        done = list(seen)
        rows = sum(min(block_rows, n - b * block_rows) for b in done)
        if len(done) == window_blocks and rows == i + 1 - start or i == len(order) - 1:
            out.append(order[start : i + 1])
            start, seen = i + 1, set()
    return out


@pytest.mark.parametrize("n,block_rows,window_blocks", [(1000, 7, 3), (1000, 1000, 4), (64, 8, 1), (5, 10, 3)])
def test_block_order_is_a_permutation_of_whole_blocks_in_windows(n, block_rows, window_blocks):
    order = orders.block_order(n, 5, 2, block_rows, window_blocks).numpy()
    assert sorted(order.tolist()) == list(range(n))
    windows = _windows(order, n, block_rows, window_blocks)
    n_blocks = -(-n // block_rows)
    assert len(windows) == -(-n_blocks // window_blocks)
    for w in windows:  # each window is whole blocks: every block it touches, it holds entirely
        blocks = np.unique(w // block_rows)
        expected = np.concatenate([np.arange(b * block_rows, min((b + 1) * block_rows, n)) for b in blocks])
        assert np.array_equal(np.sort(w), expected)
        assert len(blocks) <= window_blocks
    assert torch.equal(orders.block_order(n, 5, 2, block_rows, window_blocks), torch.from_numpy(order))  # pure
    if n > block_rows:
        assert not torch.equal(orders.block_order(n, 5, 3, block_rows, window_blocks), torch.from_numpy(order))
        assert not torch.equal(orders.block_order(n, 6, 2, block_rows, window_blocks), torch.from_numpy(order))


def test_block_order_is_uniform_over_blocks_and_within_windows():
    """Over 2000 (seed, epoch) pairs: which block comes first is uniform over the 10 blocks, and where row 0 lands
    in its window is uniform over the window's 12 places (chi-square goodness of fit, p > 0.001 each)."""
    n, block_rows, window_blocks = 40, 4, 3
    first_block, place = np.zeros(10, int), np.zeros(12, int)
    for seed in range(2000):
        order = orders.block_order(n, seed, seed % 7, block_rows, window_blocks).numpy()
        first_block[order[0] // block_rows] += 1
        for w in _windows(order, n, block_rows, window_blocks):
            if 0 in w and len(w) == 12:
                place[int(np.nonzero(w == 0)[0][0])] += 1
    assert stats.chisquare(first_block).pvalue > 1e-3
    assert place.sum() > 1000 and stats.chisquare(place).pvalue > 1e-3


def test_full_order_is_the_trainers_historical_order():
    """The full shuffle is the permutation every run so far was trained on (resume of old runs stays exact)."""
    g = torch.Generator().manual_seed(3 * 1_000_003 + 4)
    assert torch.equal(orders.full_order(100, 3, 4), torch.randperm(100, generator=g))


def test_auto_chooses_block_only_for_a_file_beyond_memory(tmp_path):
    a = np.zeros((1000, 784), np.uint8)
    np.save(tmp_path / "x.npy", a)
    rows = Rows(np.load(tmp_path / "x.npy", mmap_mode="r"))
    size = 1000 * 784
    assert orders.resolve("auto", torch.zeros(1000, 784), available=1).order == "full"  # in memory
    assert orders.resolve("auto", rows, available=2 * size).order == "full"  # the page cache can hold it
    small = orders.resolve("auto", rows, available=size)
    assert (small.order, small.block_rows, small.window_blocks) == ("block", (1 << 20) // 784, 64)
    assert "is over 80% of the memory available" in small.describe() and "--data-order full" in small.describe()
    assert orders.resolve("block", torch.zeros(10, 3), 5, 2) == orders.OrderChoice("block", 5, 2, "--data-order block")
    assert orders.resolve("full", rows, available=1).order == "full"
    with pytest.raises(ValueError, match="data order must be one of"):
        orders.resolve("sorted", rows)


def test_will_need_asks_for_the_runs_of_the_file(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros((100, 10), np.float32))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = Rows(mm, np.array([0, 1, 2, 3, 50, 51, 99]))  # a split's sorted row list
    calls = []
    monkeypatch.setattr("os.posix_fadvise", lambda fd, off, length, advice: calls.append((off, length)))
    header = (tmp_path / "x.npy").stat().st_size - 100 * 40
    monkeypatch.setattr("bayesvae.arrays._ADVICE_GAP_BYTES", 40 * 10)  # rows 3 -> 50 is a gap, 0 -> 3 is not
    assert rows.will_need(np.array([5, 0, 3, 4, 1])) == 2
    assert calls == [(header + 0, 4 * 40), (header + 50 * 40, 2 * 40)]  # rows 0-3 (2 is not asked for) and 50-51


def test_block_order_trains_with_window_advice_and_says_so(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (600, 64), dtype=np.uint8))
    monkeypatch.setattr(bdata, "LAZY_BYTES", 0)
    asked: list[np.ndarray] = []
    real = Rows.will_need
    monkeypatch.setattr(Rows, "will_need", lambda self, p: asked.append(np.asarray(p)) or real(self, p))
    cfg = TrainConfig(epochs=1, batch_size=50, seed=1, data_order="block", block_rows=16, window_blocks=4)
    spec = runs.DataSpec(str(tmp_path / "x.npy"))
    plain = runs.train(spec, out=None, train_config=cfg, latent_dim=2, hidden=(8,))
    assert asked == []  # off by default (training.WINDOW_ADVICE: it did not pay in make bench-stream)
    monkeypatch.setattr(training, "WINDOW_ADVICE", True)
    trainer = runs.train(spec, out=None, train_config=cfg, latent_dim=2, hidden=(8,))
    n = len(trainer.train_data)
    assert np.array_equal(np.sort(np.concatenate(asked)), np.arange(n))  # the whole epoch was announced, once
    assert all(len(a) <= 64 for a in asked)  # a window (16 x 4 rows) at a time
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                 trainer.model.state_dict().values(), strict=True))  # a hint only
    code = main(["train", "--data", str(tmp_path / "x.npy"), "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
                 "--report-samples", "0", "--data-order", "block", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().err
    assert code == 0 and "data order: block-shuffled: blocks of 16,384 contiguous rows" in out, out
    assert runs.load_run(tmp_path / "run").train_config.data_order == "block"
    main(["train", "--data", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--report-samples",
          "0", "--out", str(tmp_path / "run2")])
    assert "data order: full shuffle (--data-order auto: the training split is in memory)" in capsys.readouterr().err


def _strip_data_order(run) -> None:
    """Rewrite every checkpoint of ``run`` as a version before the data order was a setting wrote it: no
    ``data_order``, ``block_rows`` or ``window_blocks`` anywhere in state.json (the manifest's hash follows)."""
    import hashlib
    import json

    from bayesvae import checkpoint as ckpt
    for step in ckpt.list_checkpoints(run):
        stored = json.loads((step / ckpt.STATE_FILE).read_text())
        state = stored["state"]
        state.pop("data_order")
        for key in ("data_order", "block_rows", "window_blocks"):
            state["train_config"].pop(key)
        data = json.dumps(stored).encode()
        (step / ckpt.STATE_FILE).write_bytes(data)
        manifest = json.loads((step / ckpt.MANIFEST_FILE).read_text())
        manifest["files"][ckpt.STATE_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        (step / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_checkpoint_from_before_the_data_order_resumes_in_the_full_shuffle_bit_for_bit(tmp_path, capsys):
    """A run written before ``--data-order`` existed trained in the full shuffle; ``train --resume --epochs 3``
    keeps it (no block order chosen by ``auto``) and ends exactly where a 3-epoch run ends, every tensor."""
    from bayesvae import checkpoint as ckpt
    small = ["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64",
             "--report-samples", "0"]
    assert main([*small, "--epochs", "1", "--out", str(tmp_path / "old")]) == 0
    _strip_data_order(tmp_path / "old")
    assert "data_order" not in ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "old", "last"))[1]
    assert main(["train", "--resume", str(tmp_path / "old"), "--epochs", "3", "--report-samples", "0"]) == 0
    assert main([*small, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    (a, sa), (b, sb) = (ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path / r, "last"))
                        for r in ("old", "straight"))
    assert sa["train_config"]["data_order"] == "full" and sa["trainer"]["epoch"] == 3
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].view(-1).view(torch.uint8).equal(b[key].view(-1).view(torch.uint8)), key
