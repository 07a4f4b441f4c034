"""The fast training path (differentiable_loss, backward, one fused Adam) computes what SVI + pyro.optim computes."""
import pyro
import pytest
import torch

from pvae import checkpoint as ckpt
from pvae.data import synthetic
from pvae.errors import ConfigError
from pvae.objectives import make_loss
from pvae.train import fit, load_optimizer_state, make_optimizer, make_step, optimizer_state
from pvae.vae import build_vae

CONFIG = dict(prior="standard", guide="mlp", likelihood="bernoulli", z_dim=3,
              hidden_dims=[16], x_dim=784, activation="tanh", num_data=None, options={})


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_vae(z_dim=3, hidden_dims=(16,))


def batches():
    x = synthetic(256, seed=0)
    return [x[i * 64:(i + 1) * 64] for i in range(4)] + [x[:20]]  # a ragged last batch too


def losses(fast, loss, steps=25, warmup=0):
    pyro.clear_param_store()
    vae = tiny()
    step = make_step(vae, make_loss(loss, 3 if loss == "iwae" else 1), make_optimizer(vae, 3e-3, fast))
    xs = batches()
    pyro.set_rng_seed(1)
    out = []
    with pyro.validation_enabled(False):
        for i in range(steps):
            vae.beta = min(1.0, i / warmup) if warmup else 1.0
            out.append(step(xs[i % len(xs)]))
    return torch.tensor(out, dtype=torch.float64), [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("loss, warmup", [("elbo", 10), ("meanfield", 10), ("iwae", 10), ("elbo", 0)])
def test_fast_step_gives_the_losses_and_parameters_of_svi(loss, warmup):
    fast, fast_params = losses(True, loss, warmup=warmup)
    slow, slow_params = losses(False, loss, warmup=warmup)
    assert torch.allclose(fast, slow, rtol=2e-6, atol=0), (fast - slow).abs().max()
    assert fast[-5:].mean() < fast[:5].mean() - 50  # it trained
    for a, b in zip(fast_params, slow_params):
        assert torch.allclose(a, b, rtol=0, atol=5e-5)


def run_fit(tmp, epochs, fast, resume=False, seed=0, **kw):
    x = synthetic(350, seed=0, binary=False)
    xt = torch.bernoulli(x[300:], generator=torch.Generator().manual_seed(1))
    pyro.clear_param_store()
    vae = tiny(seed=5 if resume else 0)
    result = fit(vae, x[:300], epochs=epochs, batch_size=64, lr=3e-3, test_x=xt, out_dir=tmp,
                 resume=resume, device="cpu", seed=seed, progress=False, config=CONFIG, fast=fast, **kw)
    return vae, result


def test_fit_fast_and_slow_give_the_same_history_with_a_beta_warmup(tmp_path):
    fast, fast_result = run_fit(tmp_path / "f", 3, True, beta_warmup_epochs=1.4)
    slow, slow_result = run_fit(tmp_path / "s", 3, False, beta_warmup_epochs=1.4)
    assert [r.beta for r in fast_result.history] == [r.beta for r in slow_result.history]
    for a, b in zip(fast_result.history, slow_result.history):
        assert a.train_elbo == pytest.approx(b.train_elbo, rel=1e-6)
        assert a.test_elbo == pytest.approx(b.test_elbo, rel=1e-5)
    for a, b in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=5e-5)


def test_fast_resume_is_bitwise_during_a_warmup(tmp_path):
    full, full_result = run_fit(tmp_path / "a", 3, True, beta_warmup_epochs=1.4)
    run_fit(tmp_path / "b", 1, True, beta_warmup_epochs=1.4)
    pyro.set_rng_seed(999)
    resumed, resumed_result = run_fit(tmp_path / "b", 3, True, resume=True, beta_warmup_epochs=1.4)
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert [r.train_elbo for r in resumed_result.history] == [r.train_elbo for r in full_result.history]


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_a_checkpoint_resumes_on_the_other_path(tmp_path, first, then):
    reference, _ = run_fit(tmp_path / "ref", 3, first)
    run_fit(tmp_path / "b", 2, first)
    resumed, result = run_fit(tmp_path / "b", 3, then, resume=True)
    assert result.steps == 15
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=5e-5)
    assert set(ckpt.load(tmp_path / "b" / "checkpoint.pt")["optimizer"]) == {
        n for n, _ in resumed.named_parameters()}


def test_optimizer_state_round_trips_in_pyro_layout():
    vae = tiny()
    opt = make_optimizer(vae, 1e-2)
    step = make_step(vae, make_loss("elbo"), opt)
    for x in batches()[:3]:
        step(x)
    state = optimizer_state(vae, opt)
    assert set(state) == {n for n, _ in vae.named_parameters()}
    entry = state["q.net.body.0.weight"]
    assert float(entry["state"][0]["step"]) == 3 and entry["param_groups"][0]["lr"] == 1e-2
    assert entry["state"][0]["exp_avg"].shape == vae.q.net.body[0].weight.shape
    other = make_optimizer(vae, 1e-3)
    load_optimizer_state(vae, other, state)
    a, b = opt.state_dict(), other.state_dict()
    assert b["param_groups"][0]["lr"] == 1e-2
    for i, s in a["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["state"][i][k]), (i, k)


def test_a_param_outside_the_vae_is_refused_before_any_update():
    vae = tiny()
    guide = vae.guide

    def guide_with_a_free_param(x, idx=None):
        pyro.param("free_offset", torch.zeros(()))
        return guide(x, idx)

    vae.guide = guide_with_a_free_param
    before = [p.detach().clone() for p in vae.parameters()]
    step = make_step(vae, make_loss("elbo"), make_optimizer(vae, 1e-2))
    with pytest.raises(ConfigError, match="free_offset.*fast=False"):
        step(batches()[0])
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert all(p.grad is None for p in vae.parameters())
