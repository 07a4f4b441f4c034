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


def test_a_model_without_encoder_is_scored_on_new_data_by_fits_that_reach_the_optimum():
    """On new data the local proposal fits q*(z_n) from N(0, I): it reaches the mean-field
    optimum (mean m, variance 1/diag Σ⁻¹), its L[q*] is log p(x) − KL(q* ‖ p(z|x)), the IS
    estimate with ½q* + ½t₃(q*) is the exact log p(x), and so is AIS started from q*."""
    from linear_gaussian import exact_log_px

    from pvae import EvalConfig
    from pvae.evaluate import importance_sampling
    from pvae.runs.evaluation import estimate

    W, b, sigma = make_problem(z_dim=Z, x_dim=X)
    vae = local_vae(W, b, sigma)
    x = sample_data(W, b, sigma, 6, seed=7)  # images the guide never saw
    pyro.set_rng_seed(0)
    res = importance_sampling(vae.model, vae.guide, x, num_samples=4000, proposal="local",
                              host=vae, progress=False, refine_options=dict(
                                  lr=0.05, max_steps=3000, num_particles=32, elbo_samples=4000))
    mean, cov = posterior(x, W, b, sigma)
    sd = torch.linalg.inv(cov).diagonal().rsqrt().expand_as(mean)
    torch.testing.assert_close(res.fit.loc, mean, rtol=0, atol=0.03)
    torch.testing.assert_close(res.fit.scale, sd, rtol=0.05, atol=0)
    exact = exact_log_px(x, W, b, sigma).numpy()
    q = torch.distributions.MultivariateNormal(mean, scale_tril=torch.diag_embed(sd))
    kl = torch.distributions.kl_divergence(q, torch.distributions.MultivariateNormal(mean, cov))
    assert float(kl.min()) > 0  # the mean-field family misses the posterior's correlation
    assert abs(res.elbo - (exact - kl.numpy())).max() < 0.05
    assert abs(res.log_px - exact).max() < 0.03 and res.proposal == "local"
    config = EvalConfig(ais_steps=100, ais_chains=16, ais_leapfrog=5, local_lr=0.05)
    annealed = estimate("ais", vae, x, config)
    assert abs(annealed.log_px.numpy() - exact).max() < 0.05
    with pytest.raises(ConfigError, match="trained without one"):
        estimate("is", vae, x, EvalConfig(proposal="refined"))
    with pytest.raises(ConfigError, match="BDMC"):
        estimate("bdmc", vae, x, config)
