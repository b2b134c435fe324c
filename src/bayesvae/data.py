"""Data sources for the VAE trainer: float32 tensors, or splits that stay on disk, checked before training starts.

Resume needs data that can be indexed by a seeded permutation: in-memory tensors for MNIST, tables and image folders,
and for an image ``.npy`` larger than :data:`LAZY_BYTES` a memory-mapped file whose splits are lists of row numbers
(:class:`bayesvae.arrays.Rows`; 8-bit pixels stay uint8 until a batch is read; checks and fingerprint in chunks).
Why validate up front: a NaN in row 40,000 must fail in the first second with the file, row and column, not as a
NaN loss hours later.  Every user-caused problem raises :class:`DataValidationError` (or :class:`ConfigError` for a
bad option) with a message that names the file and location and says how to fix it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import draws, memory
from .arrays import Rows, column_moments, iter_chunks, standardize_block
from .errors import ConfigError, DataValidationError

__all__ = [
    "Dataset", "load_dataset", "dataset_info", "default_likelihood", "check_likelihood_support", "binarize",
    "fixed_binarization", "needs_binarization", "on_level_grid", "fetch_mnist", "default_cache_dir", "MNIST_MIRRORS",
]

_F32_MAX = float(np.finfo(np.float32).max)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
_MNIST_FILES = {  # name -> (MD5 of the published .gz (torchvision's list), MD5 of the uncompressed IDX file)
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
_MNIST_TRAIN, _MNIST_VALID = 59_600, 400  # the dynamic-binarisation (IWAE) protocol: last 400 training images validate
_MAX_DOWNLOAD_BYTES = 64 << 20  # a mirror cannot fill the disk: the largest MNIST file is under 10 MB
#: An image ``.npy`` whose examples would take more than this as float32 stays on disk (memory-mapped, read a batch
#: at a time, 8-bit pixels kept as uint8); smaller files are read into memory after the same chunked checks.
LAZY_BYTES = int(os.environ.get("BAYESVAE_LAZY_BYTES", str(256 << 20)))
_CHECK_ROWS = 16384


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three splits of one data set as float32 tensors ``[N, *event_shape]`` plus what the trainer needs to know."""

    name: str
    kind: str  # "binary" (all values exactly 0/1), "image" (pixels in [0, 1]), "tabular"
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    feature_names: tuple[str, ...] | None = None
    standardization: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std) from the train split
    class_names: tuple[str, ...] | None = None  # label i means class_names[i] (image subfolders, digits, mnist)
    source_rows: dict | None = None  # split -> int64 array: each example's 0-based row (example number) in its source
    layout: str | None = None  # how a 2-D array of pixels was taken (flattened images: the shape found or given)

    def rows(self, split: str) -> np.ndarray:
        """The 0-based position of each example of ``split`` in the file it came from (for a CSV with a header, line
        = row + 2), so a flagged example can be found in the user's file."""
        if isinstance(getattr(self, split), Rows):
            return np.asarray(getattr(self, split).index, dtype=np.int64)
        if self.source_rows is not None and split in self.source_rows:
            return np.asarray(self.source_rows[split], dtype=np.int64)
        return np.arange(len(getattr(self, split)), dtype=np.int64)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    @cached_property
    def value_range(self) -> tuple[float, float]:
        """(min, max) over all splits; cached because MNIST is 200 MB and the trainer asks more than once."""
        parts = [t for t in (self.train, self.valid, self.test) if t.numel()]
        lows, highs = [], []
        for t in parts:  # in chunks: a split may be a memory-mapped file
            for c in ([t] if isinstance(t, torch.Tensor) else iter_chunks(t)):
                lows.append(float(c.min()))
                highs.append(float(c.max()))
        return min(lows), max(highs)

    @cached_property
    def levels(self) -> int | None:
        """How many equally spaced values k / (L - 1) the data take in [0, 1]: 256 for 8-bit pixels (checked first,
        the convention for bits/dim), else the smallest L ≤ 256 that fits (17 for ``digits``), else None
        (continuous values: nothing to dequantise)."""
        parts = [t for t in (self.train, self.valid, self.test) if t.numel()]
        lo, hi = self.value_range
        if not parts or lo < 0 or hi > 1:
            return None

        if all(isinstance(t, Rows) and t.pixels and t.standardization is None for t in parts):
            return 256  # 8-bit pixels, k / 255, by construction
        on_grid = on_level_grid
        if all(on_grid(t, 256) for t in parts):
            return 256
        # The distinct values of every split (in chunks), not of a prefix: a grid must fit all the data.
        distinct = torch.unique(torch.cat([torch.unique(block) for t in parts for block in _value_blocks(t)]))
        return next((n for n in range(2, 256) if on_grid(distinct, n)), None)

    def fingerprint(self) -> str:
        """SHA-256 of the content (shapes and float32 bytes of every split), not the name: a moved file keeps its
        fingerprint, so a resume can check it is training on the same data."""
        h = hashlib.sha256(b"bayesvae-dataset-v1")
        for split, t in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            h.update(f"{split}:{tuple(t.shape)}:".encode())
            for block in ([t] if isinstance(t, torch.Tensor) else iter_chunks(t)):  # the same bytes, chunk by chunk
                h.update(np.ascontiguousarray(block.detach().cpu().numpy(), dtype="<f4").data)
        return h.hexdigest()

    def describe(self) -> dict:
        """A JSON-able summary for ``bayesvae data info`` and run metadata."""
        lo, hi = self.value_range
        info = {
            "name": self.name, "kind": self.kind,
            "splits": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
            "event_shape": list(self.event_shape), "num_dims": self.num_dims, "value_range": [lo, hi],
            "labels": self.train_labels is not None, "standardized": self.standardization is not None,
            "default_likelihood": default_likelihood(self),
        }
        if self.class_names is not None:
            info["classes"] = list(self.class_names)
        if self.layout is not None:
            info["layout"] = self.layout
        if self.feature_names is not None:
            info["feature_names"] = list(self.feature_names)
        if self.standardization is not None:  # constant columns were divided by the 1e-8 floor, not by zero
            const = [i for i, s in enumerate(self.standardization[1].tolist()) if s <= 1e-8]
            info["constant_columns"] = [self.feature_names[i] if self.feature_names else i for i in const]
        return info


def _value_blocks(values):
    """The values of a tensor or of an on-disk split (``Rows``), flattened, in blocks of at most 4M."""
    for block in ([values] if isinstance(values, torch.Tensor) else iter_chunks(values)):
        flat = block.reshape(-1)
        for i in range(0, flat.numel(), 1 << 22):
            yield flat[i : i + (1 << 22)]


def on_level_grid(values, levels: int) -> bool:
    """True when every value is k / (levels - 1) for an integer k in [0, levels - 1] (checked in float32 chunks:
    k/255 is off by < 2e-5 levels). ``values``: a tensor or an on-disk split."""
    for flat in _value_blocks(values):
        scaled = flat * (levels - 1)
        if not bool(((scaled - scaled.round()).abs() <= 1e-3).all()):
            return False
        if scaled.numel() and (float(scaled.min()) < -1e-3 or float(scaled.max()) > levels - 1 + 1e-3):
            return False
    return True


# ----------------------------------------------------------------------------------------------------------- checks
def _fail(where: str, problem: str, fix: str) -> DataValidationError:
    return DataValidationError(f"{where}: {problem}. {fix}")


def _axis_names(shape: tuple[int, ...]) -> tuple[str, ...]:
    if len(shape) == 2:
        return ("example", "feature")
    if len(shape) == 3:
        return ("example", "row", "column")
    if shape[1] not in (1, 3) and shape[3] in (1, 3):
        return ("example", "row", "column", "channel")
    return ("example", "channel", "row", "column")


