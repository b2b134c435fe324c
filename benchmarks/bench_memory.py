"""Memory and speed of one training epoch on .npy files larger than memory should allow, every layout.

For each layout asked for (``--layouts``), writes a generated .npy in chunks into a temporary directory (deleted
afterwards), trains one epoch on it in a fresh child process (`bayesvae train`, default 80/10/10 split, MLP with
128 hidden units and 16 latent dimensions, batch 1024) and reports that process's peak anonymous memory (RssAnon
sampled every 20 ms: the kernel keeps no peak of it), VmHWM (all resident memory, which also counts the page-cache
pages of the memory-mapped file that the kernel may drop at any time) and the epoch's examples/s. The reference in
the same run: the same layout and command on a file 1/16 the size, read into memory (as float32 splits).

Layouts: ``flat2d`` (28x28 uint8 images flattened to rows of 784, ``--likelihood bernoulli``: dynamic binarisation),
``table`` (float32, 50 columns of different means and scales: Gaussian learned σ, standardised), ``nchw4d`` (uint8
[N, 3, 32, 32] colour images: Gaussian learned σ, dequantised), ``images3d`` (uint8 [N, 28, 28], Bernoulli).

    python benchmarks/bench_memory.py --layouts flat2d,table,nchw4d [--flat-rows 3000000] [--table-gib 2]
        [--nchw-gib 1] [--gib 4 (images3d)] [--json benchmarks/results/memory_layouts.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

#: layout -> (row shape, dtype, extra train flags, what it is)
LAYOUTS = {
    "flat2d": ((784,), np.uint8, ["--likelihood", "bernoulli"], "28x28 uint8 images flattened to rows of 784, "
               "Bernoulli with dynamic binarisation"),
    "table": ((50,), np.float32, [], "float32 table of 50 columns, Gaussian learned sigma, standardised"),
    "nchw4d": ((3, 32, 32), np.uint8, [], "uint8 colour images [N, 3, 32, 32], Gaussian learned sigma, dequantised"),
    "images3d": ((28, 28), np.uint8, [], "uint8 images [N, 28, 28], Bernoulli with dynamic binarisation"),
}


def status() -> dict[str, int]:
    """The memory fields of /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def generate(path: Path, layout: str, rows: int, chunk: int = 65536) -> None:
    """A .npy of ``rows`` generated rows of ``layout``, written chunk by chunk (never whole in memory)."""
    shape, dtype, _, _ = LAYOUTS[layout]
    a = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, *shape))
    rng = np.random.default_rng(0)
    scale, shift = 10.0 ** rng.uniform(-2, 3, 50), rng.normal(0, 100, 50)
    for i in range(0, rows, chunk):
        n = min(chunk, rows - i)
        if dtype == np.uint8:
            a[i : i + n] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        else:
            a[i : i + n] = (rng.standard_normal((n, *shape), dtype=np.float32) * scale + shift).astype(np.float32)
    a.flush()
    del a


