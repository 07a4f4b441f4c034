"""The importance-sampled log p(x) estimator against the linear-Gaussian VAE's exact answers."""
import json
import logging
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import (ShiftedDiagonalGuide, exact_log_px, make_problem, make_vae,
                             sample_data)

from pvae.errors import ConfigError, DataError, PvaeError
from pvae.evaluate import EvalResult, importance_sampling, log_likelihood, psis_khat
from pvae.model.vae import build_vae


@pytest.fixture(scope="module")
def problem():
    W, b, sigma = make_problem(z_dim=2, x_dim=5, sigma=0.5)
    x = sample_data(W, b, sigma, 200)
    return W, b, sigma, x, exact_log_px(x, W, b, sigma)


def shifted(W, b, sigma, **kw):
    return make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma, **kw))


@pytest.mark.parametrize("K", [1, 10, 1000])
def test_exact_posterior_guide_gives_exact_log_px_for_every_K(problem, K):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    est = log_likelihood(vae.model, vae.guide, x[:50], num_samples=K)
    assert est.shape == (50,) and est.dtype == torch.float64
    assert torch.allclose(est, exact[:50], rtol=0, atol=1e-8)


@pytest.mark.parametrize("chunk", [1, 7, 20, None])
def test_exact_posterior_guide_is_exact_for_every_chunk_size(problem, chunk):
    W, b, sigma, x, exact = problem
    vae = make_vae(W, b, sigma)
    est = log_likelihood(vae.model, vae.guide, x[:9], num_samples=20, chunk_size=chunk)
    assert torch.allclose(est, exact[:9], rtol=0, atol=1e-8)


def test_worse_guide_elbo_below_and_estimate_rises_with_K(problem):
    W, b, sigma, x, exact = problem
    vae = shifted(W, b, sigma)
    means = [log_likelihood(vae.model, vae.guide, x, num_samples=K).mean().item()
             for K in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert means[-1] < exact.mean().item() + 0.05
    res = importance_sampling(vae.model, vae.guide, x, num_samples=100, progress=False)
    gap = exact.numpy() - res.elbo
    assert gap.mean() > 4 * gap.std(ddof=1) / math.sqrt(len(gap))
    assert res.elbo_mean < res.log_px_mean < exact.mean().item()


def test_K5000_matches_exact_within_4_standard_errors(problem):
    W, b, sigma, x, exact = problem
    vae = shifted(W, b, sigma)
    res = importance_sampling(vae.model, vae.guide, x[:100], num_samples=5000, progress=False)
    diff = res.log_px - exact[:100].numpy()
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert se < 0.05
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
    assert res.elbo_mean < exact[:100].mean().item() - 5.0


def test_chunk_sizes_agree_within_monte_carlo_error(problem):
    W, b, sigma, x, exact = problem
    vae = shifted(W, b, sigma, shift=0.2, widen=1.5)
    K = 50
    runs = {c: log_likelihood(vae.model, vae.guide, x[:12], num_samples=K, chunk_size=c).numpy()
            for c in (1, 7, K)}
    for c in (1, 7):
        d = runs[c] - runs[K]
        assert not np.allclose(runs[c], runs[K])
        assert abs(d.mean()) < 4 * d.std(ddof=1) / math.sqrt(len(d)) + 1e-12
        assert np.abs(d).max() < 1.0


def _counting_pair(record):
    """A scalar-latent model whose model records how many latent draws each call holds."""

    def model(x, idx=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            record.append(z.numel())
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, idx=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))

    return model, guide


def test_latent_draws_per_pass_are_bounded_by_chunk_size():
    x = torch.randn(20, dtype=torch.float64)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    peaks = {}
    for chunk in (10, 100, 1000, None):
        record = []
        model, guide = _counting_pair(record)
        est = log_likelihood(model, guide, x, num_samples=100, chunk_size=chunk)
        assert torch.allclose(est, exact, atol=1e-10)
        peaks[chunk] = max(record[1:])
    assert peaks == {10: 10, 100: 100, 1000: 1000, None: 2000}