def _locate(index, shape: tuple[int, ...]) -> str:
    parts = ", ".join(f"{n} {int(i)}" for n, i in zip(_axis_names(shape), index, strict=False))
    return f"{parts} (0-based indices into an array of shape {tuple(shape)})"


def _check_dtype(a: np.ndarray, where: str) -> None:
    """Only bool, integer and real floating arrays are data; everything else is refused with the reason."""
    if a.dtype.kind in "biuf":
        return
    fixes = {"c": "Complex values are not supported; save x.real or abs(x)",
             "O": "Object arrays are not supported (they need pickle, which is refused); save a numeric array",
             "U": "Strings are not numbers; convert the values to floats", "S": "Bytes are not numbers; convert them"}
    fix = fixes.get(a.dtype.kind, "Save a plain numeric (bool, integer or float) array")
    raise _fail(where, f"unsupported dtype {a.dtype}", fix)


def _to_float32(a: np.ndarray, where: str) -> np.ndarray:
    """Cast to float32 after refusing NaN/inf and values that float32 cannot hold (1e39 would silently become inf)."""
    _check_dtype(a, where)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            idx = tuple(np.argwhere(bad)[0])
            raise _fail(where, f"non-finite value {a[idx]} at {_locate(idx, a.shape)}",
                        "Remove or impute missing/infinite values before training")
    with np.errstate(over="ignore"):  # overflow is detected below, with its location
        out = a.astype(np.float32)
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and not np.isfinite(out).all():
        idx = tuple(np.argwhere(~np.isfinite(out))[0])
        raise _fail(where, f"value {a[idx]:g} at {_locate(idx, a.shape)} overflows float32 (max {_F32_MAX:.3g})",
                    "Rescale the data (e.g. divide by a constant or take logs)")
    return out


#: Printed (``data:``) when a uint8 image stack holds only 0 and 1: already binary pixels, not grey levels k / 255.
BINARY_UINT8_NOTE = ("uint8 images whose values are all 0 or 1: taken as binary pixels (0 and 1), not as grey levels "
                     "k / 255 (save grey images with levels 0-255)")


def _uint8_zero_one(arrays) -> bool:
    """Whether uint8 image stacks hold only 0 and 1 (binary images, as saved by ``(x > t).astype(np.uint8)``): then
    they are binary pixels, not the grey levels 0 and 1/255. Arrays with no values decide nothing."""
    arrays = [a for a in arrays if a.size]
    return bool(arrays) and all(a.dtype == np.uint8 and int(a.max()) <= 1 for a in arrays)


def _array_to_examples(a: np.ndarray, where: str, zero_one: bool = False) -> tuple[np.ndarray, bool]:
    """Turn one array into float32 examples; returns (x, is_image).  Images are [N, C, H, W] with C in {1, 3}.
    ``zero_one``: uint8 images are binary pixels (all the arrays of the source hold only 0 and 1), not k / 255."""
    _check_dtype(a, where)
    if a.ndim not in (2, 3, 4):
        raise _fail(where, f"expected a 2-D table [N, D] or an image stack [N, H, W], [N, C, H, W] or "
                    f"[N, H, W, C] (C = 1 or 3), found shape {tuple(a.shape)}",
                    "Reshape it, e.g. x.reshape(len(x), -1) for vectors or x[:, None] for one feature")
    if a.ndim == 2:
        return _to_float32(a, where), False
    layout = _image_layout(a.shape, where)
    if a.dtype == np.uint8:
        x = a.astype(np.float32) if zero_one else a.astype(np.float32) / 255.0
    else:
        x = _to_float32(a, where)
        if a.size and (x.min() < 0 or x.max() > 1):
            raise _fail(where, f"a {a.ndim}-D array of dtype {a.dtype} with values in [{x.min():g}, {x.max():g}] "
                        "is neither a table [N, D] nor an image stack", "Save images as uint8 (0-255) or floats in "
                        "[0, 1], or flatten tabular data to 2-D [N, D]")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), True


def _image_layout(shape: tuple[int, ...], where: str) -> str:
    if len(shape) == 3:
        return "NHW"
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise _fail(where, f"4-D array of shape {tuple(shape)} has no channel axis of size 1 or 3",
                "Save images as [N, C, H, W] or [N, H, W, C] with C = 1 (grey) or 3 (RGB)")


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise _fail(where, f"labels must be a 1-D integer array of length {n}, found shape {tuple(y.shape)} dtype "
                    f"{y.dtype}", "Save labels as y.astype('int64') with one entry per example")
    if len(y) and y.min() < 0:
        raise _fail(where, f"negative label {y.min()}", "Use class indices 0, 1, 2, ...")
    return y.astype(np.int64)


# ------------------------------------------------------------------------------------------------------ file readers
#: Bounds on what an input file may claim, checked before anything is allocated or decompressed.
MAX_INPUT_BYTES = 8 << 30  # one array (declared size, after decompression)
MAX_IMAGE_PIXELS = 1 << 26  # one image: 67 M pixels (8192 x 8192)
MAX_CSV_LINE_BYTES = 16 << 20


def _check_declared_array(fp, where: str, total: int | None) -> tuple[int, int]:
    """Read a .npy header from ``fp`` (``total`` bytes long) and refuse an array whose declared size exceeds the
    bytes that hold it or the input limit (a header may claim 10^12 elements: nothing is allocated for it)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read(fp)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises tokenize/syntax/value errors alike
        if isinstance(exc, MemoryError):
            raise
        raise _fail(where, f"has no valid .npy header ({exc})", "Save it with numpy.save") from None
    if dtype.hasobject:
        raise _fail(where, f"holds Python objects (dtype {dtype}), which need pickle to load",
                    "Save a numeric array; pickled data are never loaded, for safety")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_INPUT_BYTES:
        raise _fail(where, f"declares an array of shape {shape} ({nbytes:,} bytes), over the {MAX_INPUT_BYTES:,}-"
                    "byte input limit", "Use a smaller array")
    available = None if total is None else total - fp.tell()
    if available is not None and nbytes > available:
        raise _fail(where, f"declares shape {shape} ({nbytes:,} bytes) but holds only {available:,} bytes "
                    "(truncated or corrupt)", "Save the array again with numpy.save")
    return math.prod(shape), nbytes


def _check_csv_lines(path: Path) -> None:
    """Refuse a CSV line over MAX_CSV_LINE_BYTES before parsing (a 100 MB line would cost gigabytes)."""
    try:
        with open(path, "rb") as fh:
            line, run = 1, 0
            while chunk := fh.read(1 << 20):
                start = 0
                while (nl := chunk.find(b"\n", start)) >= 0:
                    if run + nl - start > MAX_CSV_LINE_BYTES:
                        break
                    line, run, start = line + 1, 0, nl + 1
                else:
                    run += len(chunk) - start
                    if run <= MAX_CSV_LINE_BYTES:
                        continue
                raise _fail(f"{path}, line {line}", f"is longer than {MAX_CSV_LINE_BYTES:,} bytes",
                            "Check the file is a CSV with one example per line")
    except OSError as exc:
        raise _fail(str(path), f"cannot be read ({exc.strerror or exc})", "Check the path and permissions") from None


def _open_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped (read-only): nothing is read until it is used."""
    try:
        with open(path, "rb") as fh:  # the header is checked first: a claimed size never reaches an allocation
            _check_declared_array(fh, str(path), os.fstat(fh.fileno()).st_size)
        a = np.load(path, allow_pickle=False, mmap_mode="r")
    except DataValidationError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise _fail(str(path), f"cannot read .npy file ({exc})",
                    "Save it with numpy.save from a numeric array (object arrays are refused)") from None
    if not isinstance(a, np.ndarray):
        raise _fail(str(path), "is not a .npy array", "Use a .npz suffix for archives or save with numpy.save")
    return a


