"""Streaming beyond the page cache: what the block order costs in validation loss, how fast an epoch reads from
disk against ``dd``, and the streamed / in-memory speed where the file fits in the page cache.

Three parts, one process, one torch thread, the machine printed first:

1. **Quality** (MNIST as a (70000, 784) uint8 .npy, streamed, Bernoulli with dynamic binarisation, MLP 784-256-16,
   batch 128, the same seed and steps): the validation loss after each epoch with the block order against the full
   shuffle, on the file as stored and on the same file sorted by label (the worst case: a file written class by
   class). The blocks are scaled to the file: 64 rows, windows of 16 blocks (1,024 rows, 1.8 % of the training
   split, the share a 64 MiB window has of a 3.5 GiB file). Reference in the same run: the full shuffle with the
   next seed (the run-to-run spread a difference must exceed).
2. **Read rate** (a generated uint8 .npy of flattened 28x28 images, ``--read-gib``, evicted from the page cache with
   ``posix_fadvise(DONTNEED)`` before each reading, its cached share checked with ``fincore``): ``dd bs=1M`` against
   reading one epoch of the training split through the trainer's prefetch thread (rows as float32 batches of 1024)
   in the block order (1 MiB blocks, windows of 64, next window announced with WILLNEED) and in the full shuffle
   (stopped after ``--full-seconds``).
3. **Throughput in the page cache** (MNIST file, the model of ``bench_memory.py``: MLP 784-128-16, batch 1024):
   examples/s of the streamed epoch over the in-memory one, alternated ``--reps`` times (median ratio), with the
   profile of where a streamed step's time goes (waiting for the prefetched batch, the step itself); and the same
   comparison as ``make bench-memory`` draws it: one streamed epoch of the generated file against an in-memory file
   1/16 its size.

    python benchmarks/stream_order.py --data-dir ../shared/data/mnist --json benchmarks/results/stream_order.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402


def mnist_arrays(data_dir: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The 70,000 MNIST images (train then t10k) as (N, 784) uint8, and their labels."""
    xs, ys = [], []
    for stem in ("train", "t10k"):
        with gzip.open(data_dir / f"{stem}-images-idx3-ubyte.gz", "rb") as fh:
            xs.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784))
        with gzip.open(data_dir / f"{stem}-labels-idx1-ubyte.gz", "rb") as fh:
            ys.append(np.frombuffer(fh.read(), np.uint8, offset=8))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit else (x, y)


def generate(path: Path, rows: int, chunk: int = 65536) -> None:
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 784))
    rng = np.random.default_rng(0)
    for i in range(0, rows, chunk):
        a[i : i + chunk] = rng.integers(0, 256, size=(min(chunk, rows - i), 784), dtype=np.uint8)
    a.flush()
    del a
    os.sync()  # written back: eviction below needs clean pages