def child(argv: list[str]) -> None:
    """Train in this process while a thread samples RssAnon; print one JSON line with the peaks."""
    peak = {"RssAnon": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["RssAnon"] = max(peak["RssAnon"], status()["RssAnon"])
            time.sleep(0.02)

    import torch  # noqa: F401 - imported before the baseline, like the CLI does

    from bayesvae.cli import main

    baseline = status()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    final = status()
    peak["RssAnon"] = max(peak["RssAnon"], final["RssAnon"])
    print("RESULT " + json.dumps({"exit": code, "seconds": seconds, "baseline_rss_anon": baseline["RssAnon"],
                                  "peak_rss_anon": peak["RssAnon"], "vm_hwm": final["VmHWM"],
                                  "final_rss_file": final["RssFile"]}), flush=True)


def train_once(data: Path, out: Path, args, env: dict, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "train", "--data", str(data), "--epochs", "1", "--batch-size",
           str(args.batch_size), "--hidden", str(args.hidden), "--latent-dim", "16", "--report-samples", "0",
           "--device", "cpu", "--out", str(out), "--overwrite", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["log"] = [line for line in proc.stderr.splitlines() if line.startswith(("data:", "epoch", "done"))]
    text = "\n".join(result["log"])
    train = int(re.search(r"train/valid/test (\d+)/", text).group(1))
    epoch = float(re.search(r"epoch 1/1 .*\[([\d.]+) s\]", text).group(1))
    result.update(train_rows=train, epoch_seconds=epoch, examples_per_second=round(train / max(epoch, 0.05)))  # the log rounds to 0.1 s
    return result


def cpu_info() -> str:
    """The CPU's model name and its vector features, from /proc/cpuinfo (gpu_check.py names the CPU with it)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = " ".join(fields.get("model name\t", platform.machine()).split())
    flags = set(fields.get("flags\t\t", "").split())
    features = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(features) or 'no AVX2'})"


def gib(b: float) -> float:
    return round(b / 2**30, 3)


def run_layout(layout: str, rows: int, tmp: Path, args, env: dict) -> dict:
    shape, dtype, extra, what = LAYOUTS[layout]
    row_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    ref_rows = max(1000, rows // 16)
    big, ref = tmp / f"{layout}.npy", tmp / f"{layout}-ref.npy"
    t0 = time.perf_counter()
    generate(big, layout, rows)
    generate(ref, layout, ref_rows)
    size = big.stat().st_size
    print(f"{layout}: generated {rows:,} rows of {shape} {np.dtype(dtype).name} ({gib(size)} GiB) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    try:
        streamed = train_once(big, tmp / f"run-{layout}", args, env, extra)
        in_memory = train_once(ref, tmp / f"run-{layout}-ref", args, dict(env, BAYESVAE_LAZY_BYTES=str(1 << 62)), extra)
    finally:
        big.unlink(missing_ok=True)
        ref.unlink(missing_ok=True)
        shutil.rmtree(tmp / f"run-{layout}", ignore_errors=True)
        shutil.rmtree(tmp / f"run-{layout}-ref", ignore_errors=True)
    row = {
        "layout": layout, "what": what, "rows": rows, "file_gib": gib(size), "train_rows": streamed["train_rows"],
        "peak_rss_anon_gib": gib(streamed["peak_rss_anon"]),
        "baseline_rss_anon_gib": gib(streamed["baseline_rss_anon"]), "vm_hwm_gib": gib(streamed["vm_hwm"]),
        "epoch_seconds": streamed["epoch_seconds"], "command_seconds": round(streamed["seconds"], 1),
        "examples_per_second": streamed["examples_per_second"],
        "target_gib": args.target_gib, "below_target": streamed["peak_rss_anon"] < args.target_gib * 2**30,
        "anon_per_file_byte": round((streamed["peak_rss_anon"] - streamed["baseline_rss_anon"]) / size, 3),
        "reference_rows": ref_rows, "reference_file_gib": gib(ref_rows * row_bytes + 128),
        "reference_peak_rss_anon_gib": gib(in_memory["peak_rss_anon"]),
        "reference_examples_per_second": in_memory["examples_per_second"],
        "reference_anon_per_file_byte": round((in_memory["peak_rss_anon"] - in_memory["baseline_rss_anon"]) /
                                              (ref_rows * row_bytes), 2),
        "streamed_over_in_memory_speed": round(streamed["examples_per_second"] /
                                               max(in_memory["examples_per_second"], 1), 2),
        "log": streamed["log"],
    }
    print(f"{layout} ({what}): {row['file_gib']} GiB file, {rows:,} rows -> peak RssAnon {row['peak_rss_anon_gib']} "
          f"GiB (of which {row['baseline_rss_anon_gib']} GiB torch and bayesvae before the data), VmHWM "
          f"{row['vm_hwm_gib']} GiB; {row['examples_per_second']:,} examples/s over the epoch "
          f"({row['epoch_seconds']} s; the whole command {row['command_seconds']} s); target < {args.target_gib} GiB: "
          f"{'met' if row['below_target'] else 'MISSED'}", flush=True)
    print(f"  reference in memory (1/16: {ref_rows:,} rows, {row['reference_file_gib']} GiB): peak RssAnon "
          f"{row['reference_peak_rss_anon_gib']} GiB ({row['reference_anon_per_file_byte']} bytes of anonymous memory "
          f"per byte of file, vs {row['anon_per_file_byte']} streamed); {row['reference_examples_per_second']:,} "
          f"examples/s; streamed/in memory {row['streamed_over_in_memory_speed']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", default="flat2d,table,nchw4d", help="comma-separated, from " + ", ".join(LAYOUTS))
    p.add_argument("--flat-rows", type=int, default=3_000_000, help="rows of the flat2d file (default: %(default)s)")
    p.add_argument("--table-gib", type=float, default=2.0, help="size of the table file (default: %(default)s GiB)")
    p.add_argument("--nchw-gib", type=float, default=1.0, help="size of the nchw4d file (default: %(default)s GiB)")
    p.add_argument("--gib", type=float, default=4.0, help="size of the images3d file (default: %(default)s GiB)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--target-gib", type=float, default=1.5, help="the peak RssAnon to stay below")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default: "
                   "%(default)s; memory does not depend on it, and one thread wastes nothing on a shared machine)")
    p.add_argument("--dir", help="where to write the temporary files (default: the system temp dir)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="files of a few MiB (for the test suite)")
    args = p.parse_args(argv)
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        raise SystemExit(f"unknown layout(s) {unknown}; choose from {list(LAYOUTS)}")
    if args.smoke:
        args.flat_rows, args.table_gib, args.nchw_gib, args.gib = 4000, 2 / 1024, 4 / 1024, 4 / 1024
    rows = {"flat2d": args.flat_rows, "table": int(args.table_gib * 2**30 / 200),
            "nchw4d": int(np.ceil(args.nchw_gib * 2**30 / 3072)), "images3d": int(np.ceil(args.gib * 2**30 / 784))}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.smoke:
        env["BAYESVAE_LAZY_BYTES"] = str(1 << 20)  # the small files must also take the on-disk path
    info = machine.describe()
    info["torch_threads"] = args.threads
    print(machine.line(info), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bayesvae-bench-memory-", dir=args.dir))
    largest = max(rows[name] * int(np.prod(LAYOUTS[name][0])) * np.dtype(LAYOUTS[name][1]).itemsize
                  for name in layouts)
    free = shutil.disk_usage(tmp).free
    if free < largest * 1.2:
        shutil.rmtree(tmp)
        raise SystemExit(f"{tmp} has {gib(free)} GiB free; the largest file needs {gib(largest)} GiB (use --dir)")
    try:
        results = [run_layout(name, rows[name], tmp, args, env) for name in layouts]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "memory_layouts", "machine": info, "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "model": f"MLP D-{args.hidden}-16, batch {args.batch_size}, one epoch, default 80/10/10 split, "
                       f"{args.threads} torch thread(s)",
              "layouts": results, "all_below_target": all(r["below_target"] for r in results)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    elif __name__ == "__main__":
        main()
