"""Encoders for token rows: a recurrent encoder, and the constant encoder of the language model without z."""

from __future__ import annotations

import torch
from torch import nn

from .likelihood import CELLS
from .vocabulary import PAD

__all__ = ["RecurrentEncoder", "PriorEncoder"]


class RecurrentEncoder(nn.Module):
    """Token rows ``[B, T]`` -> the posterior's raw parameters ``[B, out_features]``: an LSTM/GRU reads the words and
    ``<eos>``; its last state (at ``<eos>``) goes through a linear layer. Padding after ``<eos>`` is never read, so
    a sentence's parameters do not depend on the batch it is in."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, out_features: int, cell: str = "lstm"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = CELLS[cell](embedding_dim, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = (x != PAD).sum(-1)
        width = max(1, int(lengths.max()))
        states, _ = self.rnn(self.embedding(x[:, :width].clamp_min(0)))
        last = states[torch.arange(x.shape[0], device=x.device), (lengths - 1).clamp_min(0)]
        return self.head(last)


class PriorEncoder(nn.Module):
    """The encoder of the language model without z: raw parameters 0, which the diagonal Gaussian reads as
    N(0, I), the prior itself. The KL is then exactly 0 and every log importance weight is log q(x): the ELBO, the
    IWAE bound and the IS estimate all equal the language model's exact log-probability."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.out_features, device=x.device)
