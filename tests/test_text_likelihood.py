"""The autoregressive likelihood against independent references: exact normalisation by enumeration, a step-by-step
loop over torch.distributions.Categorical, and padding/batching invariance. All on CPU with fixed seeds."""

import itertools
import math

import pytest
import torch
from torch.distributions import Categorical

import bayesvae as bv
from bayesvae.config import ModelConfig
from bayesvae.model import build_model
from bayesvae.text.likelihood import Autoregressive
from bayesvae.text.vocabulary import EOS, PAD


def _head(cell="lstm", every=False, vocab=4, length=4, d=3, seed=0, softmax="full"):
    torch.manual_seed(seed)
    head = Autoregressive(vocab_size=vocab, length=length, latent_dim=d, embedding_dim=5, hidden_size=7, cell=cell,
                          latent_every_step=every, softmax=softmax)
    with torch.no_grad():  # larger weights than the default init: probabilities far from uniform
        for p in head.parameters():
            p.mul_(3.0)
    return head.double()


def _row(words, length):
    row = torch.full((length,), PAD, dtype=torch.int64)
    row[: len(words)] = torch.tensor(words, dtype=torch.int64)
    row[len(words)] = EOS
    return row


def _logits(head, h):
    """Step logits from the head's output layer: the linear layer's, or the adaptive softmax's full log_prob (a
    different code path from its per-target forward, which log_prob of the distribution uses)."""
    return head.output.log_prob(h[None])[0] if head.softmax == "adaptive" else head.output(h)


def _reference_log_prob(head, z, words_then_eos):
    """Σ_t log Cat(x_t | x_<t, z), one step at a time through the same modules."""
    state = head.initial_state(z[None])
    token, total = torch.tensor([[EOS]]), torch.zeros((), dtype=torch.float64)
    for t in words_then_eos:
        out, state = head.rnn(head._inputs(token, z[None]), state)
        total = total + Categorical(logits=_logits(head, out[0, 0])).log_prob(torch.tensor(t))
        token = torch.tensor([[t]])
    return total


@pytest.mark.parametrize("cell,every,softmax", [("lstm", False, "full"), ("gru", True, "full"),
                                                ("lstm", True, "adaptive")])
def test_log_prob_equals_step_by_step_categorical(cell, every, softmax):
    head, length = _head(cell, every, vocab=6, length=6, softmax=softmax), 6
    torch.manual_seed(1)
    sentences = [[3], [2, 4, 5, 1], [5, 5, 2, 3, 4], []]
    x = torch.stack([_row(s, length) for s in sentences])
    z = torch.randn(len(sentences), 3, dtype=torch.float64)
    got = head(z).log_prob(x)
    want = torch.stack([_reference_log_prob(head, z[i], s + [EOS]) for i, s in enumerate(sentences)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell,every,softmax,vocab", [("lstm", True, "full", 3), ("gru", False, "full", 3),
                                                      ("lstm", False, "adaptive", 4)])
def test_probabilities_of_all_sentences_sum_to_one_less_the_mass_beyond_the_length(cell, every, softmax, vocab):
    length = 5 if vocab == 3 else 4  # words 1..V-1 (id 0 = <eos>); sentences of up to length - 1 words
    head = _head(cell, every, vocab=vocab, length=length, softmax=softmax)
    words = list(range(1, vocab))
    z = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows = [_row(list(w), length) for n in range(length) for w in itertools.product(words, repeat=n)]
    x = torch.stack(rows)  # every sentence of at most length - 1 words
    for zi in z:
        with torch.no_grad():
            total = head(zi).log_prob(x).exp().sum()
        # the mass of the 2^5 prefixes of length T without <eos>: a step-by-step product, enumerated
        beyond = sum(math.exp(_reference_prefix(head, zi, list(p))) for p in itertools.product(words, repeat=length))
        assert 0.01 < beyond < 0.99  # the test means something: mass on both sides
        assert abs(float(total) + beyond - 1.0) < 1e-12


@torch.no_grad()
def _reference_prefix(head, z, prefix):
    state = head.initial_state(z[None])
    token, total = torch.tensor([[EOS]]), 0.0
    for t in prefix:
        out, state = head.rnn(head._inputs(token, z[None]), state)
        total += float(torch.log_softmax(_logits(head, out[0, 0]), -1)[t])
        token = torch.tensor([[t]])
    return total


def _text_model(posterior="diagonal-gaussian", options=None, use_latent=True, vocab=9, length=8):
    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(length,), latent_dim=4, architecture="rnn", hidden=(16,),
                      likelihood="autoregressive",
                      likelihood_options={"vocab_size": vocab, "embedding_dim": 8, "hidden_size": 16,
                                          "use_latent": use_latent},
                      posterior=posterior, posterior_options=options or {})
    return build_model(cfg).eval()


