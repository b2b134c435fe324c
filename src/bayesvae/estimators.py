"""Honest evaluation: importance-sampled log-likelihood, bits/dim, active units, per-dimension KL.

``estimate_log_likelihood`` is the IWAE bound with large K (the literature's standard is K = 5000) computed the way
an evaluation must be: exactly K samples, encoded once, decoded in chunks, reduced with logsumexp in float64, with
no gradients and the model in eval mode. Its result is log p(x) (≤ 0 for binary data); the NLL is its negative.

Inputs may stay on the CPU (8-bit data as uint8): every function draws batches onto the model's device, computes
there, and returns CPU tensors. With ``distributed=True`` under torchrun the examples are sharded over the ranks
(:mod:`bayesvae.distributed`) and the per-example results gathered; since example i always draws from seed + i,
the gathered result is the single-process result.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from . import distributed as ranks
from .arrays import as_tensor
from .errors import DataValidationError, InputTypeError
from .objectives import LatentModel, _check_event, check_num_samples, checked_data
from .objectives import _check_x as _check_tensor
from .posteriors import kl_per_dimension

__all__ = ["estimate_log_likelihood", "bits_per_dim", "active_units", "per_dimension_kl", "eval_mode", "evaluate",
           "example_latents", "model_device", "mutual_information", "SEEDINGS", "seconds_per_example"]

#: Elements of decoder output per chunk when no chunk size is given: 4 MiB of float32 per tensor, so that the
#: log-density passes over the decoder's output run from cache (measured: 1.5x faster than 64 MiB chunks).
_CHUNK_ELEMENTS = 1 << 20

_Number = TypeVar("_Number", float, torch.Tensor)


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Switch a module to eval mode (dropout, batch norm, running σ) and restore its mode afterwards."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


def _check_x(x: Any) -> Any:
    """A non-empty batch: a tensor, a numpy array (made a tensor), or a split that stays on disk (checked by its
    shape, returned as it is); each batch is then checked by the model (:func:`checked_data`)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        _check_tensor(x)
    elif not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        raise InputTypeError(f"x must be a torch.Tensor or a numpy array of shape [B, *data_shape], got "
                             f"{type(x).__name__}")
    elif len(x.shape) < 2 or x.shape[0] == 0:
        raise DataValidationError(f"x must be a non-empty batch [B, *data_shape], got shape {tuple(x.shape)}")
    return x


def model_device(model: object) -> torch.device:
    """Where the model's parameters (and so its computations) live."""
    params = getattr(model, "parameters", None)
    return next((p.device for p in params()), torch.device("cpu")) if params else torch.device("cpu")


