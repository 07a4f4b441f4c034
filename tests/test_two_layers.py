"""Two stochastic layers: z2 ~ N(0, I), z ~ p(z|z2), x ~ p(x|z), guided by q(z|x) q(z2|z).

The analytic truth is the two-layer linear-Gaussian model: z2 ~ N(0, I), z|z2 ~ N(A z2 + c,
s²I), x|z ~ N(Wz + b, σ²I), whose marginal x ~ N(Wc + b, W(AAᵀ + s²I)Wᵀ + σ²I) is exact."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from linear_gaussian import LinearGaussianLikelihood
from pvae import fit
from pvae.training import checkpoint
from pvae.errors import ConfigError
from pvae.evaluate import log_likelihood
from pvae.model.priors import StandardNormal
from pvae.model.vae import VAE, VAEConfig, build_vae

TINY = dict(z_dim=4, top_z_dim=2, hidden_dims=(8,), top_hidden_dims=(5,), x_dim=6)


def gaussian_posterior(prior_mean, prior_cov, W, y, noise):
    """p(u|y) for u ~ N(prior_mean, prior_cov), y|u ~ N(W u, noise² I): (mean (B, d), cov)."""
    precision = torch.linalg.inv(prior_cov) + W.T @ W / noise**2
    cov = torch.linalg.inv(precision)
    mean = (prior_mean @ torch.linalg.inv(prior_cov).T + y @ W / noise**2) @ cov.T
    return mean, cov


class LinearUpper(nn.Module):
    """p(z|z2) = N(A z2 + c, s²I); q(z2|z) = the exact p(z2|z), shifted by ``shift``."""

    def __init__(self, A, c, s, shift=0.0):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("c", c)
        self.s, self.shift = float(s), float(shift)
        self.z_dim, self.top_z_dim = A.shape

    def conditional(self, z2):
        return dist.Normal(z2 @ self.A.T + self.c, self.s).to_event(1)

    def posterior(self, z):
        eye = torch.eye(self.top_z_dim, dtype=z.dtype)
        mean, cov = gaussian_posterior(torch.zeros_like(self.c[:self.top_z_dim]), eye, self.A,
                                       z - self.c, self.s)
        return dist.MultivariateNormal(mean + self.shift, scale_tril=torch.linalg.cholesky(cov))


class MarginalGuide(nn.Module):
    """q(z|x) = the exact p(z|x) of the two-layer model (z's marginal prior is Gaussian)."""

    amortized, uses_model = True, False

    def __init__(self, A, c, s, W, b, sigma):
        super().__init__()
        self.A, self.c, self.s, self.W, self.b, self.sigma = A, c, s, W, b, sigma
        self.z_dim = A.shape[0]

    def forward(self, x, idx=None):
        prior_cov = self.A @ self.A.T + self.s**2 * torch.eye(self.z_dim, dtype=x.dtype)
        mean, cov = gaussian_posterior(self.c, prior_cov, self.W, x - self.b, self.sigma)
        return dist.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov))


def linear_problem(shift=0.0):
    g = torch.Generator().manual_seed(0)
    z_dim, top, x_dim = 3, 2, 5
    A = torch.randn(z_dim, top, generator=g, dtype=torch.float64)
    c = torch.randn(z_dim, generator=g, dtype=torch.float64)
    W = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
    b = torch.randn(x_dim, generator=g, dtype=torch.float64)
    s, sigma = 0.7, 0.5
    vae = VAE(StandardNormal(top).double(), LinearGaussianLikelihood(W, b, sigma),
              MarginalGuide(A, c, s, W, b, sigma), x_dim=x_dim, upper=LinearUpper(A, c, s, shift))
    eye = torch.eye(max(z_dim, x_dim), dtype=A.dtype)
    cov = W @ (A @ A.T + s**2 * eye[:z_dim, :z_dim]) @ W.T + sigma**2 * eye[:x_dim, :x_dim]
    marginal = dist.MultivariateNormal(W @ c + b, covariance_matrix=cov)
    return vae, marginal


