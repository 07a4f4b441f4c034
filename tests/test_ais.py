"""AIS, BDMC and the refined IS proposal against the linear-Gaussian model's exact answers."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from linear_gaussian import (ShiftedDiagonalGuide, exact_log_px, make_problem, make_vae,
                             posterior, sample_data)
from pvae.infer.annealing import schedule
from pvae.infer.hmc import Target, transition
from pvae.errors import ConfigError
from pvae.evaluate import ais, ais_log_likelihood, bdmc, importance_sampling, log_likelihood


@pytest.fixture(scope="module")
def problem():
    W, b, sigma = make_problem(z_dim=2, x_dim=5, sigma=0.5)
    guide = ShiftedDiagonalGuide(W, b, sigma, shift=0.3, widen=1.5)
    return W, b, sigma, make_vae(W, b, sigma, guide=guide)


def test_ais_is_within_002_nats_of_the_exact_log_px_with_a_poor_diagonal_guide(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 30)
    exact = exact_log_px(x, W, b, sigma)
    result = ais(vae.model, vae.guide, x, num_steps=200, num_chains=64, num_leapfrog=5)
    err = result.log_px - exact
    assert result.log_px.dtype == torch.float64 and result.log_px.shape == (30,)
    assert abs(float(err.mean())) < 0.02, float(err.mean())
    assert float(err.abs().max()) < 0.3
    is_err = log_likelihood(vae.model, vae.guide, x, num_samples=64) - exact
    assert float(err.abs().mean()) < 0.5 * float(is_err.abs().mean())  # 64 draws, no annealing
    assert 0.4 < float(result.accept_rate.mean()) < 0.99
    assert 0 < float(result.chain_stderr.mean()) < 0.1
    assert result.khat.shape == (30,) and math.isfinite(result.khat_max)
    m = result.to_metrics()
    assert m["ais_steps"] == 200 and m["ais_chains"] == 64 and m["ais_n_test"] == 30
    assert m["test_log_px_ais"] == pytest.approx(float(result.log_px.mean()))


def test_bdmc_brackets_the_exact_log_px_of_simulated_data(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 30)
    result = bdmc(vae.model, vae.guide, x, num_steps=100, num_chains=8, num_leapfrog=5)
    assert result.x.shape == x.shape and not torch.allclose(result.x, x)
    exact = exact_log_px(result.x, W, b, sigma)
    lower, upper = result.lower - exact, result.upper - exact
    se = lambda v: float(v.std() / math.sqrt(v.numel()))  # noqa: E731
    assert float(lower.mean()) <= 3 * se(lower) + 1e-3
    assert float(upper.mean()) >= -3 * se(upper) - 1e-3
    assert 0 <= float(result.gap.mean()) < 0.1
    m = result.to_metrics()
    assert m["bdmc_gap"] == pytest.approx(float(result.gap.mean()))
    assert {"bdmc_lower_stderr", "bdmc_upper_stderr", "bdmc_gap_stderr"} <= set(m)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_the_hmc_move_leaves_the_intermediate_gaussian_invariant(problem, beta):
    """f_β = q^(1−β) p^β is Gaussian here: start 4000 chains at its exact draws, move 20 times,
    compare the moments with the exact ones."""
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 2)
    m, cov = posterior(x, W, b, sigma)
    q = vae.q(x).base_dist
    prec_q = torch.diag_embed(q.scale.pow(-2))
    prec = (1 - beta) * prec_q + beta * torch.linalg.inv(cov)
    cov_b = torch.linalg.inv(prec)
    mean_b = (cov_b @ ((1 - beta) * prec_q @ q.loc.unsqueeze(-1)
                       + beta * torch.linalg.solve(cov, m.unsqueeze(-1)))).squeeze(-1)
    chains = 4000
    with torch.no_grad():
        target = Target(vae.model, vae.guide, (x, (), {}), -2, chains)
    z = mean_b + (torch.randn(chains, 2, 1, 2, dtype=x.dtype) @ torch.linalg.cholesky(cov_b)
                  .transpose(-1, -2)).squeeze(-2)
    state = (z, *target(z))
    for _ in range(20):
        state, prob = transition(target, state, beta, 0.5 * cov_b.diagonal(dim1=-2, dim2=-1)
                                  .sqrt(), 5)
    z = state[0]
    assert 0.5 < float(prob.mean()) < 1.0
    for i in range(2):
        sd = cov_b[i].diagonal().sqrt()
        assert ((z[:, i].mean(0) - mean_b[i]).abs() < 4 * sd / math.sqrt(chains) + 1e-3).all()
        assert torch.allclose(torch.cov(z[:, i].T), cov_b[i], atol=0.1 * float(sd.max()) ** 2)


def test_one_annealing_step_is_importance_sampling(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 7)
    pyro.set_rng_seed(3)
    one = ais_log_likelihood(vae.model, vae.guide, x, num_steps=1, num_chains=50)
    pyro.set_rng_seed(3)
    is_ = log_likelihood(vae.model, vae.guide, x, num_samples=50)
    assert torch.allclose(one, is_, atol=1e-10)


def test_the_log_joint_and_its_gradient_match_the_hand_written_density(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 3)
    with torch.no_grad():
        target = Target(vae.model, vae.guide, (x, (), {}), -2, 4)
    z = torch.randn(4, 3, 2, dtype=x.dtype, requires_grad=True)
    log_p, log_q, grad_p, grad_q = target(z)
    by_hand = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
               + dist.Normal(z @ W.T + b, sigma).log_prob(x).sum(-1))
    q = vae.q(x).base_dist
    q_hand = dist.Normal(q.loc, q.scale).log_prob(z).sum(-1)
    assert torch.allclose(log_p, by_hand.detach()) and torch.allclose(log_q, q_hand.detach())
    assert torch.allclose(grad_p, torch.autograd.grad(by_hand.sum(), z)[0])
    assert torch.allclose(grad_q, torch.autograd.grad(q_hand.sum(), z)[0])


def test_ais_on_two_latent_sites_where_q_of_the_top_depends_on_the_bottom():
    """z2 ~ N(0, I), z1 ~ N(A z2, τ²I), x ~ N(W z1 + b, σ²I): x ~ N(b, W(AAᵀ + τ²I)Wᵀ + σ²I)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 2, generator=g, dtype=torch.float64)
    W = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b, tau, sigma = torch.randn(5, generator=g, dtype=torch.float64), 0.6, 0.5
    cov1 = A @ A.T + tau**2 * torch.eye(3, dtype=torch.float64)
    prec1 = torch.linalg.inv(cov1) + W.T @ W / sigma**2
    post1 = torch.linalg.inv(prec1)
    post2 = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + A.T @ A / tau**2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ A.T, tau).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ W.T + b, sigma).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc1 = (x - b) @ W @ post1.T / sigma**2 + 0.3
            z1 = pyro.sample("z1", dist.Normal(loc1, 1.5 * post1.diagonal().sqrt()).to_event(1))
            pyro.sample("z2", dist.Normal(z1 @ A @ post2.T / tau**2,
                                          post2.diagonal().sqrt()).to_event(1))

    z2 = torch.randn(20, 2, generator=g, dtype=torch.float64)
    x = (z2 @ A.T + tau * torch.randn(20, 3, generator=g, dtype=torch.float64)) @ W.T + b \
        + sigma * torch.randn(20, 5, generator=g, dtype=torch.float64)
    exact = dist.MultivariateNormal(b, W @ cov1 @ W.T + sigma**2 * torch.eye(5)).log_prob(x)
    est = ais_log_likelihood(model, guide, x, num_steps=150, num_chains=16, num_leapfrog=5)
    assert abs(float((est - exact).mean())) < 0.05
    assert float((log_likelihood(model, guide, x, num_samples=16) - exact).mean()) < -0.2
    result = bdmc(model, guide, x, num_steps=20, num_chains=4, num_leapfrog=3)
    assert result.x.shape == x.shape and torch.isfinite(result.gap).all()


