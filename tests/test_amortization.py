"""Local fits, refinement and the gap report against the linear-Gaussian VAE's exact answers.

For p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) every quantity is known: log p(x), the
posterior N(m, Σ), the mean-field optimum N(m, diag 1/diag(Σ⁻¹)), and for any Gaussian q
the exact ELBO L[q] = log p(x) − KL(q ‖ p(z|x)).
"""
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import (ExactPosteriorGuide, ShiftedDiagonalGuide, exact_log_px,
                             make_problem, make_vae, posterior, sample_data)
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from pvae.infer.amortization import GapReport, fit_local, gap_report, refine
from pvae.errors import CheckpointError, ConfigError, DataError
from pvae.model.guides import GUIDES, SemiAmortizedGuide
from pvae.model.vae import build_vae

Z, X, B = 2, 5, 6
FIT = dict(num_particles=128, lr=0.01, max_steps=3000, window=50, patience=5,
           elbo_samples=4000, progress=False)


@pytest.fixture(scope="module")
def problem():
    W, b, sigma = make_problem(z_dim=Z, x_dim=X)
    x = sample_data(W, b, sigma, B)
    mean, cov = posterior(x, W, b, sigma)
    mf_sd = torch.linalg.inv(cov).diagonal().rsqrt().expand_as(mean)
    return W, b, sigma, x, mean, cov, mf_sd


def kl_to_posterior(loc, scale, mean, cov):
    """KL(N(loc, diag scale²) ‖ N(mean, cov)) per row, in closed form."""
    q = MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
    return kl_divergence(q, MultivariateNormal(mean, covariance_matrix=cov))


class MeanFieldGuide(nn.Module):
    """An encoder that outputs exactly the mean-field optimum N(m, diag 1/diag(Σ⁻¹))."""

    amortized = True
    uses_model = False

    def __init__(self, W, b, sigma):
        super().__init__()
        self.W, self.b, self.sigma, self.z_dim = W, b, sigma, W.shape[1]

    def forward(self, x, idx=None):
        mean, cov = posterior(x, self.W, self.b, self.sigma)
        return dist.Normal(mean, torch.linalg.inv(cov).diagonal().rsqrt().expand_as(mean)
                           ).to_event(1)


@pytest.fixture(scope="module")
def prior_fit(problem):
    """q* fitted from N(0, I) through the plain model function (no encoder involved)."""
    W, b, sigma, x, *_ = problem
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma))
    pyro.set_rng_seed(0)
    return fit_local(vae.model, x, init="prior", **FIT)


def test_fit_local_reaches_the_mean_field_optimum(problem, prior_fit):
    *_, mean, cov, mf_sd = problem
    assert prior_fit.converged and prior_fit.steps < FIT["max_steps"]
    assert torch.allclose(prior_fit.loc, mean, atol=0.02)
    assert torch.allclose(prior_fit.scale, mf_sd, rtol=0.02)


def test_local_elbo_is_log_px_minus_kl(problem, prior_fit):
    W, b, sigma, x, mean, cov, mf_sd = problem
    log_px = exact_log_px(x, W, b, sigma)
    kl_fit = kl_to_posterior(prior_fit.loc, prior_fit.scale, mean, cov)
    kl_opt = kl_to_posterior(mean, mf_sd, mean, cov)
    assert bool((prior_fit.elbo <= log_px + 0.005).all())
    assert torch.allclose(log_px - prior_fit.elbo, kl_fit, atol=0.005)
    assert bool((kl_fit >= kl_opt - 1e-12).all()) and bool((kl_fit - kl_opt < 2e-3).all())
    assert float(kl_opt.min()) > 1e-3


