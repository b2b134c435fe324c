"""The log-likelihood estimator and the diagnostics: exact K, chunk independence, bits/dim, active units."""

import math

import pytest
import torch

import bayesvae as bv
from linear_gaussian import LinearGaussian


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return bv.build_model(bv.ModelConfig(data_shape=(1, 4, 4), latent_dim=3, hidden=(16,), **kw))


def test_estimate_does_not_depend_on_chunk_size():
    model, x = _model(), torch.rand(9, 1, 4, 4).round()
    values = []
    for chunk in (1, 7, 64, 250):
        torch.manual_seed(123)
        values.append(bv.estimate_log_likelihood(model, x, 250, chunk_size=chunk))
    for v in values[1:]:
        torch.testing.assert_close(v, values[0], atol=1e-6, rtol=0)


def test_estimate_does_not_depend_on_batch_size():
    model, x = _model(), torch.rand(9, 1, 4, 4).round()
    a = bv.estimate_log_likelihood(model, x, 100, batch_size=1, seed=5)
    b = bv.estimate_log_likelihood(model, x, 100, batch_size=4, seed=5)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_estimate_equals_a_naive_per_example_loop_draw_for_draw():
    # Reference: one example at a time, all K samples at once, plain logsumexp; the same per-example seeds.
    model, x = _model(), torch.rand(6, 1, 4, 4).round()
    model.eval()
    naive = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            q = model.posterior(x[i : i + 1])
            z = q.sample((300,), generator=torch.Generator().manual_seed(11 + i))
            log_w = model.likelihood(z).log_prob(x[i : i + 1]) + bv.StandardNormal(3).log_prob(z) - q.log_prob(z)
            naive.append(torch.logsumexp(log_w.double(), 0) - math.log(300))
    got = bv.estimate_log_likelihood(model, x, 300, chunk_size=64, batch_size=4, seed=11)
    torch.testing.assert_close(got, torch.cat(naive), atol=1e-4, rtol=0)


def test_estimate_uses_exactly_k_samples():
    model, x = _model(), torch.rand(5, 1, 4, 4).round()
    seen = []
    original = model.likelihood

    def counting(z):
        seen.append(z.shape[0])
        return original(z)

    model.likelihood = counting
    bv.estimate_log_likelihood(model, x, 1001, chunk_size=100)
    assert sum(seen) == 1001 and max(seen) == 100


def test_estimate_runs_in_eval_mode_without_gradients_and_restores_mode():
    model, x = _model(), torch.rand(3, 1, 4, 4).round()
    model.train()
    modes = []
    model.encoder.register_forward_hook(lambda mod, i, o: modes.append((mod.training, o.requires_grad)))
    ll = bv.estimate_log_likelihood(model, x, 10)
    assert modes and all(m == (False, False) for m in modes)
    assert model.training and ll.dtype == torch.float64 and not ll.requires_grad


def test_estimate_is_finite_when_the_weights_underflow_float32():
    # Log weights around -1e5: exp underflows in float32 and float64; logsumexp must not.
    m = LinearGaussian(D=4, d=2, sigma=0.01, posterior_shift=3.0)
    x = m.data(4) + 5.0
    ll = bv.estimate_log_likelihood(m, x, 100)
    assert torch.isfinite(ll).all() and ll.max() < -1e3


def test_estimate_matches_exact_value_for_a_trained_like_posterior():
    # A slightly wrong posterior: K = 5000 must land within 0.05 nats of the exact log p(x) on average.
    m = LinearGaussian(posterior_shift=0.1, posterior_scale=1.2)
    x = m.data(50)
    torch.manual_seed(0)
    est = bv.estimate_log_likelihood(m, x, 5000, batch_size=20)
    assert abs((est - m.marginal().log_prob(x)).mean()) < 0.05


def test_bits_per_dim_closed_forms():
    assert bv.bits_per_dim(784 * math.log(2.0), 784) == pytest.approx(1.0)
    # 8-bit data scaled to [0, 1]: a uniform density on [0, 1]^D has NLL 0 and is exactly 8 bits/dim.
    assert bv.bits_per_dim(0.0, 10, dequantized_8bit=True) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bv.bits_per_dim(1.0, 0)


class _FixedMeans:
    """A posterior stub with known means: unit 0 varies (variance 1 over x), unit 1 barely (1e-4)."""

    def __init__(self):
        self.prior = bv.StandardNormal(2)

    def posterior(self, x):
        loc = torch.stack([x[:, 0], 0.01 * x[:, 0]], dim=-1)
        return bv.DiagonalNormal(loc, torch.zeros_like(loc))


def test_active_units_counts_dimensions_with_variance_above_threshold():
    x = torch.tensor([[-1.0], [1.0]] * 50)
    count, var = bv.active_units(_FixedMeans(), x, batch_size=7)
    assert count == 1
    torch.testing.assert_close(var, torch.tensor([1.0, 1e-4], dtype=torch.float64))


def test_per_dimension_kl_sums_to_the_mean_kl():
    x = torch.randn(20, 1)
    model = _FixedMeans()
    per_dim = bv.per_dimension_kl(model, x, batch_size=6)
    # KL with unit variance is ½ μ² per dimension
    torch.testing.assert_close(per_dim, torch.stack([0.5 * x[:, 0] ** 2, 0.5e-4 * x[:, 0] ** 2], 1).double().mean(0))
