"""fit's step (differentiable_loss, backward, one fused Adam) computes what SVI + pyro.optim computes."""
import pyro
import pytest
import torch
from pyro.infer import SVI

from pvae.data import synthetic
from pvae.errors import ConfigError
from pvae.infer.objectives import make_loss
from pvae.training.loop import fit, make_optimizer, make_step
from pvae.model.vae import build_vae


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_vae(z_dim=3, hidden_dims=(16,))


def batches():
    x = synthetic(256, seed=0)
    return [x[i * 64:(i + 1) * 64] for i in range(4)] + [x[:20]]  # a ragged last batch too


def losses(step_of, loss, steps=25, warmup=0):
    pyro.clear_param_store()
    vae = tiny()
    step = step_of(vae, make_loss(loss, 3 if loss == "iwae" else 1))
    xs = batches()
    pyro.set_rng_seed(1)
    out = []
    with pyro.validation_enabled(False):
        for i in range(steps):
            with vae.warmup(min(1.0, i / warmup) if warmup else 1.0):
                out.append(step(xs[i % len(xs)]))
    return torch.tensor(out, dtype=torch.float64), [p.detach().clone() for p in vae.parameters()]


def fit_step(vae, objective):
    return make_step(vae, objective, make_optimizer(vae, 3e-3))


def svi_step(vae, objective):
    return SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), loss=objective).step


@pytest.mark.parametrize("loss, warmup", [("elbo", 10), ("meanfield", 10), ("iwae", 10), ("elbo", 0)])
def test_fits_step_gives_the_losses_and_parameters_of_svi(loss, warmup):
    fast, fast_params = losses(fit_step, loss, warmup=warmup)
    slow, slow_params = losses(svi_step, loss, warmup=warmup)
    assert torch.allclose(fast, slow, rtol=2e-6, atol=0), (fast - slow).abs().max()
    assert fast[-5:].mean() < fast[:5].mean() - 50  # it trained
    for a, b in zip(fast_params, slow_params):
        assert torch.allclose(a, b, rtol=0, atol=5e-5)


def run_fit(tmp, epochs, resume=False, seed=0, **kw):
    x = synthetic(350, seed=0, binary=False)
    xt = torch.bernoulli(x[300:], generator=torch.Generator().manual_seed(1))
    vae = tiny(seed=5 if resume else 0)
    result = fit(vae, x[:300], epochs=epochs, batch_size=64, lr=3e-3, test_x=xt, out_dir=tmp,
                 resume=resume, device="cpu", seed=seed, progress=False, **kw)
    return vae, result


def test_resume_is_bitwise_during_a_warmup(tmp_path):
    full, full_result = run_fit(tmp_path / "a", 3, beta_warmup_epochs=1.4)
    run_fit(tmp_path / "b", 1, beta_warmup_epochs=1.4, schedule_epochs=3)  # interrupted
    pyro.set_rng_seed(999)
    resumed, resumed_result = run_fit(tmp_path / "b", 3, resume=True, beta_warmup_epochs=1.4)
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert [r.train_elbo for r in resumed_result.history] == [r.train_elbo for r in full_result.history]
    assert [r.beta for r in resumed_result.history] == [r.beta for r in full_result.history]


def test_a_param_outside_the_vae_is_refused_before_any_update():
    vae = tiny()
    guide = vae.guide

    def guide_with_a_free_param(x, idx=None):
        pyro.param("free_offset", torch.zeros(()))
        return guide(x, idx)

    vae.guide = guide_with_a_free_param
    before = [p.detach().clone() for p in vae.parameters()]
    step = make_step(vae, make_loss("elbo"), make_optimizer(vae, 1e-2))
    with pytest.raises(ConfigError, match="free_offset.*pyro.infer.SVI"):
        step(batches()[0])
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert all(p.grad is None for p in vae.parameters())
