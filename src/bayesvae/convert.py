"""``bayesvae data convert``: a CSV, a folder of images or an .npz, streamed into a memory-mappable ``.npy``.

The result trains from disk (:class:`bayesvae.arrays.Rows`) whatever its size, and loads to the same examples, split
and fingerprint as the source it came from: a CSV of 8-bit pixels (as the loader would take it) becomes uint8, any
other CSV float32; images become uint8 [N, H, W] (grey) or [N, 3, H, W] (colour); an .npz array keeps its dtype.
Nothing is held whole in memory: rows are parsed or decoded one at a time and written into the output file, which
is first a temporary file beside the target, renamed only when complete and checked (never a half-written
``.npy``; an existing output is never replaced without ``overwrite``). Labels (a CSV's ``label_column``, the
folder's classes, an .npz's ``y``) go to the sidecar ``X.labels.npy`` (int64, one per row) with ``X.labels.json``
(class names, where they came from), which the loader reads with ``X.npy``. The SHA-256 of the output is returned
and written to ``X.npy.sha256`` (``sha256sum -c`` format).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import data as bdata
from .errors import ConfigError, DataValidationError, OutputExistsError

__all__ = ["convert", "sidecar_paths"]

_ROWS = 4096


def sidecar_paths(out: Path) -> dict[str, Path]:
    return {"labels": out.with_name(out.stem + ".labels.npy"), "meta": out.with_name(out.stem + ".labels.json"),
            "sha256": out.with_name(out.name + ".sha256")}


class _Progress:
    """Calls ``say`` with a progress line at most every ``every`` seconds, and once at the end."""

    def __init__(self, say: Callable[[str], None] | None, total: int, what: str, every: float = 2.0):
        self.say, self.total, self.what, self.every = say, total, what, every
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.say is None or not (final or now - self.last >= self.every):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        self.say(f"convert: {done:,} / {self.total:,} {self.what} ({100 * done / max(self.total, 1):.0f}%, "
                 f"{rate:,.0f}/s)")


# ------------------------------------------------------------------------------------------------------------ CSV
def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank line, decoded as the loader decodes it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for cells in reader:
                if cells and any(c.strip() for c in cells):
                    yield reader.line_num, cells
    except UnicodeDecodeError as exc:
        raise bdata._fail(str(path), f"is not UTF-8 text ({exc.reason})", "Save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise bdata._fail(str(path), f"malformed CSV ({exc})", "Check quoting on the reported line") from None


def _csv_pass(path: Path, label_column: str | None, write=None) -> dict:
    """One pass over a CSV with the loader's checks (same messages); ``write(i, features, label)`` receives each
    parsed row. Returns the header, the row count and what kind of values the features are."""
    header, width, n, label_j = None, 0, 0, None
    levels_255 = zero_one = True
    for line, cells in _csv_rows(path):
        if not width:
            width = len(cells)
            if not any(bdata._is_number(c) for c in cells):
                header = tuple(c.strip() for c in cells)
                if label_column is not None:
                    if label_column not in header:
                        raise bdata._fail(str(path), f"has no column {label_column!r}; its columns are "
                                          f"{list(header)}", "Pass the exact header name of the label column")
                    label_j = header.index(label_column)
                    if width == 1:
                        raise bdata._fail(str(path), f"the label column {label_column!r} is its only column",
                                          "Provide feature columns too")
                continue
            if label_column is not None:
                raise bdata._fail(str(path), f"--label-column {label_column!r} needs a header line naming the "
                                  "columns, and this file has none", "Add a header line")
        if len(cells) != width:
            raise bdata._fail(f"{path}, line {line}", f"has {len(cells)} columns, expected {width} as in the first "
                              "row", "Every row needs the same number of comma-separated cells")
        names = header or tuple(f"column {j + 1}" for j in range(width))
        values = np.array([bdata._parse_cell(c, path, line, j + 1, names[j]) for j, c in enumerate(cells)],
                          dtype=np.float64)
        label = None
        if label_j is not None:
            label = values[label_j]
            if label != round(label) or label < 0:
                raise bdata._fail(f"{path}, data row {n + 1}, column {label_column!r}", f"label {label:g} is not a "
                                  "class index", "Labels must be integers 0, 1, 2, ... (encode class names as integers)")
            values = np.delete(values, label_j)
        x = values.astype(np.float32)
        if levels_255:
            levels_255 = bool(((x >= 0) & (x <= 255) & (x == np.round(x))).all())
        if zero_one:
            zero_one = bool(((x == 0) | (x == 1)).all())
        if write is not None:
            write(n, x, label)
        n += 1
    if n == 0:
        raise bdata._fail(str(path), "contains no data rows" + (" (only a header)" if header else ""),
                          "Provide a CSV with one example per row")
    features = width - (label_j is not None)
    return {"header": header, "rows": n, "width": features, "levels_255": levels_255, "zero_one": zero_one}


def _convert_csv(path: Path, tmp: Path, label_column: str | None, say) -> tuple[np.ndarray | None, dict]:
    bdata._check_csv_lines(path)
    first = _csv_pass(path, label_column)
    n, width = first["rows"], first["width"]
    side = math.isqrt(width)
    # uint8 exactly where the loader takes the CSV as 8-bit pixels (integers 0-255 with a square side): the .npy then
    # loads to the same examples; everything else stays float32 (the values the loader holds)
    pixels = first["levels_255"] and not first["zero_one"] and side * side == width and width >= bdata.AUTO_SQUARE_MIN
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8 if pixels else np.float32, shape=(n, width))
    labels = np.zeros(n, np.int64) if label_column is not None else None
    progress = _Progress(say, n, "rows")

    def write(i, x, label):
        out[i] = x
        if labels is not None:
            labels[i] = int(label)
        if i % 1000 == 0:
            progress(i)

    second = _csv_pass(path, label_column, write)
    if second["rows"] != n:
        raise DataValidationError(f"{path} changed while it was being converted ({n} rows, then {second['rows']})")
    progress(n, final=True)
    out.flush()
    del out
    meta = {"source": str(path), "label_column": label_column, "feature_names": list(first["header"] or []) or None}
    if labels is not None:
        meta["feature_names"] = [h for h in first["header"] if h != label_column]
    return labels, meta


# ----------------------------------------------------------------------------------------------------- image folder
def _convert_images(root: Path, tmp: Path, say) -> tuple[np.ndarray | None, dict]:
    from PIL import Image

    files, labels, classes = bdata._image_files(root)
    if not files:
        raise bdata._fail(str(root), f"contains no images ({', '.join(sorted(bdata._IMAGE_SUFFIXES))})",
                          "Point to a folder of images, or subfolders of images (one per class)")
    colour, size = False, None
    for f in files:  # headers only: the size and mode of every image, before the output is sized
        try:
            with Image.open(f) as img:
                mode, this = img.mode, img.size
        except Exception:  # noqa: BLE001 - the full read below names the file and the reason
            bdata._read_image(f)
            raise
        if size is not None and this != size:
            raise bdata._fail(str(f), f"has size {this[0]}x{this[1]} but {files[0].name} has {size[0]}x{size[1]}",
                              f"Resize all images to one size (e.g. ImageMagick: mogrify -resize "
                              f"{size[0]}x{size[1]}! *.png)")
        size = this
        colour = colour or mode not in ("1", "L", "LA")
    w, h = size
    shape = (len(files), 3, h, w) if colour else (len(files), h, w)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    progress = _Progress(say, len(files), "images")
    for i, f in enumerate(files):
        img = bdata._read_image(f)
        if img.size != size:  # the header said otherwise: a file that changed meanwhile
            raise bdata._fail(str(f), f"has size {img.size[0]}x{img.size[1]}, expected {w}x{h}", "Convert again")
        a = np.asarray(img.convert("RGB") if colour else img, dtype=np.uint8)
        out[i] = a.transpose(2, 0, 1) if colour else a
        progress(i + 1, final=i + 1 == len(files))
    out.flush()
    del out
    meta = {"source": str(root), "classes": list(classes) if classes else None}
    return (np.asarray(labels, np.int64) if labels else None), meta


# -------------------------------------------------------------------------------------------------------------- npz
def _npz_member_rows(z: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple, np.dtype, Iterator[np.ndarray]]:
    """Shape, dtype and the rows of one array of an .npz, read from the archive in chunks (never whole)."""
    from numpy.lib import format as npformat

    where = f"{path} [array '{key}']"
    info = z.getinfo(key if key in z.namelist() else f"{key}.npy")
    with z.open(info) as member:
        bdata._check_declared_array(member, where, info.file_size)
    member = z.open(info)
    version = npformat.read_magic(member)
    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = read(member)
    if fortran and len(shape) > 1:
        member.close()
        raise bdata._fail(where, "is stored in Fortran order, which cannot be streamed row by row",
                          "Save it with numpy.savez(np.ascontiguousarray(x)), or train from the .npz directly")
    row_bytes = math.prod(shape[1:]) * dtype.itemsize

    def rows():
        with member:
            for start in range(0, shape[0], _ROWS):
                k = min(_ROWS, shape[0] - start)
                buf = member.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise bdata._fail(where, "is truncated", "Save the archive again")
                yield np.frombuffer(buf, dtype=dtype).reshape(k, *shape[1:])
    return shape, dtype, rows()


def _convert_npz(path: Path, tmp: Path, say) -> tuple[np.ndarray | None, dict]:
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise bdata._fail(str(path), f"cannot read .npz archive ({exc})", "Save it with numpy.savez") from None
    with z:
        keys = [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
        if any(k in keys for k in ("train", "valid", "test")):
            raise bdata._fail(str(path), f"holds the splits {[k for k in ('train', 'valid', 'test') if k in keys]}, "
                              "and one .npy holds one array", "Train from the .npz itself, or save each split as its "
                              "own .npz and convert it")
        x_key = next((k for k in ("x", "X", "data") if k in keys), keys[0] if len(keys) == 1 else None)
        if x_key is None:
            raise bdata._fail(str(path), f"has arrays {keys} but none named x/X/data",
                              "Name the data array 'x' (and labels 'y')")
        try:
            shape, dtype, rows = _npz_member_rows(z, x_key, path)
            bdata._check_dtype(np.empty(0, dtype), f"{path} [array '{x_key}']")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            progress, done = _Progress(say, shape[0], "rows"), 0
            for block in rows:
                out[done: done + len(block)] = block
                done += len(block)
                progress(done, final=done == shape[0])
            out.flush()
            del out
            y_key = next((k for k in ("y", "labels") if k in keys), None)
            labels = None
            if y_key is not None:
                y = bdata._npz_array(np.load(path, allow_pickle=False), y_key, path)
                labels = bdata._labels(y, shape[0], f"{path} [array '{y_key}']")
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
            raise bdata._fail(f"{path} [array '{x_key}']", f"cannot be read ({exc})",
                              "Save it with numpy.savez") from None
    return labels, {"source": str(path), "array": x_key}


# ------------------------------------------------------------------------------------------------------- the command
def _validate(tmp: Path, where: str) -> None:
    """The loader's checks on the written array (NaN, range, layout), in chunks; errors name the source."""
    a = np.load(tmp, mmap_mode="r", allow_pickle=False)
    if a.ndim == 2:
        bdata._scan_table(a, where)
    elif a.ndim in (3, 4):
        bdata._check_image_chunks(a, where)
    else:
        raise bdata._fail(where, f"holds an array of shape {a.shape}", "Give a table [N, D] or an image stack")
    if len(a) == 0:
        raise bdata._fail(where, "contains no examples", "Provide a non-empty source")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def convert(source: str | os.PathLike, out: str | os.PathLike, *, label_column: str | None = None,
            overwrite: bool = False, say: Callable[[str], None] | None = None) -> dict:
    """Stream ``source`` (a .csv, a folder of images, an .npz) into the .npy ``out``; returns a summary with the
    output's SHA-256, shape, dtype and the sidecar files written. ``say`` receives the progress lines."""
    src, out = Path(source).expanduser(), Path(out).expanduser()
    if out.suffix.lower() != ".npy":
        raise ConfigError(f"--out {out}: the output of convert is an .npy file (it ends in .npy)")
    if not src.exists():
        raise bdata._fail(str(src), "no such file or directory", "Give a .csv file, a folder of images or an .npz")
    kind = "images" if src.is_dir() else src.suffix.lower()
    if kind not in ("images", ".csv", ".npz"):
        raise ConfigError(f"{src}: convert reads a .csv file, a folder of images or an .npz archive"
                          + (" (an .npy is already memory-mappable: train on it directly)" if kind == ".npy" else ""))
    if label_column is not None and kind != ".csv":
        raise ConfigError(f"--label-column names a column of a CSV file, but {src} is not one (a folder's labels "
                          "are its class subfolders, an .npz's its array 'y')")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the source itself")
    sidecars = sidecar_paths(out)
    existing = [p for p in (out, *sidecars.values()) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it, or choose another "
                                "--out")
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    temps = [tmp]
    try:
        if kind == ".csv":
            labels, meta = _convert_csv(src, tmp, label_column, say)
        elif kind == "images":
            labels, meta = _convert_images(src, tmp, say)
        else:
            labels, meta = _convert_npz(src, tmp, say)
        _validate(tmp, str(src))
        _fsync(tmp)
        digest = _sha256(tmp)
        written = {}
        if labels is not None:
            for name in ("labels", "meta"):
                part = sidecars[name].with_name(f".{sidecars[name].name}.part")
                temps.append(part)
                with open(part, "wb") as fh:
                    if name == "labels":
                        np.save(fh, labels, allow_pickle=False)
                    else:
                        fh.write((json.dumps(meta, indent=2) + "\n").encode("utf-8"))
                _fsync(part)
                written[name] = part
        sha_part = sidecars["sha256"].with_name(f".{sidecars['sha256'].name}.part")
        temps.append(sha_part)
        sha_part.write_text(f"{digest}  {out.name}\n", encoding="utf-8")
        # commit: the sidecars first, the array last (a reader never sees the array with another array's labels)
        for name in ("labels", "meta"):
            if name in written:
                os.replace(written[name], sidecars[name])
            elif sidecars[name].exists():  # overwriting: labels of the replaced array would be wrong for this one
                sidecars[name].unlink()
        os.replace(sha_part, sidecars["sha256"])
        os.replace(tmp, out)
    finally:
        for t in temps:
            if t.exists():
                t.unlink()
    a = np.load(out, mmap_mode="r", allow_pickle=False)
    return {"source": str(src), "out": str(out), "shape": list(a.shape), "dtype": str(a.dtype), "sha256": digest,
            "bytes": out.stat().st_size, "labels": str(sidecars["labels"]) if labels is not None else None,
            "classes": meta.get("classes")}
