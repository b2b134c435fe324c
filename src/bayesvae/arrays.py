"""Examples that stay on disk: a split of a memory-mapped ``.npy`` file, read a batch at a time.

A :class:`Rows` is a list of row numbers into a (memory-mapped) numpy array. Indexing it with a slice gives another
``Rows`` (nothing is read); indexing it with integers reads those rows and returns a float32 tensor (8-bit pixels
become k / 255 only then, so the data stay uint8 until a batch is drawn). Everything that walks a split (the
trainer, validation, the estimators, the fingerprint) reads it in chunks, so memory holds a few batches, not the
file. :class:`PreparedRows` adds the fixed-seed binarisation or dequantisation of a validation or test split: row
``i``'s noise comes from a generator seeded by (seed, i // PREPARED_CHUNK), so any batch can be read in any order
and is the same every time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["Rows", "PreparedRows", "as_tensor", "iter_chunks", "PREPARED_CHUNK", "column_moments",
           "standardize_block"]

#: Rows per generator of a prepared (binarised or dequantised) lazy split.
PREPARED_CHUNK = 1024
_READ_ROWS = 8192
#: :meth:`Rows.will_need` asks for one run of the file across gaps up to this size (the rows of other splits).
_ADVICE_GAP_BYTES = 1 << 16


def _float(a: np.ndarray, pixels: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(torch.float32).div_(255.0) if pixels else t.to(torch.float32)


def standardize_block(block: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std of a block of table rows, computed as every standardised value is: the raw values as float32
    first, then float64 arithmetic, then float32 (so on-disk and in-memory splits hold the same bits)."""
    x = np.asarray(block).astype(np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        return ((x - mean) / std).astype(np.float32)


def column_moments(blocks) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, std) of the columns of a stream of 2-D blocks, in one pass, in float64: each block's mean and
    sum of squared deviations are exact two-pass figures, merged with Chan et al.'s pairwise update (no cancellation
    from summing squares). The values are taken as float32 first, like every standardised value."""
    n, mean, m2 = 0, None, None
    for block in blocks:
        x = np.asarray(block).astype(np.float32).astype(np.float64)
        if not len(x):
            continue
        k, mb = len(x), x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if mean is None:
            n, mean, m2 = k, mb, m2b
            continue
        delta, total = mb - mean, n + k
        mean = mean + delta * (k / total)
        m2 = m2 + m2b + delta**2 * (n * k / total)
        n = total
    if mean is None or m2 is None:  # (set together)
        raise ValueError("column_moments: no rows")
    return n, mean, np.sqrt(m2 / n)


class Rows:
    """Rows ``index`` of ``array`` (shape [N, ...] in its file layout) as examples [n, *event_shape].

    ``layout``: ``NHW`` (a channel axis is added), ``NHWC`` (moved first), ``N...`` (as stored), or for flattened
    images ``flat:H,W,C`` (each row of H*W*C pixels in row-major H, W, C order becomes [C, H, W]).
    ``pixels``: whether the values are 8-bit levels 0-255 that become k / 255 (default: when the dtype is uint8;
    False for 0/1 data stored as uint8, True for levels 0-255 stored in another dtype).
    ``standardization``: float64 (mean, std) of a table's columns, applied as each batch is read."""

    def __init__(self, array: np.ndarray, index: np.ndarray | None = None, layout: str = "N...", *,
                 pixels: bool | None = None, standardization: tuple[np.ndarray, np.ndarray] | None = None):
        self.array, self.layout, self.standardization = array, layout, standardization
        self.pixels = array.dtype == np.uint8 if pixels is None else bool(pixels)
        self.index = np.arange(len(array), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        rest = tuple(array.shape[1:])
        if layout == "NHW":
            rest = (1, *rest)
        elif layout == "NHWC":
            rest = (rest[2], rest[0], rest[1])
        elif layout.startswith("flat:"):
            h, w, c = (int(v) for v in layout[5:].split(","))
            if h * w * c != math.prod(rest):
                raise ValueError(f"layout {layout} does not fit rows of shape {rest}")
            rest = (c, h, w)
        self.event_shape = rest

    # tensor-like surface used by the trainer and the estimators
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.event_shape))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def dim(self) -> int:
        return 1 + len(self.event_shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def raw_dtype(self) -> np.dtype:
        return self.array.dtype

    def _view(self, index: np.ndarray) -> Rows:
        return Rows(self.array, index, self.layout, pixels=self.pixels, standardization=self.standardization)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Rows of the underlying array (file row numbers) as float32 examples, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        native = self.array.dtype.newbyteorder("=")  # a big-endian file is read into native order
        raw = np.empty((len(rows), *self.array.shape[1:]), dtype=native)
        raw[order] = self.array[rows[order]]  # sorted reads: sequential pages of the file
        return self.convert(raw)

    def will_need(self, positions: np.ndarray) -> int:
        """Ask the kernel to read the file's rows at these positions into the page cache in the background
        (``posix_fadvise(WILLNEED)``, one request per run of rows with gaps under 64 KiB); returns the requests made.
        Reads nothing itself and changes no value: a hint for the block order, where the next window's runs are
        known. Nothing happens for an array that is not a file, or where the call does not exist."""
        filename = getattr(self.array, "filename", None)
        if filename is None or not hasattr(os, "posix_fadvise") or not len(positions):
            return 0
        row = self.array.dtype.itemsize * math.prod(self.array.shape[1:])
        rows = np.unique(self.index[np.asarray(positions, dtype=np.int64)])
        breaks = np.nonzero(np.diff(rows) * row > _ADVICE_GAP_BYTES)[0] + 1
        starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
        base = int(getattr(self.array, "offset", 0))
        try:
            fd = os.open(filename, os.O_RDONLY)
        except OSError:
            return 0
        try:
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                os.posix_fadvise(fd, base + s * row, (e - s) * row, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        return len(starts)

    def convert(self, raw: np.ndarray) -> torch.Tensor:
        """Raw rows (file layout and dtype) as float32 examples [n, *event_shape]."""
        if self.standardization is not None:
            return torch.from_numpy(standardize_block(raw, *self.standardization))
        x = _float(raw, self.pixels)
        if self.layout == "NHW":
            x = x.unsqueeze(1)
        elif self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2).contiguous()
        elif self.layout.startswith("flat:"):
            c, h, w = self.event_shape
            x = x.reshape(len(x), h, w, c).permute(0, 3, 1, 2).contiguous() if c > 1 else x.reshape(len(x), 1, h, w)
        return x

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._view(self.index[key])
        if isinstance(key, (int, np.integer)):
            return self.read(self.index[[int(key)]])[0]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self.read(self.index[np.asarray(key, dtype=np.int64)])

    def to_tensor(self) -> torch.Tensor:
        """Everything as one float32 tensor (only for splits known to be small)."""
        return torch.cat(list(iter_chunks(self))) if len(self) else torch.zeros(self.shape)

    def __repr__(self) -> str:
        return f"Rows({len(self)} of {len(self.array)} rows, {self.array.dtype}, event shape {self.event_shape})"


class PreparedRows:
    """A lazy split with a fixed-seed binarisation (``binarize``) or dequantisation (``dequantize``, ``levels``)."""

    def __init__(self, base: Rows, how: str, seed: int, levels: int | None = None, positions: np.ndarray | None = None):
        self.base, self.how, self.seed, self.levels = base, how, int(seed), levels
        self.positions = np.arange(len(base), dtype=np.int64) if positions is None else positions

    shape = property(lambda self: self.base.shape)
    dtype = property(lambda self: torch.float32)
    device = property(lambda self: torch.device("cpu"))
    event_shape = property(lambda self: self.base.event_shape)
    __len__ = lambda self: len(self.base)  # noqa: E731
    dim = lambda self: self.base.dim()  # noqa: E731
    numel = lambda self: self.base.numel()  # noqa: E731

    def _noise(self, positions: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(positions), *self.event_shape))
        chunks = positions // PREPARED_CHUNK
        for c in np.unique(chunks):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(c))
            u = torch.rand((PREPARED_CHUNK, *self.event_shape), generator=g)
            sel = np.nonzero(chunks == c)[0]
            out[torch.from_numpy(sel)] = u[torch.from_numpy(positions[sel] - int(c) * PREPARED_CHUNK)]
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            return PreparedRows(self.base[key], self.how, self.seed, self.levels, self.positions[key])
        single = isinstance(key, (int, np.integer))
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        key = np.asarray([int(key)] if single else key, dtype=np.int64)
        x, u = self.base[key], self._noise(self.positions[key])
        if self.how == "binarize":
            x = (u < x).to(torch.float32)
        else:
            x = (torch.round(x * (self.levels - 1)) + u) / self.levels
        return x[0] if single else x

    def to_tensor(self) -> torch.Tensor:
        return torch.cat(list(iter_chunks(self))) if len(self) else torch.zeros(self.shape)


def iter_chunks(x, rows: int = _READ_ROWS) -> Iterator[torch.Tensor]:
    """A tensor, :class:`Rows` or :class:`PreparedRows` as consecutive float32 tensors of at most ``rows`` rows."""
    for i in range(0, len(x), rows):
        yield as_tensor(x[i : i + rows])


def as_tensor(x) -> torch.Tensor:
    """A tensor as it is; a lazy split (or a slice of one) read into a float32 tensor."""
    if isinstance(x, torch.Tensor):
        return x
    return x[np.arange(len(x))] if len(x) else torch.zeros(x.shape)