def _check_image_chunks(a: np.ndarray, where: str) -> tuple[str, bool, bool]:
    """Validate a (memory-mapped) image stack chunk by chunk; returns (layout, whether every value, as prepared, is 0
    or 1, whether the values are uint8 0/1: binary pixels, not levels k / 255)."""
    _check_dtype(a, where)
    layout = _image_layout(a.shape, where)
    binary = True
    if a.dtype == np.uint8:
        zero_255 = zero_one = True
        for i in range(0, len(a), _CHECK_ROWS):
            high = int(np.asarray(a[i : i + _CHECK_ROWS]).max(initial=0))
            zero_one = zero_one and high <= 1
            if zero_255 and not zero_one:
                block = np.asarray(a[i : i + _CHECK_ROWS])
                zero_255 = bool(((block == 0) | (block == 255)).all())
        return layout, zero_one or zero_255, zero_one
    for i in range(0, len(a), _CHECK_ROWS):
        block = np.asarray(a[i : i + _CHECK_ROWS])
        bad = ~np.isfinite(block) if block.dtype.kind == "f" else None
        if bad is not None and bad.any():
            idx = tuple(np.argwhere(bad)[0])
            raise _fail(where, f"non-finite value {block[idx]} at {_locate((idx[0] + i, *idx[1:]), a.shape)}",
                        "Remove or impute missing/infinite values before training")
        if block.size and (block.min() < 0 or block.max() > 1):
            raise _fail(where, f"a {a.ndim}-D array of dtype {a.dtype} with values outside [0, 1] (rows {i} to "
                        f"{i + len(block) - 1}) is neither a table [N, D] nor an image stack",
                        "Save images as uint8 (0-255) or floats in [0, 1], or flatten tabular data to 2-D [N, D]")
        binary = binary and bool(((block == 0) | (block == 1)).all())
    return layout, binary, False


# ------------------------------------------------------------------------------------------ tables and flat pixels
#: A square side is looked for in 2-D pixel arrays from 8 x 8 up (a narrower table of pixels stays a vector).
AUTO_SQUARE_MIN = 64


@dataclass
class _TableScan:
    """What one chunked pass over a 2-D array found, on its values as float32 (the loader's view of them)."""

    col_min: np.ndarray
    col_max: np.ndarray
    zero_one: bool = True  # every value 0 or 1
    levels_255: bool = True  # every value an integer in [0, 255]
    grid_255: bool = True  # every value k / 255 in [0, 1]
    zero_255: bool = True  # every value 0 or 255

    @property
    def low(self) -> float:
        return float(self.col_min.min()) if self.col_min.size else 0.0

    @property
    def high(self) -> float:
        return float(self.col_max.max()) if self.col_max.size else 0.0


def _scan_table(a: np.ndarray, where: str) -> _TableScan:
    """Check a 2-D array (in memory or memory-mapped) in chunks of rows: no NaN/inf, nothing float32 cannot hold
    (named by row and column); collect the column ranges and what kind of values it holds."""
    _check_dtype(a, where)
    width = a.shape[1]
    scan = _TableScan(np.full(width, np.inf), np.full(width, -np.inf))
    for i in range(0, len(a), _CHECK_ROWS):
        block = np.asarray(a[i : i + _CHECK_ROWS])
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise _fail(where, f"non-finite value {block[r, c]} at {_locate((r + i, c), a.shape)}",
                            "Remove or impute missing/infinite values before training")
        with np.errstate(over="ignore"):
            x = block.astype(np.float32)
        if block.dtype.kind == "f" and block.dtype.itemsize > 4 and not np.isfinite(x).all():
            r, c = np.argwhere(~np.isfinite(x))[0]
            raise _fail(where, f"value {block[r, c]:g} at {_locate((r + i, c), a.shape)} overflows float32 (max "
                        f"{_F32_MAX:.3g})", "Rescale the data (e.g. divide by a constant or take logs)")
        if not x.size:
            continue
        scan.col_min = np.minimum(scan.col_min, x.min(axis=0))
        scan.col_max = np.maximum(scan.col_max, x.max(axis=0))
        if scan.zero_255:
            scan.zero_255 = bool(((x == 0) | (x == 255)).all())
        if block.dtype == np.uint8:
            scan.zero_one = scan.zero_one and bool((block <= 1).all())
            scan.grid_255 = scan.grid_255 and bool((block <= 1).all())
            continue
        if scan.zero_one:
            scan.zero_one = bool(((x == 0) | (x == 1)).all())
        if scan.levels_255:
            scan.levels_255 = bool(((x >= 0) & (x <= 255) & (x == np.round(x))).all())
        if scan.grid_255:
            with np.errstate(over="ignore", invalid="ignore"):  # huge values are simply off the grid
                scaled = x * 255
                scan.grid_255 = bool(((x >= 0) & (x <= 1) & (np.abs(scaled - np.round(scaled)) <= 1e-3)).all())
    return scan


def parse_image_shape(values) -> tuple[int, ...] | None:
    """``--image-shape``: None (find a square side), ``()`` or ``none`` (a table, never images), (H, W) or
    (H, W, C) with C = 1 or 3."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    values = list(values)
    if [str(v).lower() for v in values] in ([], ["none"]):
        return ()
    try:
        shape = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1 or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ConfigError(f"--image-shape {' '.join(map(str, values))}: give H W (grey) or H W C with C = 1 or 3 "
                          "(each row holds the pixels in row-major H, W, C order), or 'none' for a table")
    return shape if len(shape) == 3 else (*shape, 1)


@dataclass(frozen=True)
class _FlatLayout:
    image: bool  # examples are pixels (prepared like images), not a table
    pixels: bool  # values are levels 0-255 that become k / 255
    layout: str  # "N..." (vectors) or "flat:H,W,C"
    note: str | None = None


def _flat_layout(scan: _TableScan, width: int, uint8: bool, image_shape, where: str) -> _FlatLayout:
    """Whether a 2-D array holds flattened images: uint8 values, or values on the k/255 grid in [0, 1], or (with a
    square side of at least 8 x 8, or ``image_shape``) integers 0-255; 0/1 data stay binary vectors unless
    ``image_shape`` says they are images. ``image_shape`` = () keeps a table."""
    if image_shape == ():
        return _FlatLayout(False, False, "N...")
    if image_shape is not None:
        h, w, c = image_shape
        if h * w * c != width:
            raise _fail(where, f"--image-shape {h} {w} {c} holds {h * w * c} pixels, but each row has {width} values",
                        "Give the shape of the images that were flattened into the rows")
        if scan.zero_one and not uint8 or uint8 and scan.zero_one:
            pixels = False
        elif uint8 or (scan.levels_255 and scan.high > 1):
            pixels = True
        elif scan.low >= 0 and scan.high <= 1:
            pixels = False
        else:
            raise _fail(where, f"--image-shape: values from {scan.low:g} to {scan.high:g} are not pixels",
                        "Images are uint8, integers 0-255, or values in [0, 1]; drop --image-shape for a table")
        return _FlatLayout(True, pixels, f"flat:{h},{w},{c}",
                           f"flattened images of {h} x {w}{' x 3' if c == 3 else ''} (--image-shape)")
    if scan.zero_one:
        return _FlatLayout(False, False, "N...")
    side = math.isqrt(width)
    square = side * side == width and width >= AUTO_SQUARE_MIN
    if not (uint8 or scan.grid_255 or (scan.levels_255 and square)):
        return _FlatLayout(False, False, "N...")
    pixels = uint8 or not scan.grid_255
    what = "8-bit pixels" if pixels else "pixels on the k/255 grid"
    if square:
        return _FlatLayout(True, pixels, f"flat:{side},{side},1",
                           f"{what}: each row of {width} values taken as a {side} x {side} image (a square side; "
                           "--image-shape H W [C] sets another shape, --image-shape none keeps a table)")
    return _FlatLayout(True, pixels, "N...", f"{what}: rows of {width} values, no square side, so they are not drawn "
                       "as images (--image-shape H W [C] gives their shape, --image-shape none keeps a table)")


def _column_statistics(chunks, width: int, col_min, col_max, names, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and std (floored at 1e-8: a constant column gives zeros, not NaN) in one float64 pass; refuses
    a column whose standardised values would overflow float32 (the range of every split is in col_min/col_max)."""
    _, mean, std = column_moments(chunks)
    std = np.maximum(std, 1e-8)
    with np.errstate(over="ignore"):
        reach = np.maximum(np.abs(col_max.astype(np.float64) - mean), np.abs(col_min.astype(np.float64) - mean)) / std
    if not np.all(reach <= _F32_MAX):
        col = int(np.argwhere(~(reach <= _F32_MAX))[0][0])
        raise _fail(where, f"standardising column {names[col] if names else col} overflows float32 (its train values "
                    "are constant)", "Drop the constant column or pass standardize=False")
    return mean, std