def test_is_estimate_is_exact_with_the_exact_two_layer_posterior():
    vae, marginal = linear_problem()
    pyro.set_rng_seed(0)
    x = marginal.sample((7,))
    for k in (1, 10):
        lp = log_likelihood(vae.model, vae.guide, x, num_samples=k)
        torch.testing.assert_close(lp, marginal.log_prob(x), atol=1e-8, rtol=1e-10)


def test_is_estimate_rises_to_the_exact_log_px_with_a_worse_top_guide():
    vae, marginal = linear_problem(shift=0.2)
    pyro.set_rng_seed(1)
    x = marginal.sample((20,))
    exact = marginal.log_prob(x)
    elbo = log_likelihood(vae.model, vae.guide, x, num_samples=1)
    many = log_likelihood(vae.model, vae.guide, x, num_samples=4000)
    gap_1, gap_k = float((exact - elbo).mean()), float((exact - many).mean())
    assert gap_1 > 0.1
    assert -0.01 < gap_k < 0.05 * gap_1


def test_beta_scales_both_latent_sites_in_model_and_guide():
    vae = build_vae(stochastic_layers=2, beta=0.25, **TINY)
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    scales = {(t, n): s["scale"] for t, tr in (("q", guide), ("p", model))
              for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"}
    assert scales == {("q", "z"): 0.25, ("q", "z2"): 0.25, ("p", "z"): 0.25, ("p", "z2"): 0.25,
                      ("p", "x"): 1.0}
    assert model.nodes["z2"]["fn"].event_shape == (2,)
    assert model.nodes["z"]["fn"].event_shape == (4,)


def test_the_paper_sizes_and_the_prior_of_the_top_layer():
    vae = build_vae(stochastic_layers=2, z_dim=100)
    assert vae.z_dim == 100 and vae.prior.z_dim == 50
    widths = {side: [m.out_features for m in getattr(vae.upper, side).net.body
                     if isinstance(m, nn.Linear)] for side in ("p", "q")}
    assert widths == {"p": [100, 100, 200], "q": [100, 100, 100]}
    assert vae.sample(3).shape == (3, 784)
    flow = build_vae(stochastic_layers=2, prior="flow", **TINY)
    assert flow.prior.z_dim == 2 and flow.sample(2).shape == (2, 6)


@pytest.mark.parametrize("kw, message", [
    (dict(prior="vamp"), "prior 'vamp' cannot be used with two stochastic layers"),
    (dict(guide="local", num_data=5), "guide 'local' cannot be used with two stochastic layers"),
    (dict(guide="semi"), "guide 'semi' cannot be used with two stochastic layers"),
    (dict(stochastic_layers=3), "unknown stochastic_layers 3; choose one of: 1, 2"),
    (dict(top_z_dim=0), "top_z_dim must be at least 1"),
])
def test_parts_two_layers_cannot_use_are_refused_by_name(kw, message):
    with pytest.raises(ConfigError, match=message):
        build_vae(**{**TINY, "stochastic_layers": 2, **kw})


def test_a_trained_two_layer_vae_round_trips_through_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(40, 6)
    pyro.set_rng_seed(0)
    vae = build_vae(stochastic_layers=2, **TINY)
    state = fit(vae, x, epochs=2, batch_size=10, out_dir=tmp_path, seed=0, progress=False,
                device="cpu")
    assert state.epoch == 2 and math.isfinite(state.history[-1].train_elbo)
    loaded = checkpoint.load(tmp_path / "checkpoint.pt")
    assert loaded.config == vae.config and loaded.upper is not None
    xb = torch.bernoulli(x[:5])
    pyro.set_rng_seed(3)
    a = log_likelihood(vae.model, vae.guide, xb, num_samples=20)
    pyro.set_rng_seed(3)
    b = log_likelihood(loaded.model, loaded.guide, xb, num_samples=20)
    torch.testing.assert_close(a, b)


def test_gap_report_refuses_two_layers():
    from pvae.infer.amortization import gap_report

    vae = build_vae(stochastic_layers=2, **TINY)
    with pytest.raises(ConfigError, match="two"):
        gap_report(vae, torch.bernoulli(torch.full((2, 6), 0.5)))


def test_one_layer_configs_are_unchanged():
    c = VAEConfig()
    assert c.stochastic_layers == 1 and build_vae(z_dim=3, hidden_dims=(4,), x_dim=6).upper is None
