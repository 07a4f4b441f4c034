"""The (K, B) importance log-weights against the linear-Gaussian VAE's exact answers.

p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I). With the exact posterior as guide,
log p(x, z) − log q(z|x) = log p(x) for every z; with the "z" site scaled by β the scaled
weights are log p(x|z) + β·(log p(z) − log q(z|x)); and ∂/∂m of a weight of the local
guide N(m, diag s²) at z = m + s·ε is ∇_z log p(x, z) = −z + Wᵀ(x − Wz − b)/σ².
"""
import ast
import math
import re
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import exact_log_px, make_problem, make_vae, posterior, sample_data

from pvae.errors import DataError
from pvae.evaluate import importance_sampling, log_likelihood
from pvae.infer.localfit import local_guide
from pvae.infer.logweights import Structure, check_pair, log_weights

PVAE = Path(__file__).resolve().parent.parent / "pvae"


@pytest.fixture
def problem():
    W, b, sigma = make_problem(z_dim=2, x_dim=5)
    x = sample_data(W, b, sigma, n=6)
    return W, b, sigma, x, exact_log_px(x, W, b, sigma)


def recording(guide, seen):
    """``guide`` that also keeps the z it returns."""

    def run(*args, **kwargs):
        z = guide(*args, **kwargs)
        seen.append(z)
        return z

    return run


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("chunk", [None, 5, 1])
def test_exact_posterior_gives_log_px_for_every_draw(problem, scaled, chunk):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    lw = log_weights(vae.model, vae.guide, x, 7, chunk_size=chunk, scaled=scaled)
    assert lw.shape == (7, 6) and lw.dtype == torch.float64
    torch.testing.assert_close(lw, exact.expand(7, 6), rtol=0, atol=1e-9)


@pytest.mark.parametrize("beta", [0.5, 2.0, 0.0])
def test_scaled_weights_carry_beta_and_unscaled_ignore_it(problem, beta):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    vae.beta = beta
    structure = check_pair(vae.model, vae.guide, x)
    seen = []
    lw = log_weights(vae.model, recording(vae.guide, seen), x, 4, scaled=True,
                     structure=structure)
    z = seen[-1]
    log_pxz = vae.likelihood(z).log_prob(x)
    log_pz, log_q = vae.prior().log_prob(z), vae.q(x).log_prob(z)
    assert z.shape == (4, 6, 2)
    torch.testing.assert_close(lw, log_pxz + beta * (log_pz - log_q), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_weights(vae.model, vae.guide, x, 4),
                               exact.expand(4, 6), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scaled", [False, True])
def test_the_subsample_scale_is_removed(problem, scaled):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    vae.num_data = 40
    idx = torch.tensor([3, 17, 0, 25, 8, 39])
    lw = log_weights(vae.model, vae.guide, x, 3, idx, chunk_size=4, scaled=scaled)
    torch.testing.assert_close(lw, exact.expand(3, 6), rtol=0, atol=1e-9)


def test_a_scale_and_mask_of_the_users_own_apply_only_when_scaled():
    """x_b ~ N(z_b, 1), z_b ~ N(0, 1), guide N(x_b/2, ½) = the posterior; x's site scaled
    by 3 and its second example masked out."""
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    mask = torch.tensor([True, False])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            with pyro.poutine.scale(scale=3.0), pyro.poutine.mask(mask=mask):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    seen = []

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
            seen.append(z)

    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    torch.testing.assert_close(log_weights(model, guide, x, 5), exact.expand(5, 2))
    lw = log_weights(model, guide, x, 5, scaled=True)
    z = seen[-1]
    expected = (3.0 * mask * dist.Normal(z, 1.0).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z)
                - dist.Normal(x / 2, math.sqrt(0.5)).log_prob(z))
    torch.testing.assert_close(lw, expected)


def test_gradients_reach_the_guides_parameters(problem):
    W, b, sigma, x, _ = problem
    vae = make_vae(W, b, sigma)
    loc = torch.zeros(6, 2, dtype=torch.float64, requires_grad=True)
    scale = torch.full((6, 2), 0.7, dtype=torch.float64, requires_grad=True)
    seen = []
    idx = torch.arange(6)
    lw = log_weights(lambda x_, idx_: vae.model(x_), recording(local_guide(loc, scale), seen), x,
                     8, idx, chunk_size=20)
    assert lw.shape == (8, 6) and lw.requires_grad
    grad_loc, grad_scale = torch.autograd.grad(lw.sum(), [loc, scale])
    z = torch.cat([s.detach() for s in seen[1:]], dim=1)  # after the trial run: 3 passes of 2
    assert [tuple(s.shape) for s in seen] == [(2, 2)] + [(8, 2, 2)] * 3
    score = -z + (x - z @ W.T - b) @ W / sigma**2
    torch.testing.assert_close(grad_loc, score.sum(0))
    assert bool(torch.isfinite(grad_scale).all()) and float(grad_scale.abs().sum()) > 0