@pytest.mark.parametrize("kind", ["shifted", "meanfield", "exact"])
def test_gap_report_matches_closed_form_gaps(problem, kind):
    W, b, sigma, x, mean, cov, mf_sd = problem
    guide = {"shifted": ShiftedDiagonalGuide, "meanfield": MeanFieldGuide,
             "exact": ExactPosteriorGuide}[kind](W, b, sigma)
    vae = make_vae(W, b, sigma, guide)
    report = gap_report(vae, x, num_samples=2000, log_px_proposal="local", **FIT)
    log_px = exact_log_px(x, W, b, sigma)
    kl_opt = kl_to_posterior(mean, mf_sd, mean, cov)
    q = guide(x)
    kl_q = (kl_divergence(MultivariateNormal(q.mean, scale_tril=q.scale_tril),
                          MultivariateNormal(mean, covariance_matrix=cov))
            if kind == "exact" else kl_to_posterior(q.mean, q.stddev, mean, cov))
    mc = 0.01 + 0.05 * float(kl_q.max())
    assert torch.allclose(report.log_px, log_px, atol=0.01)
    assert torch.allclose(report.elbo_amortized, log_px - kl_q, atol=mc)
    assert torch.allclose(report.approximation_gap, kl_opt, atol=0.01)
    assert torch.allclose(report.amortization_gap, kl_q - kl_opt, atol=mc)
    assert float((report.amortization_gap - kl_q + kl_opt).mean().abs()) < mc / 2
    gap = report.to_metrics()["amortization_gap"]
    if kind == "shifted":
        assert gap > 1.0
    elif kind == "meanfield":
        assert abs(gap) < 0.005
    else:
        assert gap == pytest.approx(-float(kl_opt.mean()), abs=0.005) and gap < 0


def test_gap_report_json_and_mixture_proposal(problem):
    W, b, sigma, x, *_ = problem
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma))
    report = gap_report(vae, x, n=4, num_samples=2000, num_particles=8, lr=0.05, max_steps=300,
                        window=20, patience=3, elbo_samples=100, progress=False)
    assert isinstance(report, GapReport) and report.n == 4
    assert report.log_px_proposal == "mixture"
    log_px = exact_log_px(x[:4], W, b, sigma)
    assert torch.allclose(report.log_px, log_px, atol=0.05)
    assert float((report.log_px - log_px).mean().abs()) < 0.02
    assert report.log_px_amortized.shape == (4,)
    out = report.to_metrics()
    for key in ("log_px", "elbo_local", "elbo_amortized", "approximation_gap",
                "amortization_gap"):
        values = getattr(report, key)
        assert out[key] == pytest.approx(float(values.mean()))
        assert out[f"{key}_stderr"] == pytest.approx(float(values.std() / 2))
    assert out["approximation_gap"] + out["amortization_gap"] == pytest.approx(
        out["log_px"] - out["elbo_amortized"])
    assert out["seconds_per_example_local"] > 0 and out["seconds_per_example_amortized"] > 0


def test_fit_local_leaves_the_decoder_alone():
    vae = build_vae(z_dim=2, x_dim=6, hidden_dims=(8,))
    x = (torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    fit = fit_local(vae.model, x, host=vae, num_particles=4, lr=0.05, max_steps=40, window=10, patience=2,
                    elbo_samples=50, progress=False)
    assert fit.loc.shape == (5, 2) and bool(torch.isfinite(fit.elbo).all())
    for name, p in vae.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None and p.requires_grad


def test_refine_moves_a_bad_encoder_toward_the_optimum(problem):
    W, b, sigma, x, mean, cov, mf_sd = problem
    guide = ShiftedDiagonalGuide(W, b, sigma)
    vae = make_vae(W, b, sigma, guide)
    loc, scale = refine(vae, x, steps=100, lr=0.05, num_particles=16)
    q = guide(x)
    kl_before = kl_to_posterior(q.mean, q.stddev, mean, cov)
    kl_after = kl_to_posterior(loc, scale, mean, cov)
    assert bool((kl_after < 0.25 * kl_before).all())


def test_semi_amortized_guide_refines_and_trains_the_encoder(problem):
    W, b, sigma, x, mean, cov, _ = problem
    assert GUIDES["semi"] is SemiAmortizedGuide
    guide = SemiAmortizedGuide(z_dim=Z, x_dim=X, hidden_dims=(8,), refine_steps=30,
                               refine_lr=0.1, refine_particles=8).double()
    with pytest.raises(ConfigError, match="bind"):
        guide(x)  # on its own it has no model to refine against
    vae = make_vae(W, b, sigma, guide)  # the VAE binds it to its prior and likelihood
    loc0, scale0 = vae.q.encode(x)
    q = vae.q(x)
    assert bool((kl_to_posterior(q.mean, q.stddev, mean, cov)
                 < kl_to_posterior(loc0, scale0, mean, cov)).all())
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    grads = [p.grad for p in vae.q.encoder.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    vae.q.refine_steps = 0
    plain = vae.q(x)
    assert torch.equal(plain.mean, loc0) and torch.equal(plain.stddev, scale0)


def test_semi_guide_builds_by_name():
    vae = build_vae(guide="semi", z_dim=2, x_dim=6, hidden_dims=(8,), refine_steps=2)
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert torch.isfinite(loss) and vae.q.refine_steps == 2
    assert all(p.grad is not None for p in vae.likelihood.parameters())


@pytest.mark.parametrize("bad", [dict(max_steps=0), dict(patience=0), dict(window=-1),
                                 dict(num_particles=0), dict(elbo_samples=0),
                                 dict(init="posterior")])
def test_fit_local_rejects_bad_settings(problem, bad):
    W, b, sigma, x, *_ = problem
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma))
    with pytest.raises(ConfigError):
        fit_local(vae.model, x, host=vae, **{"progress": False, **bad})