def test_estimates_are_per_example(problem):
    W, b, sigma, _, _ = problem
    x = torch.stack([b + 0.1, b + 3.0])
    exact = exact_log_px(x, W, b, sigma)
    assert abs(exact[0] - exact[1]) > 1.0
    vae = make_vae(W, b, sigma)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=100, chunk_size=7)
    assert torch.allclose(est, exact, atol=1e-8)
    flipped = log_likelihood(vae.model, vae.guide, x.flip(0), num_samples=100)
    assert torch.allclose(flipped, exact.flip(0), atol=1e-8)


def test_beta_scaling_masking_and_subsample_scaling_are_ignored(problem):
    """Evaluation is of the unscaled model: β (poutine.scale / poutine.mask at β = 0) and
    the N/B subsample scale of the plate leave log p(x) unchanged."""
    W, b, sigma, x, exact = problem
    for beta in (0.5, 0.0):
        vae = make_vae(W, b, sigma)
        vae.beta = beta
        est = log_likelihood(vae.model, vae.guide, x[:10], num_samples=30)
        assert torch.allclose(est, exact[:10], atol=1e-8)
    vae = make_vae(W, b, sigma)
    vae.num_data = 1000
    idx = torch.arange(10, 20)
    est = log_likelihood(vae.model, vae.guide, x[10:20], idx, num_samples=30, chunk_size=45)
    assert torch.allclose(est, exact[10:20], atol=1e-8)


def test_evaluate_statistics(problem):
    W, b, sigma, x, exact = problem
    res = importance_sampling(make_vae(W, b, sigma).model, make_vae(W, b, sigma).guide, x[:30],
                   num_samples=64, batch_size=7, progress=False)
    assert isinstance(res, EvalResult) and res.n == 30 and res.num_samples == 64
    assert np.allclose(res.log_px, exact[:30].numpy(), atol=1e-8)
    assert np.allclose(res.elbo, exact[:30].numpy(), atol=1e-8)
    assert np.allclose(res.ess, 64.0, atol=1e-6)
    se = exact[:30].numpy().std(ddof=1) / math.sqrt(30)
    assert res.log_px_stderr == pytest.approx(se, rel=1e-6)
    m = res.to_metrics()
    assert m["n_test"] == 30 and m["eval_samples"] == 64
    assert m["test_log_px"] == pytest.approx(exact[:30].mean().item(), abs=1e-8)
    assert m["test_log_px_stderr"] == pytest.approx(se, rel=1e-6)
    assert m["test_elbo"] == pytest.approx(m["test_log_px"], abs=1e-8)
    assert set(m) >= {"test_elbo", "test_elbo_stderr", "psis_khat_max", "psis_khat_frac_bad"}
    json.dumps(m, allow_nan=False)
    assert m["eval_fit_steps"] is None and m["eval_proposal"] == "encoder"  # no fit behind it