def _sidecar_labels(path: Path, n: int) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Labels that ``bayesvae data convert`` kept beside ``X.npy``: ``X.labels.npy`` (int64, one per row) and the
    class names in ``X.labels.json``."""
    label_path = path.with_name(path.stem + ".labels.npy")
    if not label_path.is_file():
        return None, None
    where = str(label_path)
    y = np.asarray(_open_npy(label_path))
    _check_dtype(y, where)
    y = _labels(y, n, where)
    classes = None
    meta = path.with_name(path.stem + ".labels.json")
    if meta.is_file():
        import json

        try:
            classes = json.loads(meta.read_text(encoding="utf-8")).get("classes")
        except (OSError, ValueError, AttributeError) as exc:
            raise _fail(str(meta), f"is not a readable JSON object ({exc})", "Convert the data again") from None
        if classes is not None:
            if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)) or (
                    len(y) and y.max() >= len(classes)):
                raise _fail(str(meta), "'classes' must be a list of names covering every label",
                            "Convert the data again")
            classes = tuple(classes)
    return y, classes


def _npy_dataset(path: Path, a: np.ndarray, *, seed: int, valid_fraction: float, test_fraction: float,
                 standardize: bool | None, limit: int | None, image_shape=None) -> Dataset:
    """Any .npy layout (a table, flattened images, an image stack), memory-mapped and checked in chunks. Its splits
    are row lists into the file (:class:`Rows`): they stay on disk when their float32 examples would take more than
    :data:`LAZY_BYTES`, and are read into memory (chunk by chunk, the same values) otherwise."""
    where = str(path)
    _check_dtype(a, where)
    if a.ndim not in (2, 3, 4):
        raise _fail(where, f"expected a 2-D table [N, D] or an image stack [N, H, W], [N, C, H, W] or "
                    f"[N, H, W, C] (C = 1 or 3), found shape {tuple(a.shape)}",
                    "Reshape it, e.g. x.reshape(len(x), -1) for vectors or x[:, None] for one feature")
    if len(a) == 0:
        raise _fail(where, "contains no examples", "Provide a non-empty array")
    # checked before the split's permutation is drawn: even the row lists of 10^9 rows take gigabytes
    memory.require(where, len(a) * memory.STREAM_BYTES_PER_ROW + memory.STREAM_FIXED_BYTES,
                   f"streaming {len(a):,} examples of shape {tuple(a.shape[1:])} ({a.dtype}) from disk (the row "
                   "lists of its splits and the buffers)", "Use a file with fewer rows, or free memory")
    idx = _split_indices(len(a), seed, valid_fraction, test_fraction, where)
    kept = {s: i[:limit] for s, i in idx.items()}
    values = sum(len(i) for i in kept.values()) * math.prod(a.shape[1:])
    in_memory = values * memory.MEMORY_BYTES_PER_VALUE + len(a) * memory.STREAM_BYTES_PER_ROW
    # on disk when large, or when reading it in would not fit comfortably: both give the same values
    lazy = values * 4 > LAZY_BYTES or in_memory > memory.HEADROOM * memory.available_bytes()
    standardization, note, names = None, None, None
    if a.ndim in (3, 4):
        if image_shape is not None:
            raise ConfigError(f"--image-shape is for 2-D arrays of flattened images; {where} holds images of shape "
                              f"{tuple(a.shape[1:])} already: drop it")
        if standardize:
            raise ConfigError(f"standardize=True is only for tabular data, but {where} holds images")
        layout, binary, zero_one = _check_image_chunks(a, where)
        kind, pixels = ("binary" if binary else "image"), (False if zero_one else None)
        note = BINARY_UINT8_NOTE if zero_one else None
    else:
        scan = _scan_table(a, where)
        flat = _flat_layout(scan, a.shape[1], a.dtype == np.uint8, image_shape, where)
        layout, pixels, note = flat.layout, flat.pixels, flat.note
        if flat.image:
            if standardize:
                raise ConfigError(f"standardize=True is only for tabular data, but {where} holds pixels ({note})")
            kind = "binary" if (scan.zero_255 if pixels else scan.zero_one) else "image"
        else:
            kind = "binary" if scan.zero_one else "tabular"
            if standardize if standardize is not None else kind == "tabular":
                base = Rows(a, kept["train"])
                standardization = _column_statistics((b.numpy() for b in iter_chunks(base)), a.shape[1],
                                                     scan.col_min, scan.col_max, names, where)
                kind = "tabular"
    labels, classes = _sidecar_labels(path, len(a))
    # Rows stand in for the split tensors (the tensor-like surface of arrays.py) while the splits stay on disk.
    splits: dict[str, Any] = {s: Rows(a, i, layout, pixels=pixels, standardization=standardization)
                              for s, i in kept.items()}
    lab = {s: (torch.from_numpy(labels[i]) if labels is not None else None) for s, i in kept.items()}
    if not lazy:
        splits = {s: r.to_tensor() for s, r in splits.items()}
    std = None if standardization is None else cast(
        "tuple[torch.Tensor, torch.Tensor]", tuple(torch.from_numpy(v.astype(np.float32)) for v in standardization))
    return Dataset(where, kind, splits["train"], splits["valid"], splits["test"], lab["train"], lab["valid"],
                   lab["test"], None, std, classes, None if lazy else kept, note)


def _npz_values(z, key: str, path: Path) -> tuple[int, int]:
    """(values, bytes) that array ``key`` of an .npz declares, after checking its header (nothing inflated)."""
    try:
        info = z.zip.getinfo(key if key in z.zip.namelist() else f"{key}.npy")
        if info.file_size > MAX_INPUT_BYTES:  # a decompression bomb: refused before inflating
            raise _fail(f"{path} [array '{key}']", f"inflates to {info.file_size:,} bytes, over the "
                        f"{MAX_INPUT_BYTES:,}-byte input limit", "Use a smaller array")
        with z.zip.open(info) as member:
            return _check_declared_array(member, f"{path} [array '{key}']", info.file_size)
    except (KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as exc:
        raise _fail(f"{path} [array '{key}']", f"cannot be read ({exc})", "Save it with numpy.savez") from None


def _npz_array(z, key: str, path: Path) -> np.ndarray:
    _npz_values(z, key, path)
    try:
        return z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise _fail(f"{path} [array '{key}']", f"cannot be read ({exc})", "Store plain numeric arrays with "
                    "numpy.savez; object arrays need pickle, which is refused for safety") from None


def _read_npz(path: Path) -> dict:
    """Arrays 'train'/'valid'/'test' are used as given splits; otherwise 'x'/'X'/'data' (or the only array)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        raise _fail(str(path), f"cannot read .npz archive ({exc})", "Save it with numpy.savez") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _fail(str(path), "is a single array, not an .npz archive", "Rename it to .npy")
    with z:
        keys = list(z.files)
        out: dict = {"splits": {}, "labels": {}}
        split_keys = [k for k in ("train", "valid", "test") if k in keys]
        data_keys = split_keys or [k for k in ("x", "X", "data") if k in keys][:1] or keys[:1]
        declared = [_npz_values(z, k, path) for k in data_keys]
        values, nbytes = sum(v for v, _ in declared), sum(b for _, b in declared)
        memory.require(str(path), nbytes + values * memory.NPZ_BYTES_PER_VALUE, f"reading {values:,} values into "
                       "memory", _CONVERT_HINT.format(src=path))
        if split_keys:
            if "train" not in split_keys:
                raise _fail(str(path), f"has split arrays {split_keys} but no 'train'", "Add a 'train' array")
            for s in split_keys:
                out["splits"][s] = _npz_array(z, s, path)
                for lk in (f"{s}_labels", f"y_{s}"):
                    if lk in keys:
                        out["labels"][s] = _npz_array(z, lk, path)
            return out
        x_key = next((k for k in ("x", "X", "data") if k in keys), keys[0] if len(keys) == 1 else None)
        if x_key is None:
            raise _fail(str(path), f"has arrays {keys} but none named train/valid/test or x/X/data",
                        "Name the data array 'x' (and labels 'y'), or provide 'train', 'valid', 'test'")
        out["x"] = _npz_array(z, x_key, path)
        y_key = next((k for k in ("y", "labels") if k in keys), None)
        out["y"] = _npz_array(z, y_key, path) if y_key else None
        return out


