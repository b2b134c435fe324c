"""The text data source: vocabulary on the training split, unknown words counted, lengths refused or cut, bucketed
batches (padding measured), clear errors for bad files. Small corpora written by the tests."""

import pytest
import torch

from bayesvae.errors import ConfigError, DataValidationError
from bayesvae.runs import DataSpec
from bayesvae.text.batching import BucketedOrder, padding_share
from bayesvae.text.corpus import MAX_WORDS, load_text
from bayesvae.text.vocabulary import EOS, PAD, UNK, Vocabulary
from bayesvae.training import epoch_order


def _folder(tmp_path, train, valid, test):
    for name, lines in (("train", train), ("valid", valid), ("test", test)):
        (tmp_path / f"{name}.txt").write_text("".join(f" {line}\n" for line in lines), encoding="utf-8")
    return tmp_path


def test_vocabulary_is_built_on_train_only_and_applied_to_the_other_splits(tmp_path):
    root = _folder(tmp_path, ["b a a", "c a b <unk>"], ["a zebra b", "yak"], ["a"])
    ds = load_text(str(root))
    assert ds.vocabulary.words == ("<eos>", "<unk>", "a", "b", "c")  # by count, ties alphabetical
    assert ds.text_info["unknown_words"] == {"train": 0, "valid": 2, "test": 0}  # the literal <unk> is not counted
    assert ds.text_info["words"] == {"train": 7, "valid": 4, "test": 1}
    assert ds.event_shape == (5,)  # the longest sentence (4 words) + <eos>
    assert ds.train[1].tolist() == [4, 2, 3, UNK, EOS]
    assert ds.valid.tolist() == [[2, UNK, 3, EOS, PAD], [UNK, EOS, PAD, PAD, PAD]]
    assert ds.rows("valid").tolist() == [0, 1]
    assert ds.kind == "text" and ds.describe()["vocabulary_size"] == 5


def test_vocab_size_keeps_the_most_frequent_words(tmp_path):
    root = _folder(tmp_path, ["a a a b b c"], ["c"], ["d"])
    ds = load_text(str(root), vocab_size=2)
    assert ds.vocabulary.words == ("<eos>", "<unk>", "a", "b")
    assert ds.text_info["unknown_words"]["train"] == 1 and ds.train[0].tolist()[-2] == UNK
    with pytest.raises(ConfigError, match="--vocab-size"):
        load_text(str(root), vocab_size=0)


def test_a_stored_vocabulary_is_applied_unchanged(tmp_path):
    root = _folder(tmp_path, ["x y"], ["y"], ["x"])
    stored = Vocabulary(["<eos>", "<unk>", "y", "q"])
    ds = load_text(str(root), vocabulary=stored)
    assert ds.vocabulary == stored and ds.train[0].tolist() == [UNK, 2, EOS]


def test_long_sentences_are_refused_or_cut_and_counted(tmp_path):
    root = _folder(tmp_path, ["a b c d e", "a b", "a b c d"], ["a"], ["a b c d e f"])
    with pytest.raises(DataValidationError, match=r"line 1: a sentence of 5 words exceeds --max-length 3; 3 sentence"):
        load_text(str(root), max_length=3)
    ds = load_text(str(root), max_length=3, long_sentences="cut")
    assert ds.text_info["cut_sentences"] == {"train": 2, "valid": 0, "test": 1}
    assert ds.event_shape == (4,) and ds.test[0].tolist() == [2, 3, 4, EOS]
    with pytest.raises(ConfigError, match="needs --max-length"):
        load_text(str(root), long_sentences="cut")


@pytest.mark.parametrize("content,match", [
    (b"", "contains no sentences"),
    (b"\n  \n\t\n", "contains no sentences"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary file"),
    (b"ok line\nna\xefve caf\xe9\n", r"line 2, byte 3 of the line \(byte 11 of the file\): not valid UTF-8"),
    (b"a b\nc\n" + b"w " * 10**6 + b"\nd\n",
     f"line 3: a sentence of 1000000 words exceeds the default limit of {MAX_WORDS} words;"),
])
def test_bad_text_files_get_clear_errors(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match=match):
        load_text(str(path))


def test_one_file_is_split_with_the_fixed_seed_and_lines_are_kept(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"w{i % 7} v{i % 3}\n" for i in range(50)) + "\n", encoding="utf-8")
    ds = load_text(str(path))
    assert {k: len(getattr(ds, k)) for k in ("train", "valid", "test")} == {"train": 40, "valid": 5, "test": 5}
    rows = sorted(ds.rows("train").tolist() + ds.rows("valid").tolist() + ds.rows("test").tolist())
    assert rows == list(range(50))
    assert torch.equal(load_text(str(path)).test, ds.test)


def test_text_flags_are_refused_on_other_data():
    with pytest.raises(ConfigError, match="--vocab-size applies to text data"):
        DataSpec("digits", vocab_size=100).load()


def test_bucketed_order_is_a_permutation_of_similar_lengths_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (2000,), generator=g)
    order = BucketedOrder(lengths, 32)
    a = order(2000, 3, 1)
    assert sorted(a.tolist()) == list(range(2000))  # every sentence exactly once
    assert torch.equal(a, order(2000, 3, 1)) and not torch.equal(a, order(2000, 3, 2))  # a function of (seed, epoch)
    bucketed, plain = padding_share(lengths, a, 32), padding_share(lengths, epoch_order(2000, 3, 1), 32)
    assert plain > 0.4 and bucketed < 0.05  # measured: about 0.48 and 0.01 for lengths uniform on 1..59
