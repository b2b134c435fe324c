"""A word vocabulary: built on the training split, stored in the run, applied unchanged to any other text.

Token ids: 0 is ``<eos>`` (end of sentence; it is also the decoder's start symbol), 1 is ``<unk>`` (a word
outside the vocabulary; the literal ``<unk>`` of pre-processed corpora such as the Penn Treebank is this token),
then the words by decreasing training count (ties in alphabetical order, so the vocabulary is a function of the
training text alone). ``PAD = -1`` fills the positions after ``<eos>``; it is never a token of the softmax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError

__all__ = ["EOS", "UNK", "PAD", "EOS_WORD", "UNK_WORD", "Vocabulary", "Encoded"]

EOS, UNK, PAD = 0, 1, -1
EOS_WORD, UNK_WORD = "<eos>", "<unk>"


@dataclass(frozen=True)
class Encoded:
    """Sentences as a padded id table ``Tensor[N, max_length + 1]`` (int64, ``<eos>`` then ``PAD``) with counts."""

    tokens: torch.Tensor
    unknown_words: int
    """Words not in the vocabulary, mapped to ``<unk>`` (the corpus's own literal ``<unk>`` not counted)."""
    words: int
    cut_sentences: int
    """Sentences longer than ``max_length`` words that were cut (``long_sentences="cut"``)."""


class Vocabulary:
    """An immutable word <-> id map; ``words[i]`` is the word of id ``i``."""

    def __init__(self, words: Sequence[str]):
        words = tuple(words)
        if words[:2] != (EOS_WORD, UNK_WORD):
            raise ConfigError(f"a vocabulary starts with {EOS_WORD!r}, {UNK_WORD!r}; got {list(words[:2])}")
        if len(set(words)) != len(words):
            raise ConfigError("a vocabulary lists each word once")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_words: int | None = None) -> "Vocabulary":
        """The ``max_words`` most frequent words of ``sentences`` (all when None), plus ``<eos>`` and ``<unk>``."""
        if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1):
            raise ConfigError(f"--vocab-size must be a positive integer, got {max_words!r}")
        counts = Counter(w for s in sentences for w in s)
        counts.pop(UNK_WORD, None)
        counts.pop(EOS_WORD, None)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls((EOS_WORD, UNK_WORD, *ranked[:max_words]))

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.words == self.words

    def encode(self, sentences: Sequence[Sequence[str]], max_length: int, *, cut: bool = False) -> Encoded:
        """Ids of ``sentences`` (lists of words), each followed by ``<eos>``, in a table of ``max_length + 1``
        columns. A longer sentence is cut to ``max_length`` words when ``cut`` (counted), else refused."""
        table = torch.full((len(sentences), max_length + 1), PAD, dtype=torch.int64)
        unknown = words = cut_count = 0
        for i, s in enumerate(sentences):
            if len(s) > max_length:
                if not cut:
                    raise ConfigError(f"sentence {i + 1} has {len(s)} words, more than --max-length {max_length}")
                s, cut_count = s[:max_length], cut_count + 1
            ids = [self.index.get(w, UNK) for w in s]
            unknown += sum(1 for w, t in zip(s, ids) if t == UNK and w != UNK_WORD)
            words += len(s)
            table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            table[i, len(ids)] = EOS
        return Encoded(table, unknown, words, cut_count)

    def decode(self, ids: Sequence[int] | torch.Tensor, *, keep_eos: bool = False) -> str:
        """The words of one id row up to its first ``<eos>`` (or ``PAD``), joined by spaces."""
        out = []
        for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if t == PAD or t == EOS:
                if keep_eos and t == EOS:
                    out.append(EOS_WORD)
                break
            out.append(self.words[t])
        return " ".join(out)