def test_the_refined_proposal_tightens_importance_sampling(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 20)
    exact = exact_log_px(x, W, b, sigma).numpy()
    enc = importance_sampling(vae.model, vae.guide, x, num_samples=100, progress=False)
    ref = importance_sampling(vae.model, vae.guide, x, num_samples=100, progress=False,
                              proposal="refined", host=vae,
                   refine_options=dict(max_steps=400, lr=0.05))
    assert ref.proposal == "refined" and ref.to_metrics()["eval_proposal"] == "refined"
    assert abs((ref.log_px - exact).mean()) < abs((enc.log_px - exact).mean())
    assert ref.ess.mean() > 2 * enc.ess.mean()
    assert ref.khat_frac_bad <= enc.khat_frac_bad


def test_schedules_run_from_zero_to_one_and_sigmoid_spends_more_steps_at_the_ends():
    lin, sig = schedule(100, "linear"), schedule(100, "sigmoid")
    for s in (lin, sig):
        assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()
    assert sig[1] < lin[1] and sig[-2] > lin[-2]


@pytest.mark.parametrize("bad, message", [
    (dict(num_steps=0), "num_steps"), (dict(num_chains=1.5), "num_chains"),
    (dict(num_leapfrog=-1), "num_leapfrog"), (dict(target_accept=1.0), "target_accept"),
    (dict(schedule="cosine"), "schedule"), (dict(chunk_size=0), "chunk_size")])
def test_bad_ais_settings_are_refused_by_name(problem, bad, message):
    W, b, sigma, vae = problem
    with pytest.raises(ConfigError, match=message):
        ais(vae.model, vae.guide, sample_data(W, b, sigma, 3), **{"num_steps": 3, **bad})


def test_the_refined_proposal_needs_a_vae_and_a_known_proposal(problem):
    W, b, sigma, vae = problem
    x = sample_data(W, b, sigma, 3)
    with pytest.raises(ConfigError, match="proposal must be one of"):
        importance_sampling(vae.model, vae.guide, x, num_samples=10, proposal="prior")
    with pytest.raises(ConfigError, match="host=vae"):
        importance_sampling(lambda x_: vae.model(x_), vae.guide, x, num_samples=10, proposal="refined")


