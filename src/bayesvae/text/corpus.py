"""Text as a data source: one sentence per line, words separated by white space.

``--data corpus.txt`` (split by the fixed-seed permutation, like other files) or a folder holding ``train.txt``,
``valid.txt`` and ``test.txt`` (the Penn Treebank layout). The vocabulary is built on the training split only
(``vocab_size`` most frequent words) and every split, and any new text, is encoded with it. Each example is a row of
``max_length + 1`` token ids: the words, ``<eos>``, then ``PAD`` (see :mod:`.vocabulary`), in file order (so the
first N of a split are an unbiased subset; ``source_rows`` give each sentence's 0-based line). Training batches are
bucketed by length (:mod:`.batching`); scoring sorts its rows by length itself (``Autoregressive.sequence_log_prob``).

Errors name the file and line: an empty corpus, a binary file, bytes that are not UTF-8, a line of more than
:data:`MAX_WORDS` words (unless ``--max-length`` cuts it), sentences longer than ``--max-length``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset, _split_indices
from ..errors import ConfigError, DataValidationError
from .vocabulary import PAD, Vocabulary

__all__ = ["TextDataset", "is_text_source", "load_text", "read_sentences", "MAX_WORDS", "lengths_of"]

#: The longest line accepted without ``--max-length`` (a line of 10^6 words is a broken file, not a sentence).
MAX_WORDS = 1000
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")
LONG_SENTENCES = ("refuse", "cut")


@dataclass(frozen=True, eq=False)
class TextDataset(Dataset):
    """A :class:`bayesvae.data.Dataset` of sentences: int64 ``[N, max_length + 1]`` id tables and their vocabulary."""

    vocabulary: Vocabulary | None = None
    text_info: dict | None = None
    """Counts for ``data info`` and the run: words, unknown words per split, sentences cut, padding."""

    def describe(self) -> dict:
        assert self.vocabulary is not None  # a text data set has its vocabulary
        info = super().describe()
        info.pop("value_range", None)
        info.update({"vocabulary_size": len(self.vocabulary), "max_length_words": self.event_shape[0] - 1,
                     **(self.text_info or {})})
        return info


def is_text_source(source: str) -> bool:
    """A ``.txt`` file, or a folder with ``train.txt`` in it."""
    path = Path(str(source)).expanduser()
    return (path.suffix.lower() == ".txt" and not path.is_dir()) or (path.is_dir() and (path / "train.txt").is_file())


def lengths_of(tokens: torch.Tensor) -> torch.Tensor:
    """Predicted tokens per sentence (words + ``<eos>``), Tensor[N] int64."""
    return (tokens != PAD).sum(-1)


def read_sentences(path: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank lines of a UTF-8 text file as word lists, with their 0-based line numbers."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataValidationError(f"{where}: cannot be read ({err.strerror or err})") from None
    if b"\x00" in raw[: 1 << 20]:
        raise DataValidationError(f"{where}: is a binary file (it holds NUL bytes), not text with one sentence per "
                                  "line; pass a UTF-8 .txt file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataValidationError(f"{where}, line {line_no}, byte {column} of the line (byte {err.start + 1} of the "
                                  f"file): not valid UTF-8 ({err.reason}); "
                                  "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    sentences, rows = [], []
    for i, line in enumerate(text.splitlines()):
        words = line.split()
        if words:
            sentences.append(words)
            rows.append(i)
    if not sentences:
        raise DataValidationError(f"{where}: contains no sentences (every line is blank); provide one sentence per "
                                  "line")
    return sentences, rows


def _check_lengths(parts: dict, max_length: int | None, long_sentences: str) -> int:
    """The table width in words: ``max_length``, or the longest sentence when None (refused past MAX_WORDS)."""
    if long_sentences not in LONG_SENTENCES:
        raise ConfigError(f"--long-sentences must be one of {list(LONG_SENTENCES)}, got {long_sentences!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError(f"--max-length must be a positive integer (words), got {max_length!r}")
    if max_length is None and long_sentences == "cut":
        raise ConfigError("--long-sentences cut needs --max-length: the length to cut at")
    limit = max_length if max_length is not None else MAX_WORDS
    long = [(where, rows[j], len(s)) for where, (sents, rows) in parts.items() for j, s in enumerate(sents)
            if len(s) > limit]
    if long and (max_length is None or long_sentences == "refuse"):
        where, row, n = long[0]
        limit_text = f"--max-length {limit}" if max_length is not None else f"the default limit of {MAX_WORDS} words"
        raise DataValidationError(
            f"{where}, line {row + 1}: a sentence of {n} words exceeds {limit_text}; {len(long)} sentence(s) in all "
            "are longer. Pass " + ("--long-sentences cut" if max_length is not None
                                   else "--max-length N --long-sentences cut")
            + " to cut them (the count is reported), or a larger --max-length")
    if max_length is not None:
        return max_length
    return max(len(s) for sents, _ in parts.values() for s in sents)


def load_text(source: str, *, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1,
              limit: int | None = None, vocab_size: int | None = None, max_length: int | None = None,
              long_sentences: str = "refuse", vocabulary: Vocabulary | None = None,
              whole: bool = False) -> TextDataset:
    """Read a corpus into a :class:`TextDataset` (``vocabulary``: apply this one instead of building one;
    ``whole``: one file, every sentence in ``train``, valid and test empty: new text to score)."""
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [f for f in SPLIT_FILES if not (path / f).is_file()]
        if missing:
            raise DataValidationError(f"{path}: a text folder needs {', '.join(SPLIT_FILES)}; missing {missing}")
        parts = {str(path / f): read_sentences(path / f) for f in SPLIT_FILES}
        names = dict(zip(("train", "valid", "test"), parts, strict=True))
        split = {s: (parts[w][0][:limit], parts[w][1][:limit]) for s, w in names.items()}
    else:
        if not path.is_file():
            raise DataValidationError(f"{path}: no such file; pass a .txt file (one sentence per line) or a folder "
                                      f"with {', '.join(SPLIT_FILES)}")
        sentences, rows = read_sentences(path)
        idx = ({"train": np.arange(len(sentences)), "valid": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
               if whole else _split_indices(len(sentences), seed, valid_fraction, test_fraction, str(path)))
        split = {s: ([sentences[j] for j in i[:limit]], [rows[j] for j in i[:limit]]) for s, i in idx.items()}
        names = {s: str(path) for s in split}
    width = _check_lengths({f"{names[s]} ({s})": v for s, v in split.items()}, max_length, long_sentences)
    vocab = vocabulary or Vocabulary.build(split["train"][0], vocab_size)
    tables, rows_out = {}, {}
    info: dict[str, dict] = {"unknown_words": {}, "words": {}, "cut_sentences": {}}
    for s, (sents, rows) in split.items():
        enc = vocab.encode(sents, width, cut=long_sentences == "cut")
        tables[s], rows_out[s] = enc.tokens, np.asarray(rows, dtype=np.int64)
        info["unknown_words"][s], info["words"][s], info["cut_sentences"][s] = (enc.unknown_words, enc.words,
                                                                                enc.cut_sentences)
    info["sentences"] = {s: len(t) for s, t in tables.items()}
    return TextDataset(str(path), "text", tables["train"], tables["valid"], tables["test"], source_rows=rows_out,
                       vocabulary=vocab, text_info=info)


def with_vocabulary(dataset: TextDataset, vocabulary: Vocabulary) -> TextDataset:
    return dataclasses.replace(dataset, vocabulary=vocabulary)