def test_bad_data_and_bad_requests(problem):
    W, b, sigma, x, *_ = problem
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma))
    with pytest.raises(DataError, match="only 6"):
        gap_report(vae, x, n=7, progress=False)
    with pytest.raises(DataError, match="shape"):
        fit_local(vae.model, x[:, :3], host=vae, progress=False)
    with pytest.raises(ConfigError):
        refine(vae, x, steps=0)
    local = build_vae(guide="local", num_data=10, z_dim=2, x_dim=6, hidden_dims=(8,))
    xb = torch.ones(3, 6)
    with pytest.raises(ConfigError, match="'amortized'"):
        gap_report(local, xb, progress=False, log_px_proposal="amortized")
    with pytest.raises(ConfigError, match="init='prior'"):
        fit_local(local.model, xb, host=local, init="encoder", progress=False)


def test_missing_checkpoint(tmp_path):
    import pvae
    from pvae.runs.cli import main

    with pytest.raises(CheckpointError):
        pvae.load(tmp_path / "nope.pt")
    assert main(["gap", "--checkpoint", str(tmp_path / "nope.pt"), "--out",
                 str(tmp_path / "out")]) == 2


def _trained_iaf(x):
    pyro.set_rng_seed(0)
    vae = build_vae(guide="iaf", z_dim=3, hidden_dims=(16,), x_dim=x.shape[1], flow_steps=2)
    from pvae import fit

    fit(vae, x, epochs=3, batch_size=20, lr=1e-2, seed=0, progress=False, device="cpu")
    return vae


def test_the_gap_of_a_flow_guide_fits_q_star_in_the_guides_own_family():
    """q* = f(N(m, diag s²)) with the guide's own flow f, started at the guide's base (m, s):
    the amortized q(z|x) is a member, so L[q] <= L[q*] (a diagonal q* need not reach L[q])."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(1, 12).expand(60, 12))
    vae = _trained_iaf(x)
    report = gap_report(vae, x[:6], num_samples=200, elbo_samples=400, max_steps=150,
                        window=25, lr=1e-2, num_particles=8, progress=False)
    assert report.local_family == "flow"
    s = report.to_metrics()
    assert s["local_family_description"] == "the guide's flow of a diagonal Normal"
    for gap in ("amortization_gap", "approximation_gap"):  # paired over the same images
        assert s[gap] > -3 * s[f"{gap}_stderr"] and s[f"{gap}_stderr"] < 0.2, (gap, s)
    fit0 = fit_local(vae.model, x[:2], host=vae, max_steps=100, window=10, max_seconds=0.0, progress=False)
    assert fit0.steps == 1 and not fit0.converged and fit0.family == "flow"
    mlp = build_vae(z_dim=3, hidden_dims=(8,), x_dim=12)
    assert fit_local(mlp.model, x[:2], host=mlp, max_steps=3, window=1, progress=False).family == "normal"