def _parse_cell(text: str, path: Path, line: int, col: int, name: str) -> float:
    where = f"{path}, line {line}, column {col} ({name!r})"
    try:
        v = float(text)
    except ValueError:
        problem = "empty cell (missing value)" if not text.strip() else f"non-numeric value {text!r}"
        if ";" in text or "\t" in text:
            problem += " (only comma-separated files are supported)"
        raise _fail(where, problem, "Every data cell must be a number; impute or drop the row "
                    "(if line 1 is a header, make every header name non-numeric)") from None
    if not math.isfinite(v):
        raise _fail(where, f"non-finite value {text!r}", "Replace NaN/inf by a number or drop the row")
    if abs(v) > _F32_MAX:
        raise _fail(where, f"value {text!r} overflows float32 (max {_F32_MAX:.3g})", "Rescale the column")
    return v


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_csv(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Parse a numeric CSV by hand so every error can name the line (1-based, as an editor shows it) and column."""
    _check_csv_lines(path)
    rows: list[list[float]] = []
    header: tuple[str, ...] | None = None
    width = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue  # blank lines carry no data
                line = reader.line_num
                if not width:
                    width = len(cells)
                    if not any(_is_number(c) for c in cells):
                        header = tuple(c.strip() for c in cells)
                        continue
                if len(cells) != width:
                    raise _fail(f"{path}, line {line}", f"has {len(cells)} columns, expected {width} as in the "
                                "first row", "Every row needs the same number of comma-separated cells")
                names = header or tuple(f"column {j + 1}" for j in range(width))
                rows.append([_parse_cell(c, path, line, j + 1, names[j]) for j, c in enumerate(cells)])
    except UnicodeDecodeError as exc:
        raise _fail(str(path), f"is not UTF-8 text ({exc.reason})", "Save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise _fail(str(path), f"malformed CSV ({exc})", "Check quoting on the reported line") from None
    if not rows:
        raise _fail(str(path), "contains no data rows" + (" (only a header)" if header else ""),
                    "Provide a CSV with one example per row")
    return np.asarray(rows, dtype=np.float64).astype(np.float32), header


def _read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL warns about big images; the size is checked here instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _fail(str(path), f"is {img.width}x{img.height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
                            "limit (a decompression bomb, or far too large for a VAE)", "Resize the images")
            img.load()
            mode = img.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise _fail(str(path), f"{mode} (16/32-bit) images are not supported", "Convert it to 8-bit")
            if mode in ("1", "L", "LA"):
                return img.convert("L")
            return img.convert("RGB")
    except DataValidationError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _fail(str(path), f"unreadable or corrupt image ({exc})", "Re-export or delete this file") from None


def _image_files(root: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """Images directly in ``root``, or one subfolder per class (labels follow sorted folder names)."""
    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return images(root), None, None
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    if loose:
        raise _fail(str(loose[0]), "is an image outside the class subfolders",
                    "Move it into a class folder or remove the subfolders")
    files, labels = [], []
    for i, c in enumerate(classes):
        found = images(root / c)
        if not found:
            raise _fail(str(root / c), "class folder contains no images", "Add images or remove the folder")
        files += found
        labels += [i] * len(found)
    return files, labels, tuple(classes)


def _read_image_dir(root: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None, bool]:
    """A folder of images as float32 [N, C, H, W], labels, class names, and whether they held only 0 and 1."""
    files, labels, classes = _image_files(root)
    if not files:
        raise _fail(str(root), f"contains no images ({', '.join(sorted(_IMAGE_SUFFIXES))})",
                    "Point to a folder of images, or subfolders of images (one per class)")
    imgs: list = []
    for f in files:
        img = _read_image(f)
        if imgs and img.size != imgs[0].size:
            raise _fail(str(f), f"has size {img.size[0]}x{img.size[1]} but {files[0].name} has "
                        f"{imgs[0].size[0]}x{imgs[0].size[1]}", "Resize all images to one size (e.g. ImageMagick: "
                        f"mogrify -resize {imgs[0].size[0]}x{imgs[0].size[1]}! *.png)")
        imgs.append(img)
    colour = any(i.mode == "RGB" for i in imgs)  # mixed grey and colour: grey is exactly representable in RGB
    arrays = [np.asarray(i.convert("RGB") if colour else i, dtype=np.uint8) for i in imgs]
    x = np.stack(arrays)
    x = x.transpose(0, 3, 1, 2) if colour else x[:, None]
    zero_one = _uint8_zero_one([x])  # images of 0 and 1 only are binary pixels, as in an .npy
    out = np.ascontiguousarray(x, dtype=np.float32) / np.float32(1.0 if zero_one else 255.0)
    return out, (np.asarray(labels) if labels else None), classes, zero_one


# ---------------------------------------------------------------------------------------------------------- MNIST
def default_cache_dir(name: str = "mnist") -> Path:
    """``$BAYESVAE_DATA/<name>`` if the variable is set, else ``~/.cache/bayesvae/<name>``."""
    return Path(os.environ.get("BAYESVAE_DATA") or "~/.cache/bayesvae").expanduser() / name


def _read_idx(directory: Path, stem: str, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) and check magic, dimensions and size, so corruption fails loudly."""
    raw_path, gz_path = directory / stem, directory / f"{stem}.gz"
    path = raw_path if raw_path.is_file() else gz_path
    if not path.is_file():
        raise _fail(str(gz_path), "MNIST file not found",
                    "Run `bayesvae data fetch mnist`, or pass --data-dir pointing to the four IDX files")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(str(path), f"corrupt gzip data ({exc})", "Delete it and run `bayesvae data fetch mnist`") from None
    head = 4 + 4 * ndim
    if len(data) < head or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise _fail(str(path), f"bad IDX header (magic {data[:4].hex() or 'missing'}, expected 000008{ndim:02x})",
                    "The file is not an MNIST IDX file; delete it and run `bayesvae data fetch mnist`")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    if len(data) - head != math.prod(dims):
        raise _fail(str(path), f"holds {len(data) - head} bytes of data but its header promises {math.prod(dims)} "
                    f"(dims {dims}): truncated or corrupt", "Delete it and run `bayesvae data fetch mnist`")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def _load_mnist_split(directory: Path, prefix: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(directory, f"{prefix}-images-idx3-ubyte", 3)
    labels = _read_idx(directory, f"{prefix}-labels-idx1-ubyte", 1)
    if images.shape != (count, 28, 28) or labels.shape != (count,):
        raise _fail(str(directory / prefix), f"expected {count} images of 28x28 and {count} labels, found "
                    f"{images.shape} and {labels.shape}", "Use the original MNIST files (`bayesvae data fetch mnist`)")
    return images, labels


def _load_mnist(data_dir: str | None, limit: int | None) -> Dataset:
    directory = Path(data_dir).expanduser() if data_dir else default_cache_dir("mnist")
    memory.require(str(directory), 70_000 * 784 * 10, "reading MNIST into memory", "Free memory and try again")
    train_x, train_y = _load_mnist_split(directory, "train", _MNIST_TRAIN + _MNIST_VALID)
    test_x, test_y = _load_mnist_split(directory, "t10k", 10_000)
    parts = {"train": (train_x[:_MNIST_TRAIN], train_y[:_MNIST_TRAIN]),
             "valid": (train_x[_MNIST_TRAIN:], train_y[_MNIST_TRAIN:]), "test": (test_x, test_y)}
    tensors = {s: (torch.from_numpy(x[:limit].astype(np.float32)[:, None] / 255.0),  # slice first: cheap limit
                   torch.from_numpy(y[:limit].astype(np.int64))) for s, (x, y) in parts.items()}
    rows = {"train": np.arange(_MNIST_TRAIN)[:limit],
            "valid": np.arange(_MNIST_TRAIN, _MNIST_TRAIN + _MNIST_VALID)[:limit],
            "test": np.arange(10_000)[:limit]}  # train/valid: rows of the train file; test: rows of t10k
    return Dataset("mnist", "image", tensors["train"][0], tensors["valid"][0], tensors["test"][0],
                   tensors["train"][1], tensors["valid"][1], tensors["test"][1],
                   class_names=tuple(str(i) for i in range(10)), source_rows=rows)


# ------------------------------------------------------------------------------------------------------- assembling
def _split_indices(n: int, seed: int, valid_fraction: float, test_fraction: float, where: str) -> dict:
    """Fixed-seed split.  The test set is taken first, so it depends only on (seed, test_fraction): tuning the
    validation fraction can never move examples into or out of the test set."""
    if n < 3:
        raise _fail(where, f"has {n} example(s); at least 3 are needed for train/valid/test",
                    "Provide more data")
    sizes = {k: (max(1, math.floor(n * f + 0.5)) if f > 0 else 0)
             for k, f in (("test", test_fraction), ("valid", valid_fraction))}
    if n - sizes["test"] - sizes["valid"] < 1:
        raise _fail(where, f"has {n} examples: too few to hold out {sizes['valid']} valid and {sizes['test']} test",
                    "Lower --valid-fraction/--test-fraction or provide more data")
    perm = np.random.default_rng(seed).permutation(n)
    test, valid = perm[: sizes["test"]], perm[sizes["test"]: sizes["test"] + sizes["valid"]]
    train = perm[sizes["test"] + sizes["valid"]:]
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def _check_options(valid_fraction: float, test_fraction: float, limit: int | None) -> None:
    for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {f}")
    if valid_fraction + test_fraction >= 1:
        raise ConfigError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction + test_fraction}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit}")


