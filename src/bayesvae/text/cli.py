"""The CLI's text hooks: likelihood options from the text flags, text outputs of sample/reconstruct/evaluate."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from .runs import vocabulary_of

__all__ = ["likelihood_options", "is_text_run", "write_sentences", "sample_sentences", "reconstruction_lines",
           "interpolation_lines", "interpolation_pairs", "TEXT_SUFFIXES"]

TEXT_SUFFIXES = (".txt", ".tsv")


def likelihood_options(args) -> dict:
    """The autoregressive likelihood's options the text flags gave (only those given; the run's data decide
    whether they apply: ``bayesvae.flags`` declares where each applies, and ``text.runs.model_settings`` refuses
    them on other data)."""
    out = {}
    if args.embedding_dim is not None:
        out["embedding_dim"] = args.embedding_dim
    if args.cell is not None:
        out["cell"] = args.cell
    if args.word_dropout is not None:
        out["word_dropout"] = args.word_dropout
    if args.softmax is not None:
        out["softmax"] = args.softmax
    if args.latent_every_step:
        out["latent_every_step"] = True
    if args.no_latent:
        if args.posterior != "diagonal-gaussian" or args.posterior_bn is not None or args.kappa is not None:
            raise ConfigError("--no-latent trains the language model without z: --posterior, --posterior-bn and "
                              "--kappa shape a posterior it does not have; drop them")
        out["use_latent"] = False
    return out


def is_text_run(run) -> bool:
    return run.model_config.architecture == "rnn"


def check_text_output(run, out: Path, flag_values: dict) -> None:
    """Text runs write sentences (.txt/.tsv); text-only flags on other runs are refused, naming them."""
    given = [flag for flag, value in flag_values.items() if value is not None and value is not False]
    if is_text_run(run):
        if out.suffix not in TEXT_SUFFIXES:
            raise ConfigError(f"{out}: a text model writes sentences; use a .txt or .tsv output")
    elif given:
        raise ConfigError(f"{', '.join(given)}: for runs trained on text only")


def write_sentences(out: Path, lines: list[str], overwrite: bool) -> None:
    from ..checkpoint import atomic_write_text

    if out.exists() and not overwrite:
        from ..errors import OutputExistsError
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    atomic_write_text(out, "".join(line + "\n" for line in lines))


@torch.no_grad()
def sample_sentences(run, n: int, temperature: float | None) -> list[str]:
    """n sentences decoded from z ~ q(z): sampled at ``temperature``, or greedy (None)."""
    vocab = vocabulary_of(run.state)
    assert vocab is not None  # a text run stores its vocabulary
    z = run.model.prior.sample((n,))
    rows = run.model.likelihood_head.generate(z, temperature).cpu()
    return [vocab.decode(r) for r in rows]


@torch.no_grad()
def reconstruction_lines(run, x: torch.Tensor) -> list[str]:
    """``input<TAB>greedy reconstruction from the posterior's mode`` per sentence, under a header line."""
    vocab = vocabulary_of(run.state)
    assert vocab is not None  # a text run stores its vocabulary
    recon = run.model.reconstruct(x).cpu()
    return ["input\treconstruction"] + [f"{vocab.decode(a)}\t{vocab.decode(b)}"
                                         for a, b in zip(x.cpu(), recon, strict=True)]


@torch.no_grad()
def interpolation_lines(run, x: torch.Tensor, steps: int = 7) -> list[str]:
    """Greedy sentences along the latent path between the posterior modes of x[0] and x[1] (Bowman et al.'s
    homotopy): the straight line in R^d, the great circle for a latent on the sphere."""
    vocab = vocabulary_of(run.state)
    assert vocab is not None  # a text run stores its vocabulary
    q = run.model.posterior(x[:2])
    a, b = q.mode[0], q.mode[1]
    t = torch.linspace(0, 1, steps, device=a.device).unsqueeze(1)
    if run.model_config.posterior == "vmf":
        omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
        path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    else:
        path = (1 - t) * a + t * b
    rows = run.model.decode(path).cpu()
    return [f"{float(ti):.2f}\t{vocab.decode(r)}" for ti, r in zip(t[:, 0].cpu(), rows, strict=True)]


def interpolation_pairs(run, x: torch.Tensor, *, pairs: int = 4, steps: int = 7, seed: int = 0) -> list[str]:
    """``pair<TAB>t<TAB>sentence`` lines: the homotopy of :func:`interpolation_lines` between ``pairs`` pairs of
    rows of x chosen with ``seed``, each between the two input sentences (t = ``input``); t = 0 and 1 are their
    greedy reconstructions."""
    if x.shape[0] < 2:
        raise ConfigError(f"interpolation needs at least 2 sentences, got {x.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    lines = ["pair\tt\tsentence"]
    for p in range(pairs):
        i, j = torch.randperm(x.shape[0], generator=g)[:2].tolist()
        vocab = vocabulary_of(run.state)
        assert vocab is not None  # a text run stores its vocabulary
        lines += ([f"{p}\tinput\t{vocab.decode(x[i].cpu())}"]
                  + [f"{p}\t{line}" for line in interpolation_lines(run, x[[i, j]], steps)]
                  + [f"{p}\tinput\t{vocab.decode(x[j].cpu())}"])
    return lines
