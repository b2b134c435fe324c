"""The order of the training examples in an epoch: a permutation that is a function of (seed, epoch) alone.

Resume needs no sampler state: step ``b`` of epoch ``e`` takes positions ``order[b * B : (b + 1) * B]`` of the
permutation drawn for (seed, e), so a run resumed at any step reads the batches of the uninterrupted run.

``full`` (:func:`full_order`): a uniform permutation of the positions. On a split that is in memory, or a file that
stays in the page cache, nothing is better.

``block`` (:func:`block_order`): for a memory-mapped file larger than the page cache can hold. The positions (in
file order: a split's row list is sorted) are cut into contiguous *blocks* of ``block_rows``; the blocks are taken
in a uniformly shuffled order, and each *window* of ``window_blocks`` consecutive blocks of that order is shuffled
row by row. A window is ``window_blocks`` contiguous runs of the file, read from disk once and then used from the
page cache while its rows are trained on; the reads are runs of about :data:`BLOCK_BYTES`, not one random page per
row. Each row still appears exactly once per epoch; two rows are in the same batch only when their blocks share a
window, so batches mix ``window_blocks`` random places of the file instead of all of it (its cost in validation
loss: ``make bench-stream``). ``auto`` (:func:`resolve`) chooses block for a split that stays on disk and does not
fit comfortably in memory, full otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ORDERS", "full_order", "block_order", "resolve", "OrderChoice", "BLOCK_BYTES", "WINDOW_BLOCKS"]

ORDERS = ("auto", "full", "block")
#: Bytes of one block of the block order: a contiguous read that costs one seek where a random row costs one each.
BLOCK_BYTES = 1 << 20
#: Blocks per window: the rows of 64 MiB of the file are shuffled together (and held in the page cache meanwhile).
WINDOW_BLOCKS = 64


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def full_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A uniform permutation of ``n`` positions, a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=_generator(seed, epoch))


def block_order(n: int, seed: int, epoch: int, block_rows: int, window_blocks: int) -> torch.Tensor:
    """The block-shuffled permutation of ``n`` positions (see the module docstring), a function of (seed, epoch)
    and the geometry alone: blocks of ``block_rows`` contiguous positions (the last may be shorter) in a shuffled
    order, the rows of each window of ``window_blocks`` consecutive blocks of that order shuffled together."""
    if block_rows < 1 or window_blocks < 1:
        raise ValueError(f"block_rows and window_blocks must be positive, got {block_rows} and {window_blocks}")
    g = _generator(seed, epoch)
    blocks = torch.randperm(math.ceil(n / block_rows), generator=g)
    within = torch.arange(block_rows)
    parts = []
    for w in range(0, len(blocks), window_blocks):
        rows = (blocks[w : w + window_blocks, None] * block_rows + within).flatten()
        rows = rows[rows < n]  # the short last block
        parts.append(rows[torch.randperm(len(rows), generator=g)])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def row_bytes(data) -> int:
    """Bytes of one example as stored: in the file for a split on disk (:class:`bayesvae.arrays.Rows`), in memory
    otherwise."""
    array = getattr(data, "array", None)
    if array is not None:
        return max(1, array.dtype.itemsize * math.prod(array.shape[1:]))
    return max(1, data[:1].numel() * data.element_size()) if len(data) else 1


@dataclass(frozen=True)
class OrderChoice:
    """The order of a run, resolved: ``order`` (full or block), its geometry (block) and why it was chosen."""

    order: str
    block_rows: int = 0
    window_blocks: int = 0
    reason: str = ""

    def describe(self) -> str:
        if self.order == "full":
            return f"full shuffle ({self.reason})"
        return (f"block-shuffled: blocks of {self.block_rows:,} contiguous rows in a shuffled order, the rows of each "
                f"window of {self.window_blocks} blocks shuffled together ({self.reason})")


def resolve(requested: str, data, block_rows: int = 0, window_blocks: int = 0,
            available: int | None = None) -> OrderChoice:
    """The order ``requested`` (auto, full, block) for the training split ``data``; ``block_rows``/``window_blocks``
    0 take :data:`BLOCK_BYTES` and :data:`WINDOW_BLOCKS`. ``auto`` is block when the split stays on disk (memory-
    mapped) and its file is over :data:`bayesvae.memory.HEADROOM` of the memory available (``available``, default
    :func:`bayesvae.memory.available_bytes`), so the page cache cannot keep it; full otherwise."""
    from . import memory

    if requested not in ORDERS:
        raise ValueError(f"data order must be one of {list(ORDERS)}, got {requested!r}")
    size = row_bytes(data)
    block_rows = block_rows or max(1, BLOCK_BYTES // size)
    window_blocks = window_blocks or WINDOW_BLOCKS
    on_disk = hasattr(getattr(data, "array", None), "filename")  # a memory-mapped file (np.memmap)
    if requested == "auto":
        if not on_disk:
            return OrderChoice("full", reason="--data-order auto: the training split is in memory")
        array = data.array
        file_bytes = array.dtype.itemsize * math.prod(array.shape)
        room = memory.available_bytes() if available is None else available
        if file_bytes <= memory.HEADROOM * room:
            return OrderChoice("full", reason=f"--data-order auto: the file ({memory.gib(file_bytes)}) fits in "
                               f"{memory.HEADROOM:.0%} of the memory available ({memory.gib(room)}), so the page "
                               "cache can hold it; --data-order block to read it in blocks")
        return OrderChoice("block", block_rows, window_blocks,
                           f"--data-order auto: the file ({memory.gib(file_bytes)}) is over {memory.HEADROOM:.0%} "
                           f"of the memory available ({memory.gib(room)}), so the page cache cannot hold it; "
                           "--data-order full for a full shuffle")
    if requested == "full":
        return OrderChoice("full", reason="--data-order full")
    return OrderChoice("block", block_rows, window_blocks, "--data-order block")