def test_khat_flags_light_tailed_guide(problem, caplog):
    W, b, sigma, x, _ = problem
    bad = shifted(W, b, sigma, shift=0.5, widen=1.0)
    with caplog.at_level(logging.WARNING, logger="pvae.evaluate"):
        res = importance_sampling(bad.model, bad.guide, x[:40], num_samples=200, progress=False)
    assert res.khat_frac_bad > 0.5 and res.khat_max > 0.7
    assert res.khat_frac_bad == pytest.approx(np.mean(res.khat > 0.7))
    assert "unreliable" in caplog.text and "raise K or improve the guide" in caplog.text
    good = shifted(W, b, sigma, shift=0.0, widen=1.5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pvae.evaluate"):
        res = importance_sampling(good.model, good.guide, x[:40], num_samples=200, progress=False)
    assert res.khat_max < 0.5 and res.khat_frac_bad == 0.0 and caplog.text == ""


def test_psis_khat_recovers_pareto_shape():
    rng = np.random.default_rng(0)
    for xi in (0.2, 0.5, 1.0):
        log_w = -xi * np.log(rng.uniform(size=(20, 5000)))
        assert abs(psis_khat(log_w).mean() - xi) < 0.1
    assert np.isnan(psis_khat(np.zeros((3, 10)))).all()


def test_plain_pyro_model_with_nested_plates_and_indices():
    """x_d = z + σ·ε_d for d < D: log p(x) = log N(x; 0, σ²I + 11ᵀ); the guide keeps the
    exact posterior mean of every dataset example in a table indexed by ``idx``."""
    sigma, D, N = 0.7, 4, 11
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 1, generator=g, dtype=torch.float64) + sigma * torch.randn(
        N, D, generator=g, dtype=torch.float64)
    exact = dist.MultivariateNormal(torch.zeros(D, dtype=torch.float64),
                                    sigma**2 * torch.eye(D, dtype=torch.float64)
                                    + torch.ones(D, D, dtype=torch.float64)).log_prob(x)
    post_var = 1.0 / (1.0 + D / sigma**2)
    table = (post_var * x.sum(1, keepdim=True) / sigma**2)

    def model(x, idx):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0))
            with pyro.plate("features", D, dim=-1):
                pyro.sample("x", dist.Normal(z, sigma), obs=x)

    def guide(x, idx):
        loc = pyro.param("loc", table)
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(loc[idx], math.sqrt(post_var)))

    idx = torch.arange(N)
    for K, chunk in ((1, None), (30, 7), (200, 450)):
        est = log_likelihood(model, guide, x, idx, num_samples=K, chunk_size=chunk)
        assert torch.allclose(est, exact, atol=1e-8)
    est = log_likelihood(model, guide, x[3:8], num_samples=5, chunk_size=3, idx=idx[3:8])
    assert torch.allclose(est, exact[3:8], atol=1e-8)
    res = importance_sampling(model, guide, x, idx, num_samples=25, chunk_size=10, batch_size=4,
                   progress=False)
    assert np.allclose(res.log_px, exact.numpy(), atol=1e-8)


def test_pvae_vae_on_random_binary_data():
    torch.manual_seed(0)
    vae = build_vae()
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    with torch.no_grad():
        res = importance_sampling(vae.model, vae.guide, x, num_samples=300, chunk_size=500, progress=False)
    assert np.isfinite(res.log_px).all() and (res.log_px <= 0).all()
    assert (res.elbo <= res.log_px + 1e-9).all() and res.elbo_mean < res.log_px_mean
    assert ((res.ess >= 1 - 1e-9) & (res.ess <= 300 + 1e-9)).all()
    est = log_likelihood(vae.model, vae.guide, x, num_samples=300)
    assert est.dtype == torch.float64 and not est.requires_grad
    d = est.numpy() - res.log_px
    assert np.abs(d).max() < 5.0


def test_bad_inputs_raise_clear_errors(problem):
    W, b, sigma, x, _ = problem
    vae = make_vae(W, b, sigma)
    for K in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="num_samples"):
            log_likelihood(vae.model, vae.guide, x, num_samples=K)
    with pytest.raises(ConfigError, match="chunk_size"):
        log_likelihood(vae.model, vae.guide, x, num_samples=10, chunk_size=0)
    with pytest.raises(ConfigError, match="batch_size"):
        importance_sampling(vae.model, vae.guide, x, num_samples=10, batch_size=0, progress=False)
    with pytest.raises(DataError, match="torch.Tensor"):
        log_likelihood(vae.model, vae.guide, x.tolist(), num_samples=10)
    with pytest.raises(DataError, match="leading dim"):
        log_likelihood(vae.model, vae.guide, torch.tensor(1.0, dtype=torch.float64),
                       num_samples=10)
    with pytest.raises(DataError, match="shape"):
        log_likelihood(vae.model, vae.guide, x[:8].T, num_samples=10)
    with pytest.raises(DataError, match="leading dim"):
        log_likelihood(lambda x: vae.model(x.T), lambda x: vae.guide(x.T), x[:8].T,
                       num_samples=10)


