"""The report's text section: text figures, sentences from the prior, reconstructions and interpolations as text."""

from __future__ import annotations

import html

import torch

from .cli import interpolation_lines, reconstruction_lines, sample_sentences
from .metrics import text_figures

__all__ = ["sentences_html"]


def _rows(lines: list[str], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line.split("\t")) + "</tr>"
                   for line in lines)
    return f'<table class="kv"><tr>{head}</tr>{body}</table>'


def sentences_html(run, x: torch.Tensor, evaluation: dict, seed: int = 0) -> str:
    """The Sentences section: ``x`` is the evaluated test subset (its IS NLL is in ``evaluation``)."""
    parts = []
    if evaluation.get("nll_nats") is not None:
        fig = (evaluation if "perplexity_per_token" in evaluation  # the metrics section computed them
               else text_figures(run.model, x[: evaluation["num_examples"]], evaluation))
        parts.append(
            f"<p>Perplexity per token {fig['perplexity_per_token']:.2f} (IS estimate; the ELBO's bound "
            f"{fig['elbo_perplexity_bound_per_token']:.2f}), over {fig['tokens']} tokens: "
            f"{html.escape(fig['perplexity_tokens'])}. Greedy reconstruction from the posterior's mode reproduces "
            f"{100 * fig['reconstruction_token_accuracy']:.1f}% of the input tokens at their position "
            "(what z holds; a collapsed z gives the language model's single guess).</p>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        greedy = sample_sentences(run, 5, None)
        drawn = sample_sentences(run, 5, 1.0)
    parts.append("<h3>From the prior</h3>" + _rows([f"greedy\t{s}" for s in greedy] + [f"T = 1\t{s}" for s in drawn],
                                                    ("decoding", "sentence z ~ q(z)")))
    parts.append("<h3>Reconstructions</h3>" + _rows(reconstruction_lines(run, x[:8])[1:], ("input", "greedy")))
    path = "great circle" if run.model_config.posterior == "vmf" else "straight line"
    if x.shape[0] < 2:
        parts.append(f"<h3>Interpolation</h3><p>An interpolation needs two sentences; this split has {x.shape[0]}."
                     "</p>")
    else:
        parts.append(f"<h3>Interpolation</h3><p>Greedy sentences along the {path} between the posterior modes of "
                     "the first two test sentences (Bowman et al. 2016).</p>"
                     + _rows(interpolation_lines(run, x[:2]), ("t", "sentence")))
    return "".join(parts)