def _corpus(n=12, vocab=9, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, length, (n,), generator=g)
    return torch.stack([_row(torch.randint(2, vocab, (int(k),), generator=g).tolist(), length) for k in lens])


@pytest.mark.parametrize("posterior,options", [("diagonal-gaussian", {}), ("vmf", {"kappa": 20.0}),
                                               ("diagonal-gaussian", {"bn_gamma": 0.6})])
def test_padded_batches_give_the_values_of_one_sentence_at_a_time(posterior, options):
    model, x = _text_model(posterior, options), _corpus()
    torch.manual_seed(5)
    z = torch.randn(3, x.shape[0], 4)
    if posterior == "vmf":
        z = z / z.norm(dim=-1, keepdim=True)
    batched_lp = model.likelihood(z).log_prob(x)
    batched_params = model.encoder(x)
    one = torch.stack([model.likelihood(z[:, i : i + 1]).log_prob(x[i : i + 1])[:, 0] for i in range(len(x))], 1)
    params = torch.cat([model.encoder(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched_lp, one, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched_params, params, rtol=0, atol=1e-6)
    # the sorted order of a bucketed batch changes nothing either
    order = torch.argsort((x != PAD).sum(-1))
    torch.testing.assert_close(model.likelihood(z[:, order]).log_prob(x[order]), batched_lp[:, order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("posterior,options", [("diagonal-gaussian", {}), ("vmf", {"kappa": 20.0}),
                                               ("diagonal-gaussian", {"bn_tau": 0.5})])
@torch.no_grad()
def test_objectives_and_estimators_work_unchanged(posterior, options):
    model, x = _text_model(posterior, options), _corpus(n=10)
    torch.manual_seed(0)
    elbo = bv.elbo(model, x)
    iwae = bv.iwae_bound(model, x, num_samples=20)
    ll = bv.estimate_log_likelihood(model, x, num_samples=50, seed=0)
    assert elbo.shape == iwae.shape == ll.shape == (10,)
    assert bool((elbo < 0).all()) and bool((ll < 0).all())  # log-probabilities of discrete data
    assert float(iwae.mean()) >= float(elbo.mean()) - 0.5
    mi = bv.mutual_information(model, x, batch_size=10)
    assert 0.0 <= mi <= math.log(10) + 1e-9


@torch.no_grad()
def test_language_model_without_latent_has_zero_kl_and_exact_likelihood():
    model, x = _text_model(use_latent=False), _corpus(n=6)
    terms = bv.elbo_terms(model, x, num_samples=3)
    assert float(terms.kl.abs().max()) == 0.0
    exact = model.likelihood_head.sequence_log_prob(torch.zeros(6, 4), x)
    torch.testing.assert_close(bv.estimate_log_likelihood(model, x, num_samples=7, seed=0).float(), exact,
                               rtol=0, atol=1e-5)


def test_sampling_and_greedy_decoding_give_well_formed_rows():
    model = _text_model()
    torch.manual_seed(0)
    z = torch.randn(50, 4)
    for rows in (model.likelihood(z).sample(), model.likelihood(z).sample(temperature=0.5), model.decode(z)):
        assert rows.shape == (50, 8) and rows.dtype == torch.int64
        for r in rows.tolist():
            ends = [i for i, t in enumerate(r) if t == EOS]
            if ends:  # after <eos> only PAD; before it only words
                assert all(t == PAD for t in r[ends[0] + 1 :]) and all(t >= 1 for t in r[: ends[0]])
            else:
                assert all(t >= 1 for t in r)  # cut at T: no <eos>, no PAD
    # greedy decoding is deterministic; sampling at a temperature near 0 is greedy
    torch.testing.assert_close(model.decode(z), model.decode(z))
    torch.testing.assert_close(model.likelihood(z).sample(temperature=1e-4), model.decode(z))


def test_scoring_in_sorted_chunks_equals_the_one_batch_value(monkeypatch):
    import bayesvae.text.likelihood as lik

    model, x = _text_model(), _corpus(n=40)
    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    whole = model.likelihood(z).log_prob(x).detach()  # with gradients: one batch, no sorting
    monkeypatch.setattr(lik, "SCORE_CHUNK_ELEMENTS", 9 * 12)  # chunks of a few rows
    with torch.no_grad():
        chunked = model.likelihood(z).log_prob(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_the_autoregressive_likelihood_goes_with_the_rnn_architecture_only():
    from bayesvae.errors import ConfigError

    with pytest.raises(ConfigError, match="architecture 'rnn'"):
        ModelConfig(data_shape=(8,), architecture="mlp", likelihood="autoregressive")
    with pytest.raises(ConfigError, match="architecture 'rnn'"):
        ModelConfig(data_shape=(8,), architecture="rnn", likelihood="bernoulli")
