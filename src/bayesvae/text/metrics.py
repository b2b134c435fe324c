"""Numbers for text: perplexity per token and what z holds (greedy reconstruction token accuracy)."""

from __future__ import annotations

import math

import torch

from .corpus import lengths_of
from .vocabulary import PAD

__all__ = ["perplexity", "reconstruction_accuracy", "text_figures"]


def perplexity(nll_nats_mean: float, x: torch.Tensor) -> tuple[float, int]:
    """exp(total NLL / total predicted tokens): the tokens counted are the words (``<unk>`` included) and each
    sentence's ``<eos>``, as in the PTB protocol. Returns (perplexity, tokens)."""
    tokens = int(lengths_of(x).sum())
    return math.exp(nll_nats_mean * x.shape[0] / tokens), tokens


@torch.no_grad()
def reconstruction_accuracy(model, x: torch.Tensor, batch_size: int = 500) -> float:
    """Share of the input's tokens (words and ``<eos>``) that greedy decoding from the posterior's mode reproduces
    at the same position: what z holds about the sentence (a collapsed z gives the language model's one guess)."""
    right = total = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            q = model.posterior(xb)
            try:
                centre = q.mode
            except NotImplementedError:
                centre = q.mean
            out = model.decode(centre)
            mask = xb != PAD
            right += int(((out == xb) & mask).sum())
            total += int(mask.sum())
    finally:
        model.train(was_training)
    return right / max(1, total)


def text_figures(model, x: torch.Tensor, result: dict) -> dict:
    """What ``evaluate`` adds for text, named with sign and unit."""
    ppl, tokens = perplexity(result["nll_nats"], x)
    words = tokens - x.shape[0]
    return {"nll_nats_per_sentence": result["nll_nats"], "perplexity_per_token": ppl, "tokens": tokens,
            "perplexity_tokens": "words (<unk> included) and each sentence's <eos>",
            "mean_words_per_sentence": words / x.shape[0],
            "elbo_perplexity_bound_per_token": math.exp(-result["elbo_nats"] * x.shape[0] / tokens),
            "reconstruction_token_accuracy": reconstruction_accuracy(model, x)}
