"""Thin hooks that let runs, the trainer and the CLI carry text: model settings, run state, batches, new text."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataValidationError
from .batching import BucketedOrder, padding_share
from .corpus import TextDataset, lengths_of, load_text
from .vocabulary import Vocabulary

__all__ = ["TEXT_LIKELIHOOD_OPTIONS", "model_settings", "run_state", "bucketed", "vocabulary_of", "new_text"]

#: Likelihood options that the CLI's text flags set (refused on other data).
TEXT_LIKELIHOOD_OPTIONS = ("vocab_size", "embedding_dim", "hidden_size", "cell", "latent_every_step", "word_dropout",
                           "use_latent", "softmax")


#: From this vocabulary size on, a text run's output layer is the adaptive softmax unless --softmax says otherwise:
#: it is exact and normalised as the full softmax is, and on PTB (10,000 words, state 256) a training step took
#: 233 ms against 452 ms (benchmarks/text_speed.py), with no loss at equal steps (docs/benchmarks.md).
ADAPTIVE_FROM = 2000


def model_settings(dataset, architecture: str, likelihood: str | None, options: dict,
                   hidden=(256,)) -> tuple[str, str | None, dict]:
    """(architecture, likelihood, likelihood options) for a data set: text gets the recurrent model with its
    vocabulary size and the state size ``hidden`` (one width: the encoder's and the decoder's); text options on
    other data are refused, naming them."""
    if not isinstance(dataset, TextDataset):
        text_only = sorted(set(options) & set(TEXT_LIKELIHOOD_OPTIONS))
        if text_only or likelihood == "autoregressive" or architecture == "rnn":
            flags = {"use_latent": "--no-latent", "latent_every_step": "--latent-every-step"}
            what = [flags.get(k, "--" + k.replace("_", "-")) for k in text_only] or [
                "--likelihood autoregressive" if likelihood == "autoregressive" else "--architecture rnn"]
            raise ConfigError(f"{', '.join(what)}: for text data only (a .txt file or a folder with "
                              f"train.txt), but the data are {dataset.kind}")
        return architecture, likelihood, options
    if architecture not in ("mlp", "rnn"):
        raise ConfigError(f"--architecture {architecture}: text is modelled by the recurrent encoder and decoder "
                          "(rnn); drop --architecture")
    if likelihood not in (None, "autoregressive"):
        raise ConfigError(f"--likelihood {likelihood}: text has the autoregressive likelihood only; drop --likelihood")
    assert dataset.vocabulary is not None  # a text data set has its vocabulary
    hidden = tuple(hidden)
    if len(hidden) != 1:
        raise ConfigError(f"--hidden {' '.join(map(str, hidden))}: text takes one width, the recurrent state size of "
                          "the encoder and the decoder (e.g. --hidden 256)")
    vocab_size = len(dataset.vocabulary)
    if "softmax" not in options:  # exact either way; the adaptive one is the faster from a few thousand words
        options = {**options, "softmax": "adaptive" if vocab_size >= ADAPTIVE_FROM and hidden[0] >= 4 else "full"}
    return "rnn", "autoregressive", {"hidden_size": hidden[0], **options, "vocab_size": vocab_size}


def run_state(dataset) -> dict:
    """What a text run stores beside its data spec: the vocabulary (applied unchanged to any new text)."""
    if not isinstance(dataset, TextDataset):
        return {}
    assert dataset.vocabulary is not None  # a text data set has its vocabulary
    return {"vocabulary": list(dataset.vocabulary.words)}


def vocabulary_of(state: dict) -> Vocabulary | None:
    words = (state.get("data") or {}).get("vocabulary")
    return Vocabulary(words) if words else None


def bucketed(train: torch.Tensor, batch_size: int) -> BucketedOrder | None:
    """The trainer's epoch order for token rows (None for other data)."""
    if train.dtype != torch.int64:
        return None
    return BucketedOrder(lengths_of(train), batch_size)


def padding_report(train: torch.Tensor, batch_size: int, seed: int) -> dict:
    """Share of padded positions in the first epoch's batches, bucketed and in plain random order."""
    from ..training import epoch_order

    lengths = lengths_of(train)
    n = len(lengths)
    return {"bucketed": padding_share(lengths, BucketedOrder(lengths, batch_size)(n, seed, 0), batch_size),
            "random": padding_share(lengths, epoch_order(n, seed, 0), batch_size)}


def new_text(source: str, state: dict, width: int,
             long_sentences: str = "refuse") -> tuple[torch.Tensor, np.ndarray, dict | None]:
    """New text encoded with the run's stored vocabulary and row width: (tokens, 0-based line numbers, counts)."""
    vocab = vocabulary_of(state)
    if vocab is None:
        raise DataValidationError(f"{source}: this run was not trained on text; --data must be data like its own")
    if _is_folder(source):
        raise DataValidationError(f"--data {source}: give new text as one .txt file (one sentence per line)")
    try:
        ds = load_text(source, max_length=width - 1, long_sentences=long_sentences, vocabulary=vocab, whole=True)
    except DataValidationError as err:
        if "exceeds --max-length" not in str(err):
            raise
        raise DataValidationError(f"{str(err).split('. Pass')[0]}: the model's sentences have at most {width - 1} "
                                  "words (its row width), so longer ones have no probability under it") from None
    return ds.train, ds.rows("train"), ds.text_info


def _is_folder(source: str) -> bool:
    from pathlib import Path

    return Path(source).expanduser().is_dir()


def ready_lines(info: dict, trainer) -> list[str]:
    """What ``train`` prints about text before the first step: vocabulary, unknown words, cuts, padding."""
    if info.get("kind") != "text":
        return []
    unknown, cut = info.get("unknown_words", {}), info.get("cut_sentences", {})
    lines = [f"text: vocabulary of {info['vocabulary_size']} tokens (<eos>, <unk> and the most frequent training "
             f"words); sentences of at most {info['max_length_words']} words; words mapped to <unk> (train/valid/"
             f"test): {unknown.get('train', 0)}/{unknown.get('valid', 0)}/{unknown.get('test', 0)}"]
    if any(cut.values()):
        lines.append(f"text: cut to {info['max_length_words']} words (--long-sentences cut): "
                     f"{cut.get('train', 0)}/{cut.get('valid', 0)}/{cut.get('test', 0)} sentences (train/valid/test)")
    p = getattr(trainer.model.likelihood_head, "word_dropout", 0.0)
    if p > 0:
        lines.append(f"word dropout {p:g}: the training loss shown is the -ELBO with the decoder fed the dropped "
                     "words (what is optimised); the validation loss, evaluate and the report give the model's true "
                     "-ELBO and NLL, never with dropped words")
    if getattr(trainer.model.likelihood_head, "use_latent", True) is False:
        lines.append("no latent: the LSTM language model (KL exactly 0; its -ELBO is its exact NLL)")
    head = trainer.model.likelihood_head
    if getattr(head, "softmax", None) == "adaptive":
        lines.append(f"text: output layer: the adaptive softmax (exact and normalised; the default from "
                     f"{ADAPTIVE_FROM:,} words, about 2x faster a step on PTB); --softmax full for one softmax")
    pad = padding_report(trainer.train_data.cpu(), trainer.config.batch_size, trainer.config.seed)
    lines.append(f"text: batches bucketed by length: {100 * pad['bucketed']:.1f}% of the computed token positions "
                 f"are padding ({100 * pad['random']:.1f}% in random order)")
    return lines