def test_ais_scores_the_two_layer_vae_and_reduces_to_is_at_one_step():
    from pvae import build_vae

    vae = build_vae(stochastic_layers=2, z_dim=4, top_z_dim=2, hidden_dims=(16,),
                    top_hidden_dims=(8,))
    x = torch.bernoulli(torch.full((5, 784), 0.2, dtype=torch.float32),
                        generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(1)
    one = ais_log_likelihood(vae.model, vae.guide, x, num_steps=1, num_chains=30)
    pyro.set_rng_seed(1)
    assert torch.allclose(one, log_likelihood(vae.model, vae.guide, x, num_samples=30),
                          atol=1e-6)
    elbo = log_likelihood(vae.model, vae.guide, x, num_samples=1)
    annealed = ais(vae.model, vae.guide, x, num_steps=20, num_chains=4, num_leapfrog=3)
    assert annealed.log_weights.shape == (5, 4) and torch.isfinite(annealed.log_px).all()
    assert float(annealed.log_px.mean()) > float(elbo.mean()) + 1  # 4 annealed chains: tighter
    assert 0.3 < float(annealed.accept_rate.mean()) < 1


def test_ais_reads_nothing_back_from_the_device_per_step():
    """T = 20 and T = 40 read the device equally often (per pass, not per annealing step)."""
    from pvae import build_vae
    from reads import Reads

    vae = build_vae(z_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    counts = []
    for steps in (20, 40):
        with Reads() as reads:
            ais(vae.model, vae.guide, x, num_steps=steps, num_chains=3, num_leapfrog=2, host=vae)
        counts.append(reads.count)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("options", [dict(), dict(prior="flow", guide="iaf", likelihood="normal"),
                                     dict(prior="vamp", num_pseudo_inputs=3),
                                     dict(stochastic_layers=2, top_z_dim=2,
                                          top_hidden_dims=(4,))])
def test_ais_on_the_vaes_plain_program_gives_the_traced_programs_numbers(monkeypatch, options):
    """With host=vae the leapfrog densities come from the VAE's plain program (no Pyro trace
    per leapfrog step); the estimates equal those of the Pyro-traced pair."""
    import pvae.infer.annealing as annealing
    from pvae import build_vae

    vae = build_vae(z_dim=3, hidden_dims=(8,), **options)
    x = torch.rand(5, 784)
    x = torch.bernoulli(x) if vae.likelihood.data_kind == "binary" else x
    calls, plain_sites = [], vae.plain_sites
    vae.plain_sites = lambda *a, **k: (calls.append(1), plain_sites(*a, **k))[1]
    results = []
    for traced in (False, True):
        if traced:
            monkeypatch.setattr(annealing, "plain_twin", lambda *a: None)
        pyro.set_rng_seed(3)
        results.append(ais(vae.model, vae.guide, x, num_steps=12, num_chains=3, num_leapfrog=2,
                           host=vae))
    torch.testing.assert_close(results[0].log_weights, results[1].log_weights, rtol=1e-10,
                               atol=0)
    assert torch.isfinite(results[0].log_px).all() and len(calls) > 12 * 2


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_ais_with_the_compiled_log_joint_gives_the_plain_programs_numbers(backend):
    """``compile``: one graph per pass shape (6 chains and the pilot's 4, at 3 and 1 images),
    no graph break, the uncompiled plain program's estimates (float32 rounding
    under inductor's fused kernels)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from pvae import build_vae

    vae = build_vae(z_dim=3, hidden_dims=(8,), stochastic_layers=2, top_z_dim=2,
                    top_hidden_dims=(4,))
    x = torch.bernoulli(torch.rand(7, 784), generator=torch.Generator().manual_seed(0))
    results = []
    torch._dynamo.reset()
    counters.clear()
    for compile in (False, backend):
        pyro.set_rng_seed(3)
        results.append(ais(vae.model, vae.guide, x, num_steps=12, num_chains=6, num_leapfrog=2,
                           chunk_size=18, host=vae, compile=compile))  # passes of 3, 3, 1
    assert counters["stats"]["unique_graphs"] == 4 and not counters["graph_break"]
    rtol = 1e-12 if backend == "aot_eager" else 1e-5
    torch.testing.assert_close(results[1].log_weights, results[0].log_weights, rtol=rtol,
                               atol=rtol * 100)


def test_ais_compile_on_a_pair_without_a_plain_twin_runs_traced_with_a_notice(problem, caplog):
    import logging

    W, b, sigma, vae = problem  # no host given: the pair is any Pyro pair, no plain twin
    x = sample_data(W, b, sigma, 4)
    results = []
    for compile in (True, False):
        pyro.set_rng_seed(0)
        with caplog.at_level(logging.WARNING):
            results.append(ais(vae.model, vae.guide, x, num_steps=5, num_chains=2,
                               num_leapfrog=2, compile=compile).log_weights)
    assert caplog.text.count("traced by Pyro, uncompiled") == 1
    assert torch.equal(results[0], results[1])