def _on(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32 (8-bit data become k / 255 only now)."""
    if x.device != device:
        x = x.to(device, non_blocking=device.type == "cuda")
    return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x


def _batches(x: torch.Tensor, batch_size: int | None, device: torch.device | None = None,
             model: object = None, values: bool = True) -> Iterator[torch.Tensor]:
    """Batches of x on ``device``; with ``model``, each checked and converted by it (:func:`checked_data`; with
    ``values`` False, for functions of the encoder alone, all but the values' support)."""
    step = x.shape[0] if batch_size is None else check_num_samples(batch_size, "batch_size")
    for i in range(0, x.shape[0], step):
        xb = as_tensor(x[i : i + step])  # a split on disk is read one batch at a time
        xb = xb if device is None else _on(xb, device)
        yield xb if model is None else checked_data(model, xb, values=values)


def example_latents(model: LatentModel, x_i: torch.Tensor, num_samples: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K draws z ~ p(z|x_i) for ONE example ``x_i [1, ...]`` from a generator seeded by ``seed`` alone, and their
    log p(z|x_i): (Tensor[K, 1, d], Tensor[K, 1]). Per-example seeds make an estimate independent of the batch
    size and the chunk size, and let a plain per-example loop reproduce it draw for draw."""
    q = model.posterior(x_i)
    if getattr(q, "accepts_generator", False):  # cheaper than re-seeding the global generator
        generator = torch.Generator(device=x_i.device).manual_seed(seed)
        z = q.sample((num_samples,), generator=generator)  # type: ignore[call-arg]  # accepts_generator says so
    else:
        with torch.random.fork_rng(devices=[] if x_i.device.type == "cpu" else [x_i.device]):
            torch.manual_seed(seed)
            z = q.sample((num_samples,))
    return z, q.log_prob(z)


def _estimate_batch(model: LatentModel, x: torch.Tensor, num_samples: int, chunk_size: int,
                    seeds: list[int]) -> torch.Tensor:
    # The draws are copied into tensors allocated once per batch and the chunk results into a preallocated table:
    # hundreds of small tensors kept alive between the chunk tensors fragmented glibc's heap (measured on 1,500
    # MNIST images: peak RSS 1.4 GiB that way, 0.34 GiB this way, same values, same time).
    batch = x.shape[0]
    z: torch.Tensor
    log_q: torch.Tensor
    for i in range(batch):
        z_i, log_q_i = example_latents(model, x[i : i + 1], num_samples, seeds[i])  # [K, 1, d], [K, 1]
        if i == 0:
            z = z_i.new_empty((num_samples, batch, *z_i.shape[2:]))
            log_q = log_q_i.new_empty((num_samples, batch))
        z[:, i : i + 1] = z_i
        log_q[:, i : i + 1] = log_q_i
    prior = model.prior
    starts = range(0, num_samples, chunk_size)
    lse_per_chunk = torch.empty(len(starts), batch, dtype=torch.float64, device=x.device)
    for j, start in enumerate(starts):
        zc = z[start : start + chunk_size]
        p_x = model.likelihood(zc)
        _check_event(p_x, x)
        log_w = p_x.log_prob(x) + prior.log_prob(zc) - log_q[start : start + chunk_size]
        torch.logsumexp(log_w.double(), dim=0, out=lse_per_chunk[j])
    return torch.logsumexp(lse_per_chunk, dim=0) - math.log(num_samples)


#: How ``estimate_log_likelihood`` seeds each example's draws: by row (the CLI's default), one common seed, or
#: a seed from the example's content.
SEEDINGS = ("index", "common", "content")


def _example_seeds(xb: torch.Tensor, seed: int, offset: int, seeding: str) -> list[int]:
    """The seed of each example of a batch whose first example is row ``offset`` of the data."""
    if seeding == "index":
        return [seed + offset + i for i in range(xb.shape[0])]
    if seeding == "common":
        return [seed] * xb.shape[0]
    rows = xb.detach().to("cpu", torch.float32).reshape(xb.shape[0], -1).numpy()
    return [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=7, key=(seed % 2**64).to_bytes(8, "little")
                                           ).digest(), "little") for row in rows]


@torch.no_grad()
def _elbo_terms_per_example(model: LatentModel, x: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-sample ELBO's terms (reconstruction log q(x|z), KL in closed form where the pair has one), each
    example's z drawn from its own seed like :func:`estimate_log_likelihood`'s: the figures do not depend on the
    batch size, nor on which examples share a batch."""
    from torch.distributions import kl_divergence

    z = torch.cat([example_latents(model, x[i : i + 1], 1, seeds[i])[0] for i in range(x.shape[0])], dim=1)
    q = model.posterior(x)
    p_x = model.likelihood(z)
    _check_event(p_x, x)
    reconstruction = p_x.log_prob(x)[0]
    try:
        kl = kl_divergence(q, model.prior)
    except NotImplementedError:
        kl = (q.log_prob(z) - model.prior.log_prob(z))[0]
    return reconstruction, kl


@torch.no_grad()
def estimate_log_likelihood(model: LatentModel, x: torch.Tensor, num_samples: int = 5000, chunk_size: int | None = None,
                            batch_size: int | None = 100, seed: int | None = None, *,
                            distributed: bool = False, seeding: str = "index") -> torch.Tensor:
    """Importance-sampled log p(x) per example, Tensor[B] (float64, nats), with the posterior as proposal:

        log p(x) ≈ logsumexp_{k=1..K} [log q(x|z_k) + log q(z_k) - log p(z_k|x)] - log K,   z_k ~ p(z|x)

    Args:
        num_samples: K, used exactly (never rounded to a chunk multiple).
        chunk_size: samples decoded together; only memory and speed depend on it, not the value.
        batch_size: examples processed together (memory grows as K x batch_size x latent_dim).
        seed: example i draws its samples from seed + i; default: drawn from torch's global generator, so
            ``torch.manual_seed`` makes the estimate reproducible.
        distributed: under torchrun, every rank estimates its shard and every rank returns all B values (every
            rank must call it); a no-op for one process.
        seeding: which seed example i draws from (:data:`SEEDINGS`). ``"index"`` (the default): seed + i, so the
            estimate of an example depends on its row. ``"common"``: every example draws from ``seed`` (common
            random numbers: one noise sequence pushed through each example's posterior), and ``"content"``: from
            a seed hashed from ``seed`` and the example's float32 bytes; with either, an example's estimate depends
            on the example alone, not on its row or on the other rows in the call (what a scikit-learn
            ``score_samples`` must satisfy; bit for bit with ``batch_size=1``, otherwise up to the rounding of
            matrix products over a batch).
    """
    if seeding not in SEEDINGS:
        raise ValueError(f"seeding must be one of {list(SEEDINGS)}, got {seeding!r}")
    check_num_samples(num_samples)
    x = _check_x(x)
    if chunk_size is not None:
        check_num_samples(chunk_size, "chunk_size")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    from . import memory
    d = getattr(model, "latent_dim", 1)
    rows = min(x.shape[0], batch_size or x.shape[0])
    memory.require("importance sampling", float(num_samples) * (rows * (4 * d + 8) + 12 * d),
                   f"K = {num_samples} importance samples for batches of {rows} examples",
                   "Use fewer samples (num_samples, --samples) or smaller batches (batch_size, --batch-size)")
    n, first = x.shape[0], 0
    if distributed:
        seed = ranks.broadcast_int(seed)
        mine = ranks.shard(n)
        x, first = x[mine.start : mine.stop], mine.start
    device = model_device(model)
    out = [torch.empty(0, dtype=torch.float64, device=device)]
    with eval_mode(model):
        offset = first
        for xb in _batches(x, batch_size, device, model):
            c = chunk_size or max(1, min(num_samples, _CHUNK_ELEMENTS // max(1, xb[0].numel() * xb.shape[0])))
            out.append(_estimate_batch(model, xb, num_samples, c, _example_seeds(xb, seed, offset, seeding)))
            offset += xb.shape[0]
    ll = torch.cat(out).cpu()
    return ranks.gather_rows(ll, n) if distributed else ll


def bits_per_dim(nll_nats: _Number, num_dims: int, *, dequantized_8bit: bool = False,
                 levels: int | None = None) -> _Number:
    """NLL in bits per dimension: nll / (D ln 2).

    With ``dequantized_8bit`` (or, generally, ``levels`` = L), the data are L-level values scaled to [0, 1] and
    modelled by a density after uniform dequantisation, so D ln L is added first: the result is then the
    bits/dim of the discrete data (for 8-bit data, L = 256).
    """
    check_num_samples(num_dims, "num_dims")
    if dequantized_8bit:
        levels = 256
    extra = num_dims * math.log(levels) if levels else 0.0
    return (nll_nats + extra) / (num_dims * math.log(2.0))


@torch.no_grad()
def active_units(model: LatentModel, x: torch.Tensor, threshold: float = 0.01,
                 batch_size: int = 1000) -> tuple[int, torch.Tensor]:
    """Active units (Burda et al. 2016): dimension u is active when Var_x(E_{z~p(z|x)}[z_u]) > threshold.

    Returns (count, Tensor[d] of the variances).
    """
    x = _check_x(x)
    with eval_mode(model):
        means = torch.cat([model.posterior(xb).mean.cpu()
                           for xb in _batches(x, batch_size, model_device(model), model, False)]).double()
    var = means.var(dim=0, unbiased=False) if means.shape[0] > 1 else torch.zeros_like(means[0])
    return int((var > threshold).sum()), var


@torch.no_grad()
def per_dimension_kl(model: LatentModel, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Mean over x of KL(p(z_u|x) || q(z_u)) for each latent dimension u, Tensor[d] in nats (sums to the mean KL)."""
    x = _check_x(x)
    total: torch.Tensor | None = None
    n = 0
    with eval_mode(model):
        for xb in _batches(x, batch_size, model_device(model), model, False):
            kl = kl_per_dimension(model.posterior(xb), model.prior).double().sum(0).cpu()
            total, n = (kl if total is None else total + kl), n + xb.shape[0]
    assert total is not None  # x is a non-empty batch (_check_x)
    return total / n


#: Examples per minibatch of the mutual-information estimator in ``evaluate`` (its ceiling is log of this).
MI_BATCH_SIZE = 1000


@torch.no_grad()
def mutual_information(model: LatentModel, x: torch.Tensor, batch_size: int = 1000, seed: int | None = 0) -> float:
    """I(x; z) in nats under the aggregate posterior p(z) = (1/N) Σ_n p(z|x_n) of the data: the standard minibatch
    estimator (Hoffman & Johnson 2016; He et al. 2019). In each minibatch of N examples, one z_i ~ p(z|x_i) each:

        Î = (1/N) Σ_i [ log p(z_i|x_i) - log (1/N) Σ_n p(z_i|x_n) ]

    Bias: the aggregate posterior is the batch's own mixture, which contains the term of x_i, so Î ≤ log N, and
    in expectation Î is the InfoNCE lower bound with the true critic (Poole et al. 2019): it UNDERestimates I(x; z)
    when I approaches log N (for N = 1000, log N = 6.9 nats). Read it as "at least"; compare models at equal N.
    Returns the example-weighted mean over minibatches. Works for any posterior with ``sample`` and ``log_prob``
    (densities on one base measure, e.g. both on the sphere).
    """
    x = _check_x(x)
    check_num_samples(batch_size, "batch_size")
    total, n = 0.0, 0
    device = model_device(model)
    with eval_mode(model), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        for xb in _batches(x, batch_size, device, model, False):
            q = model.posterior(xb)
            z = q.sample()  # [N, d]
            rows = []
            for start in range(0, z.shape[0], 256):  # log p(z_i | x_n) for a block of i against every n
                rows.append(q.log_prob(z[start : start + 256].unsqueeze(1)).double())  # [b, N]
            log_q = torch.cat(rows)  # [N (i), N (n)]
            log_aggregate = torch.logsumexp(log_q, dim=1) - math.log(log_q.shape[1])
            total += float((log_q.diagonal() - log_aggregate).sum())
            n += xb.shape[0]
    return total / n


@torch.no_grad()
def evaluate(model: LatentModel, x: torch.Tensor, num_samples: int = 5000, *, levels: int | None = None,
             batch_size: int = 500, chunk_size: int | None = None, distributed: bool = False,
             per_example: bool = False) -> dict | None:
    """Every figure of an honest evaluation of ``x``, as a JSON-able dict (names carry sign and unit).

    ``log_likelihood_nats`` is the mean importance-sampled log p(x) with K = ``num_samples``; ``nll_nats`` its
    negative; ``elbo_nats`` the one-sample ELBO with closed-form KL, split into ``reconstruction_nll_nats`` and
    ``kl_nats``; bits/dim per :func:`bits_per_dim` (``levels``: the data were dequantised from that many levels).
    For a model of standardised data (``model.data_log_scale``, ln s per feature) every figure is a density of the
    data in the user's units; ``nll_standardized_nats`` and ``elbo_standardized_nats`` give the standardised
    features' figures too, which differ by ``standardization_log_scale_sum_nats`` = Σ ln s.

    ``distributed``: under torchrun the importance-sampled log-likelihood (nearly all the work) is sharded over the
    ranks; rank 0 computes the cheap rest with the random state a single process would have, and returns the same
    dict as one process; the other ranks return None.

    ``per_example``: also ``log_likelihood_nats_per_example``, the list of every example's estimate (for paired
    comparisons of two models on the same examples).
    """
    x = _check_x(x)
    ll = estimate_log_likelihood(model, x, num_samples, chunk_size=chunk_size, batch_size=min(batch_size, 100),
                                 distributed=distributed)
    elbo_seed = ranks.broadcast_int(int(torch.randint(0, 2**62, ()))) if distributed else \
        int(torch.randint(0, 2**62, ()))
    if distributed and not ranks.is_main():
        return None
    recon, kl = [], []
    with eval_mode(model):
        offset = 0
        for xb in _batches(x, batch_size, model_device(model), model):
            r, k = _elbo_terms_per_example(model, xb, [elbo_seed + offset + i for i in range(xb.shape[0])])
            recon.append(-r.double().cpu())
            kl.append(k.double().cpu())
            offset += xb.shape[0]
    recon_nll, kl_all = torch.cat(recon), torch.cat(kl)
    count, variances = active_units(model, x, batch_size=batch_size)
    nll, num_dims = -float(ll.mean()), x[0].numel()
    try:
        kl_dims = per_dimension_kl(model, x, batch_size=batch_size).tolist()
    except TypeError:  # a KL that does not split by dimension (e.g. the vMF's constant)
        kl_dims = None
    mi_batch = min(MI_BATCH_SIZE, x.shape[0])
    result: dict[str, Any] = {
        "num_examples": int(x.shape[0]),
        "num_samples": num_samples,
        "log_likelihood_nats": -nll,
        "nll_nats": nll,
        "nll_nats_stderr": float(ll.std() / math.sqrt(ll.numel())) if ll.numel() > 1 else 0.0,
        "nll_bits_per_dim": bits_per_dim(nll, num_dims, levels=levels),
        "dequantization_levels": levels,
        "elbo_nats": -float((recon_nll + kl_all).mean()),
        "reconstruction_nll_nats": float(recon_nll.mean()),
        "kl_nats": float(kl_all.mean()),
        "active_units": count,
        "latent_dim": int(variances.numel()),
        "active_unit_variances": variances.tolist(),
        "kl_per_dimension_nats": kl_dims,
        "mutual_information_nats": mutual_information(model, x, batch_size=mi_batch),
        "mutual_information_batch_size": mi_batch,
        "mutual_information_max_nats": math.log(mi_batch),
    }
    if per_example:
        result["log_likelihood_nats_per_example"] = ll.double().tolist()
    log_scale = getattr(model, "data_log_scale", None)
    if log_scale is not None:  # the densities above are of the user's data; also give the standardised scale's
        shift = float(log_scale.double().sum())
        result.update(standardization_log_scale_sum_nats=shift, nll_standardized_nats=nll - shift,
                      elbo_standardized_nats=result["elbo_nats"] + shift)
    return result


def seconds_per_example(model: LatentModel, x: torch.Tensor, num_samples: int, pilot: int = 4) -> float:
    """Wall seconds that :func:`estimate_log_likelihood` takes per example of ``x`` with K = ``num_samples``, timed
    on its first ``pilot`` rows under a forked random state (the caller's later draws do not change)."""
    import time

    device = model_device(model)
    rows = x[:pilot]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        t0 = time.perf_counter()
        estimate_log_likelihood(model, rows, num_samples, batch_size=max(1, rows.shape[0]))
        return (time.perf_counter() - t0) / max(1, rows.shape[0])