def test_a_checked_structure_skips_the_trial_run(problem):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    calls = []

    def guide(x_, *args):
        calls.append(x_.shape[0])
        return vae.guide(x_, *args)

    log_weights(vae.model, guide, x, 3)
    assert calls == [2, 6]
    structure = check_pair(vae.model, guide, x)
    assert structure == Structure(particle_dim=-2)
    calls.clear()
    log_weights(vae.model, guide, x, 3, structure=structure)
    assert calls == [6]


def test_the_users_own_exception_surfaces_as_itself(problem):
    W, b, sigma, x, _ = problem
    vae = make_vae(W, b, sigma)

    def broken(x, idx=None):
        raise KeyError("mine")

    with pytest.raises(KeyError) as err:
        log_likelihood(vae.model, broken, x, num_samples=4)
    assert err.value.args == ("mine",) and type(err.value) is KeyError
    assert any("x[:2]" in note for note in getattr(err.value, "__notes__", ["x[:2]"]))

    def refuses(x, idx=None):
        raise ValueError("this guide refuses on Tuesdays")

    with pytest.raises(ValueError, match="Tuesdays") as err:
        importance_sampling(vae.model, refuses, x, num_samples=4, progress=False)
    assert not isinstance(err.value, DataError)
    with pytest.raises(DataError, match="leading dim"):
        log_likelihood(lambda x: vae.model(x.T), lambda x: vae.guide(x.T), x.T, num_samples=4)


def test_extra_positional_arguments_reach_the_model_and_guide(problem):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    vae.num_data = 100
    idx = torch.arange(50, 56)
    est = log_likelihood(vae.model, vae.guide, x, idx, num_samples=5, chunk_size=10)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)
    res = importance_sampling(vae.model, vae.guide, x, idx, num_samples=5, batch_size=4, progress=False)
    torch.testing.assert_close(torch.as_tensor(res.log_px), exact, rtol=0, atol=1e-9)


def test_a_local_fit_in_passes_reads_each_examples_own_rows(problem):
    """L[q] = log p(x) − KL(q ‖ p(z|x)) for q = N(m + 0.1, diag s²), s the posterior's
    marginal sds, with the ELBO's 4000 draws per example taken 500 at a time, one example
    per pass."""
    from pvae.infer.amortization import fit_local

    W, b, sigma, x, exact = problem
    mean, cov = posterior(x, W, b, sigma)
    sd = cov.diagonal().sqrt().expand_as(mean)
    fit = fit_local(make_vae(W, b, sigma).model, x, init=(mean + 0.1, sd), lr=1e-9,
                    max_steps=1, window=1, elbo_samples=4000, chunk_size=500, progress=False)
    q = dist.MultivariateNormal(mean + 0.1, scale_tril=torch.diag_embed(sd))
    kl = torch.distributions.kl_divergence(q, dist.MultivariateNormal(mean, cov))
    assert float(kl.min()) > 0.2
    torch.testing.assert_close(fit.elbo, exact - kl, rtol=0, atol=0.05)  # 4 standard errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_vae_on_cuda_scores_a_cpu_x(problem):
    from pvae.infer.amortization import fit_local

    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma).to("cuda")
    est = log_likelihood(vae.model, vae.guide, x, num_samples=5)
    assert est.device == x.device
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-8)
    res = importance_sampling(vae.model, vae.guide, x, num_samples=5, progress=False)
    torch.testing.assert_close(torch.as_tensor(res.log_px), exact, rtol=0, atol=1e-8)
    fit = fit_local(vae.model, x, host=vae, max_steps=20, window=10, elbo_samples=10, progress=False)
    assert fit.loc.device.type == "cuda" and bool(torch.isfinite(fit.elbo).all())


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_the_log_weights_and_local_fits_import_no_model_code():
    allowed = {"logweights": {"torch", "pyro", "..errors", ".host"},
               "localfit": {"torch", "pyro", "..progress", "..checks", "..distributions", "..errors",
                            ".host", ".logweights", "time"}}
    for name, ok in allowed.items():
        for module, _ in _imports(PVAE / "infer" / f"{name}.py"):
            root = module if module.startswith(".") else module.split(".")[0]
            assert root in ok | {"__future__", "re", "math", "dataclasses", "typing", "itertools"}, \
                (name, module)