def _standardize(splits: dict, names, where: str,
                 col_range: tuple[np.ndarray, np.ndarray]) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """z-score every column with the TRAIN split's mean and std (no peeking at valid/test), computed as for a file
    that stays on disk (:func:`_column_statistics`, :func:`bayesvae.arrays.standardize_block`), so both hold the
    same values."""
    train = splits["train"]
    chunks = (train[i : i + _CHECK_ROWS] for i in range(0, len(train), _CHECK_ROWS))
    mean, std = _column_statistics(chunks, train.shape[1], *col_range, names, where)
    out = {s: np.concatenate([standardize_block(x[i : i + _CHECK_ROWS], mean, std)
                              for i in range(0, len(x), _CHECK_ROWS)]) if len(x) else x.astype(np.float32)
           for s, x in splits.items()}
    return out, (torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)))


def _flat_pixels(splits: dict, uint8: bool, image_shape, where: str) -> tuple[dict, bool, str | None]:
    """2-D in-memory splits (CSV, .npz) that hold flattened images (see :func:`_flat_layout`) become images: levels
    0-255 divided by 255 (in float32, as a uint8 batch is), rows reshaped to [C, H, W]. Returns (splits, is_image,
    note)."""
    parts = [a for a in splits.values() if len(a)]
    width = next(iter(splits.values())).shape[1]
    scans = [_scan_table(a, where) for a in parts]
    scan = _TableScan(np.min([t.col_min for t in scans], axis=0), np.max([t.col_max for t in scans], axis=0),
                      all(t.zero_one for t in scans), all(t.levels_255 for t in scans),
                      all(t.grid_255 for t in scans), all(t.zero_255 for t in scans))
    flat = _flat_layout(scan, width, uint8, image_shape, where)
    if not flat.image:
        return splits, False, None
    out = {}
    for s, a in splits.items():
        x = a.astype(np.float32) / np.float32(255.0) if flat.pixels else a.astype(np.float32)
        if flat.layout.startswith("flat:"):
            h, w, c = (int(v) for v in flat.layout[5:].split(","))
            x = np.ascontiguousarray(x.reshape(len(x), h, w, c).transpose(0, 3, 1, 2))
        out[s] = x
    return out, True, flat.note


def _assemble(name: str, where: str, splits: dict, labels: dict, is_image: bool, *, seed: int, valid_fraction: float,
              test_fraction: float, standardize: bool | None, limit: int | None, feature_names=None,
              class_names=None, image_shape=None, uint8: bool = False, note: str | None = None) -> Dataset:
    rows = None
    if "x" in splits:  # one array: split it with the fixed-seed permutation
        x, y = splits.pop("x"), labels.pop("x", None)
        idx = _split_indices(len(x), seed, valid_fraction, test_fraction, where)
        splits = {s: x[i] for s, i in idx.items()}
        labels = {s: y[i] for s, i in idx.items()} if y is not None else {}
        rows = {s: i[:limit].astype(np.int64) for s, i in idx.items()}
    shapes = {s: tuple(a.shape[1:]) for s, a in splits.items()}
    if len(set(shapes.values())) != 1:
        raise _fail(where, f"splits have different example shapes {shapes}", "Give every split the same shape")
    if len(splits["train"]) < 1:
        raise _fail(where, "the train split is empty", "Provide at least one training example")
    if labels and set(labels) != set(splits):  # labels for only some splits would be a silent half-truth
        raise _fail(where, f"labels given for splits {sorted(labels)} but data for {sorted(splits)}",
                    "Provide labels for every split or for none")
    # a split missing from an .npz stays empty (it is not carved out of "train")
    splits = {s: splits.get(s, np.zeros((0, *shapes["train"]), np.float32))[:limit] for s in ("train", "valid", "test")}
    labels = {s: labels.get(s, np.zeros(0, np.int64))[:limit] for s in splits} if labels else {}
    if is_image and image_shape is not None:
        raise ConfigError(f"--image-shape is for 2-D arrays of flattened images; {where} holds images already: "
                          "drop it")
    if not is_image:
        splits, is_image, note = _flat_pixels(splits, uint8, image_shape, where)
    binary = all(bool(((a == 0) | (a == 1)).all()) for a in splits.values())
    kind = "binary" if binary else ("image" if is_image else "tabular")
    standardization = None
    if standardize if standardize is not None else kind == "tabular":
        if is_image:
            raise ConfigError(f"standardize=True is only for tabular data, but {where} holds images"
                              + (f" ({note})" if note else ""))
        col_range = (np.min([a.min(axis=0) for a in splits.values() if len(a)], axis=0),
                     np.max([a.max(axis=0) for a in splits.values() if len(a)], axis=0))
        splits, standardization = _standardize(splits, feature_names, where, col_range)
        kind = "tabular"
    t = {s: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for s, a in splits.items()}
    lab = {s: (torch.from_numpy(labels[s]) if s in labels else None) for s in ("train", "valid", "test")}
    return Dataset(name, kind, t["train"], t["valid"], t["test"], lab["train"], lab["valid"], lab["test"],
                   feature_names, standardization, class_names, rows, note)


