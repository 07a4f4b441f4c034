"""Objectives: β scales exactly the KL; the IWAE bound is per example and exact where it must be."""
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

from linear_gaussian import ShiftedDiagonalGuide, exact_log_px, make_problem, make_vae, sample_data
from pvae.errors import ConfigError
from pvae.infer.objectives import IWAE, OBJECTIVES, make_loss
from pvae.training.recipes import beta_at
from pvae.model.vae import build_vae


def _small_vae(beta=1.0, **kw):
    return build_vae(z_dim=3, hidden_dims=(8,), x_dim=6, beta=beta, **kw)


def _loss_at(vae, loss, x, seed=7):
    pyro.set_rng_seed(seed)
    return float(loss.loss(vae.model, vae.guide, x))


def _analytic_kl(vae, x):
    loc, scale = vae.q.encode(x)
    return float((0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum().detach())


@pytest.mark.parametrize("beta", [0.25, 2.0, 5.0])
def test_meanfield_beta_changes_the_loss_by_beta_minus_one_times_kl(beta):
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    vae = _small_vae()
    state = vae.state_dict()
    kl = _analytic_kl(vae, x)
    loss1 = _loss_at(vae, make_loss("meanfield"), x)
    vae_b = _small_vae(beta=beta)
    vae_b.load_state_dict(state)
    loss_b = _loss_at(vae_b, make_loss("meanfield"), x)
    assert kl > 0.1
    assert loss_b - loss1 == pytest.approx((beta - 1.0) * kl, rel=1e-5, abs=1e-4)


def test_beta_zero_leaves_only_the_reconstruction_term():
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    vae = _small_vae()
    kl = _analytic_kl(vae, x)
    loss1 = _loss_at(vae, make_loss("meanfield"), x)
    vae.beta = 0.0
    loss0 = _loss_at(vae, make_loss("meanfield"), x)
    pyro.set_rng_seed(7)
    z = vae.q(x).rsample()
    recon = -float(vae.likelihood(z).log_prob(x).sum().detach())
    assert loss0 == pytest.approx(recon, rel=1e-5)
    assert loss1 - loss0 == pytest.approx(kl, rel=1e-5)


def test_beta_at_ramps_linearly_from_zero_then_stays():
    assert beta_at(0, 2.0, 100) == 0.0
    assert beta_at(50, 2.0, 100) == pytest.approx(1.0)
    assert beta_at(100, 2.0, 100) == 2.0
    assert beta_at(10_000, 2.0, 100) == 2.0
    assert beta_at(0, 0.5, 0) == 0.5


def test_iwae_is_registered_and_make_loss_validates():
    assert set(OBJECTIVES) >= {"elbo", "meanfield", "iwae"}
    assert isinstance(make_loss("iwae", 4), IWAE) and make_loss("iwae", 4).num_particles == 4
    with pytest.raises(ConfigError, match="unknown loss"):
        make_loss("renyi")
    with pytest.raises(ConfigError, match="num_particles must be >= 1"):
        make_loss("iwae", 0)


def test_iwae_with_one_particle_is_the_elbo_for_the_same_draw():
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    vae = _small_vae()
    assert _loss_at(vae, make_loss("iwae", 1), x) == pytest.approx(
        _loss_at(vae, Trace_ELBO(), x), rel=1e-6)


@pytest.mark.parametrize("k", [1, 7])
def test_iwae_with_the_exact_posterior_is_exact_log_px_for_any_k(k):
    W, b, sigma = make_problem(z_dim=2, x_dim=5)
    x = sample_data(W, b, sigma, n=6)
    vae = make_vae(W, b, sigma)
    exact = float(exact_log_px(x, W, b, sigma).sum())
    assert -make_loss("iwae", k).loss(vae.model, vae.guide, x) == pytest.approx(exact, rel=1e-9)


def test_iwae_scales_a_subsampled_batch_by_n_over_b():
    W, b, sigma = make_problem(z_dim=2, x_dim=5)
    x = sample_data(W, b, sigma, n=3)
    vae = make_vae(W, b, sigma)
    vae.num_data = 12
    idx = torch.tensor([4, 0, 9])
    exact = float(exact_log_px(x, W, b, sigma).sum())
    loss = make_loss("iwae", 3).loss(vae.model, vae.guide, x, idx)
    assert -loss == pytest.approx(exact * 12 / 3, rel=1e-9)


def _particles(fn, k):
    """``fn`` with k vectorized draws in a plate at dim −2, as the IWAE loss draws them."""
    return pyro.plate("particles", k, dim=-2)(fn)


def _renyi(k):
    return RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)


def _worse_problem(n):
    W, b, sigma = make_problem(z_dim=2, x_dim=5)
    x = sample_data(W, b, sigma, n=n)
    return x, make_vae(W, b, sigma, guide=ShiftedDiagonalGuide(W, b, sigma)), (W, b, sigma)


