"""Discrete latents summed exactly, against a mixture of linear-Gaussian components.

p(y) = π, p(z) = N(0, I), p(x|y,z) = N(W_y z + b_y, σ²I): log p(x) = logsumexp_y [log π_y +
log N(x; b_y, W_y W_yᵀ + σ²I)], and p(z|x,y) is the linear-Gaussian posterior of component y.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from linear_gaussian import exact_log_px, posterior
from pvae.errors import ConfigError
from pvae.evaluate import ais, bdmc, importance_sampling, log_likelihood
from pvae.infer.objectives import make_loss

K, Z, D, SIGMA = 3, 2, 4, 0.5


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(K, D, Z, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    y = torch.multinomial(pi, 40, replacement=True, generator=g)
    z = torch.randn(40, Z, generator=g, dtype=torch.float64)
    x = (W[y] @ z.unsqueeze(-1)).squeeze(-1) + b[y] + SIGMA * torch.randn(40, D, generator=g,
                                                                          dtype=torch.float64)
    exact = torch.stack([pi[c].log() + exact_log_px(x, W[c], b[c], SIGMA) for c in range(K)])
    return W, b, pi, x, exact.logsumexp(0)


def decode(W, b, y, z):
    """W_y z + b_y, y and z broadcast (y (C, 1) under enumeration, (1,) when conditioned)."""
    return (W[y] @ z.unsqueeze(-1)).squeeze(-1) + b[y]


def make_pair(W, b, pi, guide_kind="exact", q_logits=None):
    """The mixture model and a guide: y ~ q(y|x) enumerated, z ~ p(z|x,y) exactly (``"exact"``),
    or a shifted, widened diagonal Normal (``"poor"``); ``"model"``: y enumerated in the model
    only, the guide q(z) = N(0, 2²I) not knowing y."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(pi), infer=(
                {"enumerate": "parallel"} if guide_kind == "model" else {}))
            z = pyro.sample("z", dist.Normal(torch.zeros(Z, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decode(W, b, y, z), SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            if guide_kind == "model":
                pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], Z, dtype=x.dtype),
                                             2.0).to_event(1))
                return
            logits = q_logits if q_logits is not None else torch.zeros(K, dtype=x.dtype)
            y = pyro.sample("y", dist.Categorical(logits=logits.expand(x.shape[0], K)),
                            infer={"enumerate": "parallel"})
            mean, cov = _component_posteriors(x, W, b, y)
            if guide_kind == "exact":
                pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(
                    cov)))
            else:
                sd = cov.diagonal(dim1=-2, dim2=-1).sqrt() * 1.5
                pyro.sample("z", dist.Normal(mean + 0.3, sd.expand_as(mean)).to_event(1))

    return model, guide


def _component_posteriors(x, W, b, y):
    """Mean (…, B, Z) and covariance (…, Z, Z) of p(z|x, y), y (B,), (1,) or enumerated."""
    means, covs = zip(*(posterior(x, W[c], b[c], SIGMA) for c in range(K)))
    means, covs = torch.stack(means), torch.stack(covs)  # (K, B, Z), (K, Z, Z)
    y = y.long()
    return means[y.expand(*y.shape[:-1], x.shape[0]), torch.arange(x.shape[0])], covs[y]


@pytest.mark.parametrize("k", [1, 7, 50])
def test_importance_sampling_with_y_summed_is_exact_for_the_exact_posterior(mixture, k):
    W, b, pi, x, exact = mixture
    model, guide = make_pair(W, b, pi)
    lp = log_likelihood(model, guide, x, num_samples=k)
    assert lp.shape == (40,) and lp.dtype == torch.float64
    assert torch.allclose(lp, exact, atol=1e-8)


def test_the_sum_over_y_does_not_depend_on_q_y(mixture):
    W, b, pi, x, exact = mixture
    model, guide = make_pair(W, b, pi, q_logits=torch.tensor([3.0, -2.0, 0.0],
                                                             dtype=torch.float64))
    result = importance_sampling(model, guide, x, num_samples=30, progress=False)
    assert torch.allclose(torch.as_tensor(result.log_px), exact, atol=1e-8)
    assert torch.allclose(torch.as_tensor(result.elbo), exact, atol=1e-8)


def test_a_poor_guide_rises_toward_the_exact_value_and_the_model_only_sum_is_unbiased(mixture):
    W, b, pi, x, exact = mixture
    for kind, tolerance in (("poor", 0.02), ("model", 0.05)):
        model, guide = make_pair(W, b, pi, kind)
        small = log_likelihood(model, guide, x, num_samples=5)
        large = log_likelihood(model, guide, x, num_samples=20000)
        assert float((large - small).mean()) > 0, kind
        assert abs(float((large - exact).mean())) < tolerance, kind


def test_ais_sums_y_per_value_to_the_tolerance_of_the_continuous_case(mixture):
    W, b, pi, x, exact = mixture
    model, guide = make_pair(W, b, pi, "poor")
    result = ais(model, guide, x[:30], num_steps=200, num_chains=64, num_leapfrog=5)
    err = result.log_px - exact[:30]
    assert result.log_weights.shape == (30, 64)
    assert abs(float(err.mean())) < 0.02, float(err.mean())
    assert float(err.abs().max()) < 0.3
    assert 0.4 < float(result.accept_rate.mean()) < 0.99
    assert torch.allclose(result.log_px, result.log_weights.logsumexp(1) - math.log(64))


def test_bdmc_refuses_an_enumerated_site(mixture):
    W, b, pi, x, _ = mixture
    model, guide = make_pair(W, b, pi)
    with pytest.raises(ConfigError, match="BDMC does not handle enumerated"):
        bdmc(model, guide, x, num_steps=2, num_chains=2)


def test_the_enumerated_elbo_equals_the_elbo_with_y_summed_by_hand(mixture):
    """With z's exact posterior, ELBO = Σ_y q(y|x) [log p(x, y) − log q(y|x)] exactly."""
    W, b, pi, x, _ = mixture
    q_logits = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    model, guide = make_pair(W, b, pi, q_logits=q_logits)
    log_pxy = torch.stack([pi[c].log() + exact_log_px(x, W[c], b[c], SIGMA) for c in range(K)])
    q = q_logits.log_softmax(0)[:, None]
    by_hand = (q.exp() * (log_pxy - q)).sum()
    for particles in (1, 3):
        loss = make_loss("elbo", particles, enumerated=True)
        assert isinstance(loss, TraceEnum_ELBO)
        assert -loss.loss(model, guide, x) == pytest.approx(float(by_hand), rel=1e-10)


@pytest.mark.parametrize("name", ["meanfield", "iwae"])
def test_only_the_elbo_sums_an_enumerated_label(name):
    with pytest.raises(ConfigError, match="use loss elbo"):
        make_loss(name, 1, enumerated=True)
