"""``estimate_log_likelihood(..., seeding=...)``: an example's estimate depends on the example alone (common random
numbers, or a seed from its content), while the default stays seed + row index."""

import math

import pytest
import torch

import bayesvae as bv
from linear_gaussian import LinearGaussian


def _model(seed=0):
    torch.manual_seed(seed)
    return bv.build_model(bv.ModelConfig(data_shape=(4,), latent_dim=2, hidden=(8,), likelihood="gaussian-learned"))


def _naive(model, x, k, seeds):
    """Reference: one example at a time with its own generator, plain logsumexp over the K log weights."""
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            q = model.posterior(x[i : i + 1])
            z = q.sample((k,), generator=torch.Generator().manual_seed(seeds[i]))
            log_w = model.likelihood(z).log_prob(x[i : i + 1]) + model.prior.log_prob(z) - q.log_prob(z)
            out.append(torch.logsumexp(log_w.double(), 0) - math.log(k))
    return torch.cat(out)


@pytest.mark.parametrize("seeding", ["common", "content"])
def test_an_example_scores_the_same_at_any_row_and_among_any_other_rows(seeding):
    model, x = _model().eval(), torch.randn(7, 4)
    whole = bv.estimate_log_likelihood(model, x, 64, batch_size=3, seed=9, seeding=seeding)
    perm = torch.tensor([5, 2, 6, 0, 3, 1, 4])
    permuted = bv.estimate_log_likelihood(model, x[perm], 64, batch_size=2, seed=9, seeding=seeding)
    alone = bv.estimate_log_likelihood(model, x[4:5], 64, seed=9, seeding=seeding)
    torch.testing.assert_close(permuted, whole[perm], atol=1e-9, rtol=0)
    torch.testing.assert_close(alone, whole[4:5], atol=1e-9, rtol=0)


def test_the_index_default_depends_on_the_row_and_is_unchanged():
    # The failure the keyword exists for: under the default, moving an example changes its estimate (K = 8 draws
    # differ), and the default is still seed + i, checked against a per-example loop with those seeds.
    model, x = _model().eval(), torch.randn(5, 4)
    default = bv.estimate_log_likelihood(model, x, 8, seed=3)
    torch.testing.assert_close(default, _naive(model, x, 8, [3, 4, 5, 6, 7]), atol=1e-5, rtol=0)
    moved = bv.estimate_log_likelihood(model, x.flip(0), 8, seed=3).flip(0)
    assert (moved - default).abs().max() > 1e-4


def test_common_random_numbers_give_every_example_the_seed_itself():
    model, x = _model().eval(), torch.randn(4, 4)
    got = bv.estimate_log_likelihood(model, x, 32, seed=21, seeding="common")
    torch.testing.assert_close(got, _naive(model, x, 32, [21] * 4), atol=1e-5, rtol=0)


def test_content_seeds_differ_between_examples_and_between_seeds():
    # Two different examples must not share their draws (that would be common random numbers); the seed matters.
    model = _model().eval()
    x = torch.randn(1, 4).repeat(2, 1)
    x[1, 0] += 1e-3  # nearly the same example: with the same draws the two estimates would differ by ~1e-3
    a = bv.estimate_log_likelihood(model, x, 4, seed=0, seeding="content")
    common = bv.estimate_log_likelihood(model, x, 4, seed=0, seeding="common")
    assert abs(float(common[0] - common[1])) < 0.05
    assert abs(float(a[0] - a[1])) > abs(float(common[0] - common[1])) + 1e-3
    b = bv.estimate_log_likelihood(model, x, 4, seed=1, seeding="content")
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("seeding", ["common", "content"])
def test_the_estimate_stays_unbiased_for_the_exact_log_likelihood(seeding):
    # Linear-Gaussian model, log p(x) exact (torch.distributions.MultivariateNormal); a slightly wrong posterior.
    # Tolerance: K = 2000, 40 examples, mean error below 0.05 nats (the same order as the default's test).
    m = LinearGaussian(posterior_shift=0.1, posterior_scale=1.2)
    x = m.data(40)
    est = bv.estimate_log_likelihood(m, x, 2000, batch_size=20, seed=0, seeding=seeding)
    assert abs(float((est - m.marginal().log_prob(x)).mean())) < 0.05


def test_an_unknown_seeding_is_refused_by_name():
    with pytest.raises(ValueError, match="seeding"):
        bv.estimate_log_likelihood(_model(), torch.randn(2, 4), 4, seeding="row")