def test_iwae_is_the_per_example_bound_from_its_log_weights():
    x, vae, problem = _worse_problem(4)
    k = 8
    pyro.set_rng_seed(3)
    lw, scale = IWAE(k).log_weights(vae.model, vae.guide, x)
    assert lw.shape == (k, 4) and scale == 1.0
    per_example = float((torch.logsumexp(lw, 0) - math.log(k)).sum())
    joint = float(torch.logsumexp(lw.sum(1), 0) - math.log(k))
    pyro.set_rng_seed(3)
    ours = -IWAE(k).loss(vae.model, vae.guide, x)
    assert ours == pytest.approx(per_example, rel=1e-9)
    assert joint < ours - 0.5 and ours < float(exact_log_px(x, *problem).sum())
    pyro.set_rng_seed(3)
    assert -_renyi(k).loss(vae.model, vae.guide, x) == pytest.approx(ours, rel=1e-9)


def test_iwae_keeps_the_subsample_scale_outside_the_logsumexp_unlike_renyi():
    x, vae, _ = _worse_problem(3)
    vae.num_data = 12
    idx = torch.tensor([4, 0, 9])
    k = 8
    pyro.set_rng_seed(3)
    lw, scale = IWAE(k).log_weights(vae.model, vae.guide, x, idx)
    assert scale == 4.0
    pyro.set_rng_seed(3)
    ours = -IWAE(k).loss(vae.model, vae.guide, x, idx)
    pyro.set_rng_seed(3)
    renyi = -_renyi(k).loss(vae.model, vae.guide, x, idx)
    scaled_outside = 4.0 * float((torch.logsumexp(lw, 0) - math.log(k)).sum())
    scaled_inside = float((torch.logsumexp(4.0 * lw, 0) - math.log(k)).sum())
    assert ours == pytest.approx(scaled_outside, rel=1e-9)
    assert renyi == pytest.approx(scaled_inside, rel=1e-9)
    assert renyi > ours + 1.0


def test_renyi_alpha_zero_becomes_a_joint_bound_when_a_site_leaves_the_plate():
    x, vae, _ = _worse_problem(4)
    k = 8

    def with_global(fn):
        def wrapped(*args):
            pyro.sample("g", pyro.distributions.Normal(0.0, 1.0))
            return fn(*args)
        return wrapped

    model, guide = with_global(vae.model), with_global(vae.guide)
    pyro.set_rng_seed(3)
    renyi = -_renyi(k).loss(model, guide, x)
    pyro.set_rng_seed(3)
    trace = poutine.trace(_particles(guide, k)).get_trace(x)
    pyro.set_rng_seed(3)
    mtrace, gtrace = IWAE(k)._get_trace(model, guide, (x,), {})
    mtrace.compute_log_prob()
    gtrace.compute_log_prob()
    lw = sum(mtrace.nodes[s]["log_prob"] for s in ("z", "x")) - gtrace.nodes["z"]["log_prob"]
    assert torch.equal(trace.nodes["z"]["value"], gtrace.nodes["z"]["value"])
    joint = float(torch.logsumexp(lw.sum(1), 0) - math.log(k))
    per_example = float((torch.logsumexp(lw, 0) - math.log(k)).sum())
    assert renyi == pytest.approx(joint, rel=1e-9)
    assert per_example > joint + 0.5
    with pytest.raises(ConfigError, match="exactly one"):
        IWAE(k).loss(model, guide, x)


def test_iwae_beta_weights_the_prior_and_guide_terms():
    W, b, sigma = make_problem(z_dim=2, x_dim=5)
    x = sample_data(W, b, sigma, n=4)
    vae = make_vae(W, b, sigma)
    pyro.set_rng_seed(5)
    z = poutine.trace(_particles(vae.guide, 3)).get_trace(x).nodes["z"]["value"]
    log_px = exact_log_px(x, W, b, sigma)
    log_pz = vae.prior().log_prob(z)
    log_q = vae.q(x).log_prob(z)
    log_px_given_z = vae.likelihood(z).log_prob(x)
    for beta, expected in [(2.0, log_px + log_pz - log_q), (0.0, log_px_given_z),
                           (0.5, log_px_given_z + 0.5 * (log_pz - log_q))]:
        vae.beta = beta
        pyro.set_rng_seed(5)
        lw, _ = IWAE(3).log_weights(vae.model, vae.guide, x)
        torch.testing.assert_close(lw, expected)


def test_iwae_trains_with_svi():
    x = torch.bernoulli(torch.full((8, 6), 0.3))
    vae = _small_vae()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), loss=make_loss("iwae", 4))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    first = svi.step(x)
    losses = [svi.step(x) for _ in range(15)]
    after = vae.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("q.net.body.0.weight",
                                                              "likelihood.decoder.0.weight"))
    assert math.isfinite(first) and sum(losses[-5:]) / 5 < first


def test_iwae_refuses_a_guide_without_rsample():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", pyro.distributions.Bernoulli(0.5), obs=None)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", pyro.distributions.Bernoulli(0.3))

    with pytest.raises(ConfigError, match="reparameterizable"):
        IWAE(2).loss(model, guide, torch.zeros(3, 1))