def evict(path: Path, mapped=None) -> None:
    """Drop the file from the page cache; ``mapped``: a np.memmap of it in this process, whose page mappings are
    dropped first (the kernel keeps pages that a process maps)."""
    mm = getattr(mapped, "_mmap", None)
    if mm is not None:
        mm.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_share(path: Path) -> float | None:
    """Share of the file in the page cache (``fincore``), None where it cannot be measured."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--raw", "--noheadings", "-o", "RES,SIZE", str(path)],
                         capture_output=True, text=True)
    try:
        res, size = (int(v) for v in out.stdout.split())
    except ValueError:
        return None
    return round(min(1.0, res / max(size, 1)), 3)


def dd_rate(path: Path) -> dict:
    evict(path)
    before = cached_share(path)
    t = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "mb_per_s": round(path.stat().st_size / seconds / 1e6, 1),
            "cached_before": before}


def epoch_read_rate(path: Path, order_name: str, seconds_cap: float, batch: int = 1024, advice: bool = True) -> dict:
    """Read the training split of ``path`` for one epoch in an order through the trainer's prefetch (no training);
    ``advice`` False: without the WILLNEED requests for the next window (the block order's read-ahead)."""
    import torch

    from bayesvae import data as bdata
    from bayesvae import orders
    from bayesvae.training import _Prefetch

    saved = bdata.LAZY_BYTES
    bdata.LAZY_BYTES = 0
    try:
        ds = bdata.load_dataset(str(path))
    finally:
        bdata.LAZY_BYTES = saved
    rows = ds.train
    n = len(rows)
    choice = orders.resolve(order_name, rows)
    order = (orders.block_order(n, 0, 0, choice.block_rows, choice.window_blocks) if choice.order == "block"
             else orders.full_order(n, 0, 0))
    steps = math.ceil(n / batch)
    evict(path, getattr(rows, "array", None))
    before = cached_share(path)
    t = time.perf_counter()
    done = 0
    advise = choice.block_rows * choice.window_blocks if choice.order == "block" and advice else 0
    with _Prefetch(rows, order, batch, 0, steps, lambda i: i, depth=2, advise_rows=advise) as ahead:
        for b in range(steps):
            x = ahead.take(b)[2]
            assert isinstance(x, torch.Tensor)
            done += len(x)
            if time.perf_counter() - t > seconds_cap:
                break
    seconds = time.perf_counter() - t
    row_bytes = 784
    return {"order": choice.order, "advice": bool(advise), "block_rows": choice.block_rows,
            "window_blocks": choice.window_blocks,
            "rows_read": done, "of_rows": n, "seconds": round(seconds, 2), "complete": done == n,
            "mb_per_s": round(done * row_bytes / seconds / 1e6, 1), "examples_per_second": round(done / seconds),
            "cached_before": before}


class _Timers:
    """Where a training step's time goes: the wait for the prefetched batch (take) and the step itself."""

    def __init__(self):
        from bayesvae import training

        self.training, self.take, self.step = training, [], []
        self.orig_take, self.orig_step = training._Prefetch.take, training.Trainer.train_step

    def __enter__(self):
        timers = self

        def take(self, b):
            t = time.perf_counter()
            out = timers.orig_take(self, b)
            timers.take.append(time.perf_counter() - t)
            return out

        def step(self, *a, **k):
            t = time.perf_counter()
            out = timers.orig_step(self, *a, **k)
            timers.step.append(time.perf_counter() - t)
            return out

        self.training._Prefetch.take, self.training.Trainer.train_step = take, step
        return self

    def __exit__(self, *exc):
        self.training._Prefetch.take, self.training.Trainer.train_step = self.orig_take, self.orig_step


def train_once(path: Path, streamed: bool, config_kw: dict, model_kw: dict) -> dict:
    from bayesvae import data as bdata
    from bayesvae import runs
    from bayesvae.arrays import Rows
    from bayesvae.config import TrainConfig

    saved = bdata.LAZY_BYTES
    bdata.LAZY_BYTES = 0 if streamed else 1 << 62
    try:
        with _Timers() as timers:
            trainer = runs.train(runs.DataSpec(str(path)), out=None, train_config=TrainConfig(**config_kw),
                                 likelihood="bernoulli", **model_kw)
    finally:
        bdata.LAZY_BYTES = saved
    assert isinstance(trainer.train_data, Rows) == streamed
    hist = trainer.state.history
    seconds = sum(h["epoch_seconds"] for h in hist)
    n = len(trainer.train_data) * len(hist)
    return {"streamed": streamed, "order": trainer.config.data_order, "epochs": len(hist),
            "valid_loss_nats": [round(h["valid_loss"], 3) for h in hist], "epoch_seconds": round(seconds, 2),
            "examples_per_second": round(n / seconds),
            "take_ms_per_batch": round(1e3 * statistics.mean(timers.take), 3),
            "step_ms": round(1e3 * statistics.mean(timers.step), 2),
            # a step's time early and late in the run: a long epoch is not timed like a short one
            "step_ms_first_100": round(1e3 * statistics.mean(timers.step[:100]), 2),
            "step_ms_last_100": round(1e3 * statistics.mean(timers.step[-100:]), 2), "steps": len(timers.step)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data/mnist", help="the MNIST IDX files")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the quality comparison (default: %(default)s)")
    p.add_argument("--read-gib", type=float, default=1.0, help="size of the generated file for the read rates")
    p.add_argument("--full-seconds", type=float, default=20.0, help="stop the full-shuffle read after this long")
    p.add_argument("--reps", type=int, default=3, help="alternations of the throughput comparison")
    p.add_argument("--dir", help="where to write the temporary files (default: the system temp dir)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="3,000 images, a 16 MiB file, one epoch (for the tests)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    info = machine.describe()
    info["torch_threads"] = 1
    print(machine.line(info), flush=True)
    limit = 3000 if args.smoke else None
    if args.smoke:
        args.epochs, args.read_gib, args.full_seconds, args.reps = 1, 1 / 64, 2.0, 1
    tmp = Path(tempfile.mkdtemp(prefix="bayesvae-bench-stream-", dir=args.dir))
    result: dict = {"benchmark": "stream_order", "machine": info, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    try:
        x, y = mnist_arrays(Path(args.data_dir), limit)
        stored, by_label = tmp / "mnist.npy", tmp / "mnist-by-label.npy"
        np.save(stored, x)
        np.save(by_label, x[np.argsort(y, kind="stable")])

        # 1. quality: block against full at equal steps, same seed
        geometry = {"block_rows": 64, "window_blocks": 16}
        model = {"latent_dim": 16, "hidden": (256,)}
        quality = []
        for name, path in (("as stored", stored), ("sorted by label", by_label)):
            arms = {}
            for arm, kw in (("full", {"data_order": "full"}), ("block", {"data_order": "block", **geometry}),
                            ("full, next seed", {"data_order": "full", "seed": 1})):
                cfg = {"epochs": args.epochs, "batch_size": 128, "seed": 0, **kw}
                arms[arm] = train_once(path, True, cfg, model)
            last = {k: v["valid_loss_nats"][-1] for k, v in arms.items()}
            row = {"file": name, "valid_loss_nats": {k: v["valid_loss_nats"] for k, v in arms.items()},
                   "block_minus_full_nats": round(last["block"] - last["full"], 3),
                   "seed_spread_nats": round(last["full, next seed"] - last["full"], 3)}
            quality.append(row)
            print(f"quality ({name}, {len(x):,} images, {args.epochs} epochs, same steps): validation loss full "
                  f"{last['full']:.3f}, block {last['block']:.3f} nats (block - full "
                  f"{row['block_minus_full_nats']:+.3f}; full with the next seed {row['seed_spread_nats']:+.3f})",
                  flush=True)
        result["quality"] = {"model": "MLP 784-256-16, Bernoulli (dynamic binarisation), batch 128, seed 0",
                             "geometry": geometry, "rows": len(x), "epochs": args.epochs, "files": quality}

        # 2. read rates from disk
        rows = int(args.read_gib * 2**30 / 784)
        big = tmp / "flat.npy"
        t = time.perf_counter()
        generate(big, rows)
        print(f"generated {rows:,} x 784 uint8 ({big.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        dd = dd_rate(big)
        block = epoch_read_rate(big, "block", 1e9)
        bare = epoch_read_rate(big, "block", 1e9, advice=False)
        full = epoch_read_rate(big, "full", args.full_seconds)
        result["read"] = {"file_gib": round(big.stat().st_size / 2**30, 3), "rows": rows, "dd": dd, "block": block,
                          "block_without_advice": bare, "full": full,
                          "block_without_advice_over_dd": round(bare["mb_per_s"] / dd["mb_per_s"], 2),
                          "block_over_dd": round(block["mb_per_s"] / dd["mb_per_s"], 2),
                          "full_over_dd": round(full["mb_per_s"] / dd["mb_per_s"], 3)}
        print(f"read from disk (evicted first; cached before: dd {dd['cached_before']}, block "
              f"{block['cached_before']}, full {full['cached_before']}): dd {dd['mb_per_s']} MB/s; one epoch in the "
              f"block order {block['mb_per_s']} MB/s ({block['examples_per_second']:,} examples/s, "
              f"{block['seconds']} s), "
              f"{result['read']['block_over_dd']} x dd (without the WILLNEED read-ahead {bare['mb_per_s']} MB/s, "
              f"{result['read']['block_without_advice_over_dd']} x dd); full shuffle {full['mb_per_s']} MB/s "
              f"({full['rows_read']:,} of {full['of_rows']:,} rows in {full['seconds']} s), "
              f"{result['read']['full_over_dd']} x dd", flush=True)

        # 3. throughput where the file fits in the page cache
        cfg = {"epochs": 1 if args.smoke else 2, "batch_size": 1024, "seed": 0}
        small_model = {"latent_dim": 16, "hidden": (128,)}
        np.asarray(np.load(stored, mmap_mode="r")).sum()  # in the page cache
        runs_: dict[str, list[dict]] = {"streamed": [], "in memory": []}
        for _ in range(args.reps):
            runs_["streamed"].append(train_once(stored, True, cfg, small_model))
            runs_["in memory"].append(train_once(stored, False, cfg, small_model))
        ratios = [s["examples_per_second"] / m["examples_per_second"]
                  for s, m in zip(runs_["streamed"], runs_["in memory"], strict=True)]
        med = {k: statistics.median(r["examples_per_second"] for r in v) for k, v in runs_.items()}
        prof = {k: {"take_ms_per_batch": statistics.median(r["take_ms_per_batch"] for r in v),
                    "step_ms": statistics.median(r["step_ms"] for r in v)} for k, v in runs_.items()}
        ref_rows = max(1000, rows // 16)
        ref = tmp / "flat-ref.npy"
        np.save(ref, np.load(big, mmap_mode="r")[:ref_rows])
        np.asarray(np.load(big, mmap_mode="r")).sum()  # the whole file in the page cache
        as_bench_memory = {"streamed": train_once(big, True, {**cfg, "epochs": 1}, small_model),
                           "in memory (1/16)": train_once(ref, False, {**cfg, "epochs": 1}, small_model)}
        bm_ratio = (as_bench_memory["streamed"]["examples_per_second"] /
                    as_bench_memory["in memory (1/16)"]["examples_per_second"])
        result["throughput"] = {
            "model": "MLP 784-128-16, Bernoulli, batch 1024", "file": f"MNIST (70000, 784) uint8, {cfg['epochs']} "
            "epochs per run", "runs": runs_, "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 2), "median_examples_per_second": med,
            "profile": prof, "target": 0.8, "met": statistics.median(ratios) >= 0.8,
            "as_bench_memory": {**as_bench_memory, "ratio": round(bm_ratio, 2), "rows": rows, "ref_rows": ref_rows}}
        print(f"throughput in the page cache (MNIST file, {args.reps} alternations): streamed {med['streamed']:,.0f} "
              f"vs in memory {med['in memory']:,.0f} examples/s, streamed / in memory {statistics.median(ratios):.2f} "
              f"(each: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8). Profile (median ms): waiting for the "
              f"batch {prof['streamed']['take_ms_per_batch']} streamed / {prof['in memory']['take_ms_per_batch']} in "
              f"memory, the step {prof['streamed']['step_ms']} / {prof['in memory']['step_ms']}", flush=True)
        print(f"as make bench-memory compares (the {rows:,}-row file streamed, one epoch, against a 1/16 file in "
              f"memory): {as_bench_memory['streamed']['examples_per_second']:,} vs "
              f"{as_bench_memory['in memory (1/16)']['examples_per_second']:,} examples/s, ratio {bm_ratio:.2f}; "
              f"waiting for the batch {as_bench_memory['streamed']['take_ms_per_batch']} ms of a "
              f"{as_bench_memory['streamed']['step_ms']} ms step (the first 100 steps "
              f"{as_bench_memory['streamed']['step_ms_first_100']} ms, the last 100 "
              f"{as_bench_memory['streamed']['step_ms_last_100']} ms, of {as_bench_memory['streamed']['steps']}; "
              f"in memory {as_bench_memory['in memory (1/16)']['steps']} steps of "
              f"{as_bench_memory['in memory (1/16)']['step_ms']} ms)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
