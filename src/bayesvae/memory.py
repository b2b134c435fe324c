"""What a computation will need, checked before it allocates, and the refusal of one that cannot fit.

A process that outgrows the machine is killed by the kernel with no message (exit -9), and on a shared machine it
takes other people's work with it; a large allocation that fails ends in a traceback. So every data source states,
before reading, how many bytes its preparation will hold at its peak (the figures below, per value or per row, were
measured with ``benchmarks/bench_memory.py`` and rounded up), and so do the other large requests (a model with its
optimiser state, ``n`` samples, ``K`` importance samples). :func:`require` compares the figure with the memory this
process may still take: ``MemAvailable`` of ``/proc/meminfo``, lowered to the cgroup's limit where one is set.
``BAYESVAE_MEMORY_BYTES`` overrides the figure (tests, or a user who wants to keep room for other work). A request
over :data:`HEADROOM` of it is refused with :class:`bayesvae.InsufficientMemoryError`: the figure, the memory
available and the way out (the option to change). This module is the one place that decides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InsufficientMemoryError

__all__ = ["available_bytes", "require", "gib", "HEADROOM", "InsufficientMemoryError"]

#: Share of the available memory a data source may plan to use; the rest is for the model, the optimiser and
#: everything else the process and the machine hold.
HEADROOM = 0.8

# Peak bytes per value of each preparation, rounded up from measurements of the growth of RssAnon while loading
# (2-core machine, 2026-12-03; the estimate over the measurement in brackets): a CSV of 100,000 x 20 floats (1.25)
# and of 20,000 x 784 pixels (1.36); 3,000 PNGs of 32x32x3 (2.15); an .npz of 100,000 x 28 x 28 uint8 (1.98) and
# of 200,000 x 50 float64 (1.15).
CSV_BYTES_PER_CELL = 72  # Python floats and lists while parsing, then float64, float32, the splits
IMAGE_DIR_BYTES_PER_VALUE = 24  # decoded uint8 images, their stack, float32, the splits
NPZ_BYTES_PER_VALUE = 20  # on top of the decompressed array's own bytes: float32, the splits
MEMORY_BYTES_PER_VALUE = 16  # an .npy read into memory: float32 splits and one prepared copy (valid/test draws)
STREAM_BYTES_PER_ROW = 40  # an .npy that stays on disk: split indices, the epoch's permutation, row numbers
STREAM_FIXED_BYTES = 256 << 20  # its chunk buffers (checks, statistics, fingerprint) and prefetched batches


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit (None when there is none)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Memory this process may still take: ``BAYESVAE_MEMORY_BYTES`` if set, else MemAvailable (and the cgroup's
    room, whichever is smaller); a very large number where neither can be read (not Linux)."""
    override = os.environ.get("BAYESVAE_MEMORY_BYTES")
    if override:
        return int(float(override))
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cgroup = _cgroup_room()
    candidates = [v for v in (room, cgroup) if v is not None]
    return min(candidates) if candidates else 1 << 62


def require(where: str, need: float, what: str, way_out: str, available: int | None = None) -> None:
    """Refuse (:class:`InsufficientMemoryError`) a request estimated at ``need`` bytes when it exceeds ``HEADROOM`` of
    the available memory (``available``, default :func:`available_bytes`); ``where`` names the source or the command,
    ``what`` says what the figure covers, ``way_out`` how to do without (which option to change)."""
    room = available_bytes() if available is None else int(available)
    if need > HEADROOM * room:
        raise InsufficientMemoryError(
            f"{where}: {what} needs about {gib(need)} of memory, but this process may take only {gib(room)} "
            f"(using at most {HEADROOM:.0%} of it, {gib(HEADROOM * room)}); it was refused before anything was "
            f"allocated. {way_out}")
