"""The autoregressive likelihood q(x|z) = Π_t Cat(x_t | x_<t, z) of a sentence (Bowman et al. 2016).

A recurrent language model (LSTM or GRU) whose initial state is a linear map of z (and, optionally, z joins the
input at every step). ``Autoregressive(params=z)`` is one ``torch.distributions.Distribution`` over token rows:
``log_prob(x)`` runs the network over x with teacher forcing and sums log Cat(x_t | x_<t, z) over the words and the
final ``<eos>``; positions after it (``PAD``) are not tokens. The softmax at every step is over the whole
vocabulary, ``<eos>`` included, so the probabilities of all finite sentences sum to 1 less the mass of sentences
with no ``<eos>`` in the first T positions (T = max_length + 1, the row width; ``sample`` cuts those at T).
The objectives and estimators use it unchanged, as they use a Bernoulli.

Word dropout (Bowman et al. 2016, ``word_dropout`` = p): while the training objective fits a model in training mode
(:func:`bayesvae.likelihoods.batch_fitting`), each decoder input word (not the start symbol) is replaced by
``<unk>`` with probability p, which forces the decoder to rely on z. Everything that scores (validation,
``elbo``, ``evaluate``) sees the exact model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.types import _size

from .. import draws
from ..errors import ConfigError
from ..likelihoods import Likelihood
from .vocabulary import EOS, PAD, UNK

__all__ = ["Autoregressive", "AutoregressiveCategorical", "CELLS"]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
#: ``full``: one softmax over the vocabulary; ``adaptive``: Grave et al.'s (2017) adaptive softmax, a head over the
#: frequent words and two tail clusters (cutoffs V/5 and 3V/5 by frequency rank), exact and normalised as well.
SOFTMAXES = ("full", "adaptive")
_LOW = (torch.float16, torch.bfloat16)
#: Logit elements per chunk when scoring without gradients (IS evaluation): 2^25 floats, 128 MiB.
SCORE_CHUNK_ELEMENTS = 1 << 25


class AutoregressiveCategorical(Distribution):
    """q(x|z) over token rows ``[T]``: batch_shape = z.shape[:-1], event_shape = (T,)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.integer_interval(PAD, 1 << 30), 1)

    def __init__(self, head: Autoregressive, z: torch.Tensor):
        self.head, self.z = head, z
        super().__init__(z.shape[:-1], torch.Size((head.length,)), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q(x|z) in nats, Tensor[batch_shape] (x broadcast against z's batch, e.g. [B, T] against [K, B, d])."""
        shape = torch.broadcast_shapes(self.batch_shape, value.shape[:-1])
        z = self.z.expand(*shape, self.z.shape[-1]).reshape(-1, self.z.shape[-1])
        x = value.expand(*shape, value.shape[-1]).reshape(-1, value.shape[-1])
        return self.head.sequence_log_prob(z, x).reshape(shape)

    def sample(self, sample_shape: _size = torch.Size(), temperature: float = 1.0) -> torch.Tensor:
        """Sentences drawn word by word (softmax of logits / ``temperature``), ``Tensor[*sample_shape, *batch, T]``."""
        return self._generate(sample_shape, temperature)

    @property
    def mode(self) -> torch.Tensor:
        """Greedy decoding (the most likely word at each step; not the most likely sentence)."""
        return self._generate(torch.Size(), None)

    @property
    def mean(self) -> torch.Tensor:
        """Tokens have no mean: what ``decode`` and ``reconstruct`` show is the greedy sentence (``mode``)."""
        return self.mode

    def _generate(self, sample_shape, temperature) -> torch.Tensor:
        z = self.z.expand(*sample_shape, *self.z.shape)
        out = self.head.generate(z.reshape(-1, z.shape[-1]), temperature)
        return out.reshape(*z.shape[:-1], self.head.length)


class Autoregressive(Likelihood):
    """Recurrent decoder head; its parameters ("params") are z itself (the VAE's decoder network is the identity).

    Args:
        vocab_size: V, tokens of the softmax (``<eos>`` and ``<unk>`` included).
        length: T, the row width (``max_length + 1``).
        latent_dim: d.
        embedding_dim, hidden_size: word embedding and recurrent state sizes.
        cell: ``lstm`` or ``gru``.
        latent_every_step: z is also concatenated to the input at every step (besides setting the initial state).
        word_dropout: p of Bowman et al.'s word dropout (training objective only; see the module docstring).
        use_latent: False gives the language model without z (the control of every collapse comparison).
        softmax: ``full`` or ``adaptive`` (see SOFTMAXES; a different, also exactly normalised, output layer).
    """

    name = "autoregressive"
    data = "tokens"

    def __init__(self, vocab_size: int = 0, length: int = 0, latent_dim: int = 0, embedding_dim: int = 256,
                 hidden_size: int = 256, cell: str = "lstm", latent_every_step: bool = False,
                 word_dropout: float = 0.0, use_latent: bool = True, softmax: str = "full"):
        super().__init__()
        for key, value, low in (("vocab_size", vocab_size, 2), ("length", length, 1), ("latent_dim", latent_dim, 1),
                                ("embedding_dim", embedding_dim, 1), ("hidden_size", hidden_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"autoregressive likelihood option {key!r} must be an integer >= {low}, "
                                  f"got {value!r}")
        if cell not in CELLS:
            raise ConfigError(f"autoregressive likelihood option 'cell' must be one of {sorted(CELLS)}, got {cell!r}")
        if not (isinstance(word_dropout, (int, float)) and not isinstance(word_dropout, bool)
                and 0.0 <= word_dropout < 1.0):
            raise ConfigError(f"--word-dropout must be a number in [0, 1), got {word_dropout!r}")
        if softmax not in SOFTMAXES:
            raise ConfigError(f"--softmax must be one of {list(SOFTMAXES)}, got {softmax!r}")
        if not use_latent and latent_every_step:
            raise ConfigError("--latent-every-step feeds z to the decoder, and the language model without z has none")
        self.vocab_size, self.length, self.latent_dim = vocab_size, length, latent_dim
        self.embedding_dim, self.hidden_size, self.cell = embedding_dim, hidden_size, cell
        self.latent_every_step, self.word_dropout = bool(latent_every_step), float(word_dropout)
        self.use_latent = bool(use_latent)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = CELLS[cell](embedding_dim + (latent_dim if latent_every_step else 0), hidden_size, batch_first=True)
        self.states = 2 if cell == "lstm" else 1
        self.initial = nn.Linear(latent_dim, self.states * hidden_size) if use_latent else None
        self.softmax = softmax
        self.output: nn.AdaptiveLogSoftmaxWithLoss | nn.Linear
        if softmax == "adaptive":  # ids are in frequency order: clusters of rarer and rarer words
            cutoffs = sorted({c for c in (vocab_size // 5, 3 * vocab_size // 5) if 0 < c < vocab_size - 1})
            if not cutoffs:
                raise ConfigError(f"--softmax adaptive needs a vocabulary of at least 4 tokens, got {vocab_size}")
            if hidden_size < 4:
                raise ConfigError(f"--softmax adaptive needs a state size of at least 4, got {hidden_size}")
            div = 4.0 if hidden_size >= 16 else 2.0  # tail projections of H/div and H/div² (at least one unit)
            self.output = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, cutoffs, div_value=div)
        else:
            self.output = nn.Linear(hidden_size, vocab_size)
        self._dropping = False

    def forward(self, params: torch.Tensor, event_ndim: int = 1) -> AutoregressiveCategorical:
        if params.shape[-1] != self.latent_dim:
            raise ValueError(f"the autoregressive likelihood takes z of shape [..., {self.latent_dim}], got "
                             f"{tuple(params.shape)}")
        return AutoregressiveCategorical(self, params)

    def mean(self, params: torch.Tensor, event_ndim: int = 1) -> torch.Tensor:
        return self(params, event_ndim).mode

    def config(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "length": self.length,
                "latent_dim": self.latent_dim, "embedding_dim": self.embedding_dim, "hidden_size": self.hidden_size,
                "cell": self.cell, "latent_every_step": self.latent_every_step, "word_dropout": self.word_dropout,
                "use_latent": self.use_latent, "softmax": self.softmax}

    @contextlib.contextmanager
    def fitting(self, enabled: bool = True) -> Iterator[None]:
        """Within (the training objective on a model in training mode): word dropout on the decoder's input."""
        saved, self._dropping = self._dropping, bool(enabled) and self.word_dropout > 0
        try:
            yield
        finally:
            self._dropping = saved

    # ------------------------------------------------------------------------------------------------ network
    def initial_state(self, z: torch.Tensor):
        """The recurrent state before the first word, from z ``[N, d]`` (zeros for the model without z)."""
        n = z.shape[0]
        if self.initial is None:
            h = z.new_zeros(1, n, self.hidden_size)
            return (h, h) if self.states == 2 else h
        parts = torch.tanh(self.initial(z)).unsqueeze(0).chunk(self.states, dim=-1)
        return tuple(p.contiguous() for p in parts) if self.states == 2 else parts[0].contiguous()

    def _inputs(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Embedded decoder inputs [N, L, E(+d)] for input tokens [N, L]."""
        emb = self.embedding(tokens)
        if self.latent_every_step:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, tokens.shape[1], -1).to(emb.dtype)], dim=-1)
        return emb

    def hidden_states(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing: (states [N, L, H] before each target, targets [N, L], mask [N, L]); L = the longest
        sentence of x (the batch's trailing padding is never computed)."""
        lengths = (x != PAD).sum(-1)
        width = max(1, int(lengths.max()))
        target = x[:, :width]
        mask = target != PAD
        target = target.clamp_min(0)  # PAD positions are masked out; any valid id keeps the gather in range
        inputs = torch.cat([torch.full_like(target[:, :1], EOS), target[:, :-1]], dim=1)
        if self._dropping:  # a training step's draws are the global batch's (bayesvae.draws): ranks agree
            step = draws.current()
            if step is not None and x.dim() == 2 and step.local and x.shape[0] % step.local == 0:
                # x holds K samples' copies of the local rows, sample-major ([K, B] flattened): K draws per row
                u = step.uniform(x.shape[1:], lead_shape=(x.shape[0] // step.local,)).reshape(x.shape)
                u = u[:, :width].to(inputs.device)
            else:
                u = torch.rand(inputs.shape, device=inputs.device)
            drop = u < self.word_dropout
            drop[:, 0] = False
            inputs = torch.where(drop, torch.full_like(inputs, UNK), inputs)
        states, _ = self.rnn(self._inputs(inputs, z), self.initial_state(z))
        return states, target, mask

    def sequence_log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ_t log Cat(x_t | x_<t, z) over the predicted tokens (words and ``<eos>``), Tensor[N] nats.

        Without gradients (scoring: validation, IS evaluation) the rows are sorted by length and go through in
        chunks of similar lengths and at most SCORE_CHUNK_ELEMENTS logits, each cut at its longest sentence, so
        neither memory nor the padding of an unsorted batch grows with the batch. Each row's value is computed from
        that row alone, so the grouping changes nothing but the cost."""
        if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2 or x.shape[1] != self.length:
            raise ValueError(f"x must be token ids Tensor[N, {self.length}] (int64, PAD = -1 after <eos>), got "
                             f"{x.dtype} {tuple(x.shape)}")
        if torch.is_grad_enabled():
            return self._log_prob_rows(z, x)
        lengths = (x != PAD).sum(-1)
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths[order].clamp_min(1).tolist()
        out = torch.empty(x.shape[0], dtype=torch.promote_types(z.dtype, torch.float32), device=x.device)
        n, budget, i = x.shape[0], SCORE_CHUNK_ELEMENTS // self.vocab_size, 0
        while i < n:
            guess = max(1, budget // sorted_lengths[i])  # rows that fit at the chunk's shortest length...
            rows = max(1, budget // sorted_lengths[min(n - 1, i + guess - 1)])  # ...and at its end's: a bound
            idx = order[i : i + rows]
            out[idx] = self._log_prob_rows(z[idx], x[idx]).to(out.dtype)
            i += rows
        return out

    def _log_prob_rows(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        states, target, mask = self.hidden_states(z, x.long())
        if self.softmax == "adaptive":  # exact log-probabilities of the targets, computing only their clusters
            flat = states.reshape(-1, states.shape[-1])
            log_p = self.output(flat.float() if flat.dtype in _LOW else flat, target.reshape(-1)).output
            return (log_p.view(target.shape) * mask).sum(-1)
        logits = self.output(states)
        if logits.dtype in _LOW:  # densities in float32 at least (autocast)
            logits = logits.float()
        nll = nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), target.reshape(-1), reduction="none")
        return -(nll.view(target.shape) * mask).sum(-1)

    def step_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """log Cat(· | state) over the whole vocabulary, Tensor[N, V], for states [N, H]."""
        if self.softmax == "adaptive":
            assert isinstance(self.output, nn.AdaptiveLogSoftmaxWithLoss)
            return self.output.log_prob(states.float())
        return torch.log_softmax(self.output(states).float(), -1)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, temperature: float | None = 1.0) -> torch.Tensor:
        """Sentences for z ``[N, d]``: sampled at ``temperature`` (> 0), or greedy when None; Tensor[N, T] with
        ``<eos>`` then PAD (a sentence without ``<eos>`` in T steps is cut at T)."""
        if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"--temperature must be a positive number, got {temperature!r}")
        n = z.shape[0]
        out = torch.full((n, self.length), PAD, dtype=torch.int64, device=z.device)
        token = torch.full((n, 1), EOS, dtype=torch.int64, device=z.device)
        state, done = self.initial_state(z), torch.zeros(n, dtype=torch.bool, device=z.device)
        for t in range(self.length):
            step, state = self.rnn(self._inputs(token, z), state)
            logits = self.step_log_probs(step[:, 0])
            if temperature is None:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(-1)
            out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            done |= nxt == EOS
            if bool(done.all()):
                break
            token = nxt.unsqueeze(1)
        return out