def _load_digits(**opts) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    return _assemble("digits", "digits", {"x": x}, {"x": y}, True, class_names=tuple(map(str, range(10))), **opts)


def _take_label_column(x: np.ndarray, header, label_column: str | None, where: str):
    """Split the named label column off a CSV table: labels are not features (a label left among the features
    would be modelled, and scored, as data)."""
    if label_column is None:
        return x, None, header
    if header is None:
        raise _fail(where, f"--label-column {label_column!r} needs a header line naming the columns, and this "
                    "file has none", "Add a header line")
    if label_column not in header:
        raise _fail(where, f"has no column {label_column!r}; its columns are {list(header)}",
                    "Pass the exact header name of the label column")
    j = header.index(label_column)
    y = x[:, j]
    if not (np.all(y == np.round(y)) and np.all(y >= 0)):
        bad = int(np.argwhere((y != np.round(y)) | (y < 0))[0][0])
        raise _fail(f"{where}, data row {bad + 1}, column {label_column!r}", f"label {y[bad]:g} is not a class index",
                    "Labels must be integers 0, 1, 2, ... (encode class names as integers)")
    if x.shape[1] == 1:
        raise _fail(where, f"the label column {label_column!r} is its only column", "Provide feature columns too")
    return np.delete(x, j, axis=1), y.astype(np.int64), tuple(h for i, h in enumerate(header) if i != j)


def _csv_cells(path: Path) -> int:
    """About how many cells a CSV holds: its size times the cells per byte of its first 1 MiB (a line-based
    estimate, made before parsing; a file of one long line counts as one row)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if not head:
        return 0
    cells = head.count(b",") + max(head.count(b"\n"), 1)
    return int(size * cells / len(head)) + 1


def _image_dir_values(root: Path) -> tuple[int, int]:
    """(files, values) a folder of images will decode to, from the listing and the first image's header."""
    files, _, _ = _image_files(root)
    if not files:
        return 0, 0
    from PIL import Image

    try:
        with Image.open(files[0]) as img:
            size, mode = img.size, img.mode
    except Exception:  # noqa: BLE001 - unreadable: the loader names the file with its reason
        return len(files), 0
    return len(files), len(files) * size[0] * size[1] * (1 if mode in ("1", "L", "LA") else 3)


_CONVERT_HINT = ("Convert it into a memory-mappable .npy that trains from disk with `bayesvae data convert {src} --out "
                 "DATA.npy` (it streams, with the same checks), then train with --data DATA.npy")


def _load_path(source: str, label_column: str | None = None, image_shape=None, **opts) -> Dataset:
    path = Path(source).expanduser()
    if not path.exists():
        raise _fail(source, "no such file or directory", "Use 'digits', 'mnist', or a path to a .npy, .npz, .csv "
                    "file or a folder of images")
    where = str(path)
    if label_column is not None and (path.is_dir() or path.suffix.lower() != ".csv"):
        raise ConfigError(f"--label-column names a column of a CSV file, but {where} is not one (an .npz file "
                          "carries labels in an array named 'y'; a folder of images in its subfolders)")
    if path.is_dir():
        if image_shape is not None:
            raise ConfigError(f"--image-shape is for 2-D arrays of flattened images; {where} is a folder of images, "
                              "whose shape is known: drop it")
        files, values = _image_dir_values(path)
        memory.require(where, values * memory.IMAGE_DIR_BYTES_PER_VALUE, f"decoding {files:,} images into memory",
                       _CONVERT_HINT.format(src=where))
        x, y, classes, zero_one = _read_image_dir(path)
        return _assemble(where, where, {"x": x}, {"x": y} if y is not None else {}, True, class_names=classes,
                         note=BINARY_UINT8_NOTE if zero_one else None, **opts)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if label_column is not None:
            raise ConfigError(f"--label-column names a column of a CSV file, but {where} is an .npy file (its labels "
                              f"are the sidecar {path.stem}.labels.npy that `bayesvae data convert` writes)")
        return _npy_dataset(path, _open_npy(path), image_shape=image_shape, **opts)
    if suffix == ".csv":
        cells = _csv_cells(path)
        memory.require(where, cells * memory.CSV_BYTES_PER_CELL, f"parsing about {cells:,} CSV cells into memory",
                       _CONVERT_HINT.format(src=where))
        x, header = _read_csv(path)
        x, y, header = _take_label_column(x, header, label_column, where)
        return _assemble(where, where, {"x": x}, {"x": y} if y is not None else {}, False, feature_names=header,
                         image_shape=image_shape, **opts)
    if label_column is not None:
        raise ConfigError(f"--label-column names a column of a CSV file, but {where} is not one (an .npz file "
                          "carries labels in an array named 'y'; a folder of images in its subfolders)")
    if suffix == ".npz":
        return _from_npz(path, image_shape=image_shape, **opts)
    raise _fail(where, f"unsupported file type {suffix or '(none)'}",
                "Use .npy, .npz, .csv, .txt (text, one sentence per line), or a folder of PNG/JPEG/BMP/GIF images "
                "(or of train/valid/test.txt)")


def _from_npz(path: Path, **opts) -> Dataset:
    where = str(path)
    content = _read_npz(path)
    raw = content["splits"] or {"x": content["x"]}
    uint8 = all(a.dtype == np.uint8 for a in raw.values())
    zero_one = uint8 and all(a.ndim in (3, 4) for a in raw.values()) and _uint8_zero_one(raw.values())
    splits, kinds = {}, set()
    for s, a in raw.items():
        splits[s], is_image = _array_to_examples(a, f"{where} [array '{s}']", zero_one)
        kinds.add(is_image)
    if len(kinds) > 1:
        raise _fail(where, "some splits are images and some are tables", "Save every split in the same layout")
    if "x" in splits and len(splits["x"]) == 0:
        raise _fail(where, "contains no examples", "Provide a non-empty array")
    raw_labels = content["labels"] if content["splits"] else ({"x": content["y"]} if content["y"] is not None else {})
    labels = {s: _labels(y, len(splits[s]), f"{where} [labels of '{s}']") for s, y in raw_labels.items()}
    return _assemble(where, where, splits, labels, kinds.pop(), uint8=uint8,
                     note=BINARY_UINT8_NOTE if zero_one else None, **opts)


