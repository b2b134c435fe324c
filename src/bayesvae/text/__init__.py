"""Sentences: a text data source, the autoregressive likelihood, recurrent encoders, text metrics and generation."""

from .vocabulary import EOS, PAD, UNK, Vocabulary

__all__ = ["EOS", "PAD", "UNK", "Vocabulary"]