def test_guide_without_the_models_latent_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide_w(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(0.0, 1.0))

    def no_latent(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def global_latent(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    x = torch.randn(5)
    with pytest.raises(ConfigError,
                       match=r"\['z'\] are not sampled by the guide.*\['w'\] are not in the model"):
        log_likelihood(model, guide_w, x, num_samples=10)
    with pytest.raises(ConfigError, match="no latent site in the 'data' plate"):
        log_likelihood(no_latent, lambda x: None, x, num_samples=10)
    with pytest.raises(ConfigError, match="'mu' is outside"):
        log_likelihood(global_latent, global_guide, x, num_samples=10)
    assert issubclass(ConfigError, PvaeError)


def test_cli_evaluate_writes_metrics_and_figure(tmp_path, monkeypatch, capsys):
    import pvae.data
    from pvae.runs.cli import main
    from pvae.training import checkpoint

    torch.manual_seed(0)
    vae = build_vae(z_dim=4, hidden_dims=(16,))
    checkpoint.save(tmp_path / "checkpoint.pt", vae)
    calls = []

    def fake_mnist(data_dir):
        calls.append(str(data_dir))
        x = pvae.data.synthetic(40, binary=False)
        return x, torch.zeros(len(x)), x, torch.zeros(len(x)), (28, 28)

    monkeypatch.setitem(pvae.data.DATASETS, "mnist", fake_mnist)
    code = main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--num-samples",
                 "50", "--test-subset", "12", "--chunk-size", "120", "--device", "cpu",
                 "--data-dir", "somewhere"])
    assert code == 0 and calls == ["somewhere"]
    metrics = json.loads((tmp_path / "eval" / "metrics_is.json").read_text())
    assert metrics["n_test"] == 12 and metrics["eval_samples"] == 50
    assert metrics["config"]["chunk_size"] == 120 and metrics["config"]["data_dir"] == "somewhere"
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 1000
    assert np.load(tmp_path / "eval" / "test_log_px.npy").shape == (12,)
    loaded = checkpoint.load(tmp_path / "checkpoint.pt")
    pyro.set_rng_seed(0)
    x = pvae.data.load_dataset("mnist", "", True, test_subset=12).test_x
    direct = importance_sampling(loaded.model, loaded.guide, x, num_samples=50, chunk_size=120,
                                 progress=False)
    assert metrics["test_log_px"] == pytest.approx(direct.log_px_mean, abs=1e-9)
    assert metrics["test_elbo"] < metrics["test_log_px"] <= 0
    assert "test log p(x), K=50" in capsys.readouterr().out
    code = main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--num-samples", "5"])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


def test_importance_sampling_reads_the_device_once_per_run_not_per_batch(monkeypatch):
    """Per batch the only read is the k-hat's copy of the log-weights, started as the batch is
    made and read one batch later; statistics stay on the device until the end."""
    import pvae.infer.importance as importance
    from reads import Reads

    class Copy:
        def __init__(self, t):
            self.shape = tuple(t.shape)

        def numpy(self):
            return np.zeros(self.shape)

    monkeypatch.setattr(importance, "HostCopy", Copy)
    vae = build_vae(z_dim=3, hidden_dims=(8,))
    x = torch.bernoulli(torch.full((40, 784), 0.3))
    counts = []
    for batch_size in (20, 10):
        with Reads() as reads:
            result = importance_sampling(vae.model, vae.guide, x, num_samples=4,
                                         batch_size=batch_size, progress=False, host=vae)
        counts.append(reads.count)
        assert result.n == 40 and np.isfinite(result.log_px).all()
    assert counts[0] == counts[1]