def load_dataset(source: str, *, data_dir: str | None = None, seed: int = 0, valid_fraction: float = 0.1,
                 test_fraction: float = 0.1, standardize: bool | None = None, limit: int | None = None,
                 label_column: str | None = None, image_shape=None) -> Dataset:
    """Load ``digits``, ``mnist`` or a path (.npy, .npz, .csv, image folder) into validated float32 tensors (or, for
    a large .npy, splits that stay on disk).

    ``data_dir`` is where the MNIST IDX files live (default: :func:`default_cache_dir`); MNIST uses its fixed
    protocol split (59,600 / 400 / 10,000) and ignores seed and fractions.  ``limit`` keeps the first ``limit``
    examples of each split (for quick tests).  ``standardize`` defaults to True for tabular data only.
    ``label_column`` names a CSV column that holds class labels (integers): it is taken out of the features.
    ``image_shape``: for a 2-D array or CSV of flattened images, (H, W) or (H, W, C) (see
    :func:`parse_image_shape`); None finds a square side; () keeps a table. Every source first estimates the memory
    its preparation needs and is refused (:class:`InsufficientMemoryError`) when that cannot fit.
    """
    _check_options(valid_fraction, test_fraction, limit)
    from .text.corpus import is_text_source, load_text

    if is_text_source(source):  # sentences: bayesvae.text (vocabulary on the training split)
        return load_text(source, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction, limit=limit)
    image_shape = parse_image_shape(image_shape)
    if label_column is not None and source in ("mnist", "digits"):
        raise ConfigError(f"--label-column is for CSV files; {source} has its labels already")
    if image_shape is not None and source in ("mnist", "digits"):
        raise ConfigError(f"--image-shape is for 2-D arrays of flattened images; {source} holds images already")
    if source == "mnist":
        if standardize:
            raise ConfigError("standardize=True is only for tabular data, but mnist holds images")
        return _load_mnist(data_dir, limit)
    opts = dict(seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction, standardize=standardize,
                limit=limit)
    if source == "digits":
        return _load_digits(**opts)
    return _load_path(source, label_column=label_column, image_shape=image_shape, **opts)


def source_kind(source: str) -> str | None:
    """The kind of a data source, found without reading its data: ``digits``, ``mnist``, ``npy``, ``npz`` (one
    array), ``npz-split`` (its own train/valid/test arrays), ``csv``, ``image-folder``, ``text`` (a ``.txt`` file)
    or ``text-split`` (a folder with ``train.txt``, ``valid.txt``, ``test.txt``); None for a path that does not
    exist or a file type that is not data (the loader says why when it reads it)."""
    if source in ("digits", "mnist"):
        return source
    from .text.corpus import is_text_source

    if is_text_source(source):  # a folder of train/valid/test.txt brings its own split
        return "text-split" if Path(source).expanduser().is_dir() else "text"
    path = Path(source).expanduser()
    if path.is_dir():
        return "image-folder"
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".npy", ".npz", ".csv"):
        return None
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                names = {n[:-4] if n.endswith(".npy") else n for n in z.namelist()}
        except (OSError, zipfile.BadZipFile):
            return "npz"
        return "npz-split" if "train" in names else "npz"
    return suffix[1:]


def dataset_info(source: str, **kw) -> dict:
    """What ``bayesvae data info SOURCE`` prints: :meth:`Dataset.describe` plus the content fingerprint."""
    ds = load_dataset(source, **kw)
    return {**ds.describe(), "fingerprint": ds.fingerprint()}


# ----------------------------------------------------------------------------------------------------- likelihoods
#: The decoder of a table when none is given (the CLI and bayesvae.VAEDensity).
TABLE_LIKELIHOOD = "student-t"


def default_likelihood(dataset: Dataset) -> str:
    """Bernoulli for binary data and grey images (trained with dynamic binarisation, the MNIST protocol);
    a Gaussian with learned variance for colour images; Student's t with learned scale and degrees of freedom for
    tables (0.1 to 1.1 nats per example better than the Gaussian on 7 of the 8 tables of the tabular benchmark,
    0.04 behind on the eighth: docs/tabular-defaults.md); the autoregressive likelihood for text."""
    if dataset.kind == "text":
        return "autoregressive"
    if dataset.kind == "binary" or (dataset.kind == "image" and dataset.event_shape[0] == 1):
        return "bernoulli"
    return TABLE_LIKELIHOOD if dataset.kind == "tabular" else "gaussian-learned"


def check_likelihood_support(dataset: Dataset, likelihood: str) -> None:
    """Refuse a Bernoulli likelihood on data outside [0, 1] before training (it would give a negative 'loss' or a
    device assert); other likelihoods accept any finite data."""
    if "bernoulli" not in likelihood:
        return
    lo, hi = dataset.value_range
    if lo < 0 or hi > 1:
        raise DataValidationError(
            f"{dataset.name}: likelihood {likelihood!r} needs values in [0, 1], but the data range from {lo:g} to "
            f"{hi:g}{' (they were standardised)' if dataset.standardization is not None else ''}. Use a Gaussian "
            "likelihood (e.g. gaussian-learned) or rescale the data to [0, 1]")


def needs_binarization(dataset: Dataset, likelihood: str) -> bool:
    """True when a Bernoulli likelihood meets grey levels in [0, 1]: train on fresh draws (dynamic binarisation)."""
    if likelihood != "bernoulli" or dataset.kind == "binary":
        return False
    lo, hi = dataset.value_range
    return lo >= 0 and hi <= 1


def binarize(x: torch.Tensor, generator: torch.Generator | None = None, *, validate: bool = True) -> torch.Tensor:
    """One Bernoulli draw per value with p = x; the trainer calls it on every minibatch (dynamic binarisation).

    Drawn as 1[u < p] with u ~ U[0, 1): the same distribution as ``torch.bernoulli``, about 4x faster on CPU.
    ``validate=False`` skips the range check, for data already checked by ``check_likelihood_support``.
    """
    x = x.to(torch.float32)
    if validate and x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise DataValidationError("binarize: probabilities must lie in [0, 1] (found values outside, or NaN). "
                                  "Rescale the data to [0, 1] or use a Gaussian likelihood")
    step = draws.current(rows=x.shape[0]) if generator is None and x.dim() >= 1 else None
    if step is not None:  # within a training step: the step's draws, the same however many processes share it
        u = step.uniform(x.shape[1:], dtype=x.dtype).to(x.device)
    else:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < x).to(x.dtype)


def fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One draw with a private generator: the same binary valid/test set on every evaluation (re-drawing the test
    binarisation per evaluation is a known way to report wrong numbers).  Call it on the whole split, not per batch."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return binarize(x, generator)


# -------------------------------------------------------------------------------------------------------- fetching
def _gz_is_valid(path: Path, stem: str) -> bool:
    """Accept the published .gz MD5, or, for a mirror that re-compressed, the MD5 of the uncompressed content."""
    gz_md5, raw_md5 = _MNIST_FILES[stem]
    if hashlib.md5(path.read_bytes()).hexdigest() == gz_md5:
        return True
    try:
        with gzip.open(path, "rb") as fh:
            h = hashlib.md5()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return h.hexdigest() == raw_md5


def _download(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` to a temp file beside ``target`` and rename it only after the checksum passed."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = 0
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                total += len(chunk)
                if total > _MAX_DOWNLOAD_BYTES:
                    raise _fail(url, "download is larger than any MNIST file", "Use another mirror")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if not _gz_is_valid(Path(tmp), target.name[:-3]):
            raise _fail(url, "checksum mismatch (MD5 matches neither the published .gz nor the uncompressed file)",
                        "The mirror served a corrupt or tampered file; try another mirror or pass --data-dir")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_mnist(cache_dir: str | None = None, *, mirrors=None, timeout: float = 60.0) -> Path:
    """Download the four MNIST .gz files into ``cache_dir`` (default :func:`default_cache_dir`), verifying MD5s.
    Files already present and valid are kept; each mirror is tried in turn; returns the directory."""
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir("mnist")
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _MNIST_FILES:
        target = directory / f"{stem}.gz"
        if target.is_file() and _gz_is_valid(target, stem):
            continue
        errors = []
        for mirror in mirrors or MNIST_MIRRORS:
            url = mirror.rstrip("/") + f"/{stem}.gz"
            try:
                _download(url, target, timeout)
                break
            except DataValidationError as exc:
                errors.append(str(exc))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise DataValidationError(f"could not download {stem}.gz into {directory}: " + "; ".join(errors) +
                                      ". Check the network, or download the files yourself and pass --data-dir")
    return directory
