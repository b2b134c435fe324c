"""Memory: one training epoch on an 8-bit .npy larger than memory should be, measured from /proc/self/status.

Writes a .npy of random 28x28 uint8 images (at least --gib GiB, in chunks, into a temporary directory that is
deleted afterwards), then trains one epoch on it in a fresh child process (`bayesvae train`, default splits,
Bernoulli likelihood with dynamic binarisation) and reports that process's peak anonymous memory: RssAnon sampled
every 20 ms (the kernel keeps no peak of it) and VmHWM (the peak of all resident memory, which also counts the
pages of the memory-mapped file that the kernel may drop at any time). The reference in the same run: the same
command on a file 1/16 the size, read into memory as float32 (what every .npy went through before).

    python benchmarks/bench_memory.py [--gib 4] [--json benchmarks/results/memory.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROW = 28 * 28


def status() -> dict[str, int]:
    """The memory fields of /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def generate(path: Path, rows: int, chunk: int = 65536) -> None:
    """A uint8 [rows, 28, 28] .npy written chunk by chunk (never whole in memory)."""
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 28, 28))
    rng = np.random.default_rng(0)
    for i in range(0, rows, chunk):
        n = min(chunk, rows - i)
        a[i : i + n] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
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


def train_once(data: Path, out: Path, args, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "train", "--data", str(data), "--epochs", "1", "--batch-size",
           str(args.batch_size), "--hidden", str(args.hidden), "--latent-dim", "16", "--report-samples", "0",
           "--device", "cpu", "--out", str(out), "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["log"] = [line for line in proc.stderr.splitlines() if line.startswith(("data:", "epoch", "done"))]
    return result


def cpu_info() -> str:
    """The CPU's model name and its vector features, from /proc/cpuinfo."""
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=4.0, help="size of the generated file (default: %(default)s GiB)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--target-gib", type=float, default=1.5, help="the peak RssAnon to stay below")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default: "
                   "%(default)s; memory does not depend on it, and one thread wastes nothing on a shared machine)")
    p.add_argument("--dir", help="where to write the temporary file (default: the system temp dir)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--smoke", action="store_true", help="a 4 MiB file (for the test suite)")
    args = p.parse_args(argv)
    if args.smoke:
        args.gib = 4 / 1024
    rows = int(np.ceil(args.gib * 2**30 / ROW))
    ref_rows = max(1000, rows // 16)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.smoke:
        env["BAYESVAE_LAZY_BYTES"] = str(1 << 20)  # the small file must also take the on-disk path
    tmp = Path(tempfile.mkdtemp(prefix="bayesvae-bench-memory-", dir=args.dir))
    free = shutil.disk_usage(tmp).free
    if free < rows * ROW * 1.2:
        shutil.rmtree(tmp)
        raise SystemExit(f"{tmp} has {gib(free)} GiB free; the file needs {gib(rows * ROW)} GiB (use --dir)")
    try:
        t0 = time.perf_counter()
        generate(tmp / "big.npy", rows)
        generate(tmp / "ref.npy", ref_rows)
        gen_seconds = time.perf_counter() - t0
        size = (tmp / "big.npy").stat().st_size
        print(f"generated {tmp / 'big.npy'}: {rows:,} x 28 x 28 uint8, {gib(size)} GiB in {gen_seconds:.1f} s",
              flush=True)
        big = train_once(tmp / "big.npy", tmp / "run-big", args, env)
        ref_env = dict(env, BAYESVAE_LAZY_BYTES=str(1 << 62))  # the reference: read into memory as float32
        ref = train_once(tmp / "ref.npy", tmp / "run-ref", args, ref_env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "memory",
        "cpu": cpu_info(),
        "cpu_count": os.cpu_count(),
        "file_gib": gib(size),
        "rows": rows,
        "model": f"MLP 784-{args.hidden}-16, Bernoulli, batch {args.batch_size}, one epoch, default 80/10/10 split",
        "peak_rss_anon_gib": gib(big["peak_rss_anon"]),
        "baseline_rss_anon_gib": gib(big["baseline_rss_anon"]),
        "vm_hwm_gib": gib(big["vm_hwm"]),
        "train_seconds": round(big["seconds"], 1),
        "target_gib": args.target_gib,
        "below_target": big["peak_rss_anon"] < args.target_gib * 2**30,
        "reference_file_gib": gib(ref_rows * ROW + 128),
        "reference_peak_rss_anon_gib": gib(ref["peak_rss_anon"]),
        "reference_anon_per_file_byte": round((ref["peak_rss_anon"] - ref["baseline_rss_anon"]) / (ref_rows * ROW), 2),
        "anon_per_file_byte": round((big["peak_rss_anon"] - big["baseline_rss_anon"]) / size, 3),
        "log": big["log"],
    }
    print(f"CPU: {result['cpu']} ({result['cpu_count']} cores); {result['model']}")
    print(f"on disk (memory-mapped, uint8): {result['file_gib']} GiB file -> peak RssAnon "
          f"{result['peak_rss_anon_gib']} GiB (of which {result['baseline_rss_anon_gib']} GiB torch and bayesvae "
          f"before the data), VmHWM {result['vm_hwm_gib']} GiB (includes the file's cached pages); "
          f"{result['train_seconds']} s; target < {args.target_gib} GiB: "
          f"{'met' if result['below_target'] else 'MISSED'}")
    print(f"reference, read into memory as float32: {result['reference_file_gib']} GiB file -> peak RssAnon "
          f"{result['reference_peak_rss_anon_gib']} GiB ({result['reference_anon_per_file_byte']} bytes of "
          f"anonymous memory per byte of file, vs {result['anon_per_file_byte']} on disk)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    elif __name__ == "__main__":
        main()
