"""Length-bucketed minibatches: sentences of similar length share a batch, so little of it is padding.

The order of an epoch stays a function of (seed, epoch) alone (resume needs no sampler state): the epoch's random
permutation is cut into pools of ``POOL_BATCHES`` batches, each pool is sorted by length and cut into batches, and
the full batches are shuffled (the one partial batch, if any, stays last so that batch boundaries match the
trainer's slicing).
"""

from __future__ import annotations

import torch

from ..training import epoch_order

__all__ = ["BucketedOrder", "padding_share", "POOL_BATCHES"]

POOL_BATCHES = 50


class BucketedOrder:
    """``order(n, seed, epoch)`` for the trainer: a permutation whose consecutive ``batch_size`` slices are buckets."""

    def __init__(self, lengths: torch.Tensor, batch_size: int):
        self.lengths, self.batch_size = lengths.cpu(), int(batch_size)

    def __call__(self, n: int, seed: int, epoch: int) -> torch.Tensor:
        if n != len(self.lengths):
            raise ValueError(f"bucketed order for {len(self.lengths)} sentences asked for {n}")
        perm, b = epoch_order(n, seed, epoch), self.batch_size
        pool = b * POOL_BATCHES
        parts = []
        for start in range(0, n, pool):
            idx = perm[start : start + pool]
            parts.append(idx[torch.argsort(self.lengths[idx], stable=True)])
        order = torch.cat(parts)
        full = n // b
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 17)
        batches = order[: full * b].reshape(full, b)[torch.randperm(full, generator=g)].reshape(-1)
        return torch.cat([batches, order[full * b :]])


def padding_share(lengths: torch.Tensor, order: torch.Tensor, batch_size: int) -> float:
    """The share of computed token positions that are padding when batches are ``order`` sliced by ``batch_size``
    and each batch is cut at its longest sentence (what the likelihood and the encoder compute)."""
    total = useful = 0
    for start in range(0, len(order), batch_size):
        lb = lengths[order[start : start + batch_size]]
        total += int(lb.max()) * len(lb)
        useful += int(lb.sum())
    return 1.0 - useful / max(1, total)
