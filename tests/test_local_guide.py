"""LocalGuide: one free diagonal Normal per datapoint, indexed by the data plate's subsample."""
import pyro
import pyro.optim
import pytest
import torch
from linear_gaussian import LinearGaussianLikelihood, make_problem, posterior, sample_data
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pvae.errors import ConfigError
from pvae.model.guides import GUIDES, LocalGuide
from pvae.model.priors import StandardNormal
from pvae.model.vae import VAE, build_vae

N, Z, X = 12, 2, 5


@pytest.fixture
def problem():
    W, b, sigma = make_problem(z_dim=Z, x_dim=X)
    x = sample_data(W, b, sigma, N)
    return W, b, sigma, x


def local_vae(W, b, sigma, num_data=N):
    prior = StandardNormal(Z).double()
    guide = LocalGuide(z_dim=Z, num_data=num_data).double()
    return VAE(prior, LinearGaussianLikelihood(W, b, sigma), guide, x_dim=X, num_data=num_data)


def test_needs_the_data_set_size():
    with pytest.raises(ConfigError, match="num_data"):
        LocalGuide(z_dim=Z)
    with pytest.raises(ConfigError, match="num_data"):
        build_vae(guide="local", z_dim=Z, x_dim=6, hidden_dims=(8,))


def test_registered_and_starts_at_the_prior():
    vae = build_vae(guide="local", num_data=N, z_dim=Z, x_dim=6, hidden_dims=(8,))
    assert GUIDES["local"] is LocalGuide and not vae.amortized
    q = vae.q(torch.zeros(3, 6), torch.tensor([0, 5, 11]))
    assert q.batch_shape == (3,) and q.event_shape == (Z,)
    assert torch.equal(q.mean, torch.zeros(3, Z))
    assert torch.allclose(q.stddev, torch.ones(3, Z), atol=1e-6)


def test_batch_loss_touches_only_its_rows(problem):
    W, b, sigma, x = problem
    vae = local_vae(W, b, sigma)
    idx = torch.tensor([1, 4, 7])
    with torch.no_grad():
        vae.q.loc.normal_()
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[idx], idx)
    loss.backward()
    others = torch.ones(N, dtype=torch.bool)
    others[idx] = False
    for p in (vae.q.loc, vae.q.raw_scale):
        assert torch.equal(p.grad[others], torch.zeros_like(p.grad[others]))
        assert bool((p.grad[idx].abs() > 0).all())


def test_batch_elbo_is_scaled_by_n_over_b(problem):
    W, b, sigma, x = problem
    idx = torch.tensor([0, 3, 5, 10])
    losses = {}
    for size in (N, len(idx)):
        vae = local_vae(W, b, sigma)
        vae.num_data = size
        pyro.set_rng_seed(3)
        losses[size] = float(Trace_ELBO().loss(vae.model, vae.guide, x[idx], idx))
    assert losses[N] == pytest.approx(losses[len(idx)] * N / len(idx), rel=1e-12)


def test_minibatch_svi_reaches_the_mean_field_optimum(problem):
    W, b, sigma, x = problem
    vae = local_vae(W, b, sigma)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO(
        num_particles=16, vectorize_particles=True))
    g = torch.Generator().manual_seed(0)
    with pyro.validation_enabled(False):
        for step in range(2000):
            if step == 1000:
                svi.optim = pyro.optim.Adam({"lr": 0.005})
            idx = torch.randperm(N, generator=g)[:4]
            svi.step(x[idx], idx)
    mean, cov = posterior(x, W, b, sigma)
    sd = torch.linalg.inv(cov).diagonal().rsqrt()
    q = vae.q(x, torch.arange(N))
    assert torch.allclose(q.mean, mean, atol=0.06)
    assert torch.allclose(q.stddev, sd.expand_as(mean), rtol=0.1)
