import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

from pvae.errors import ConfigError, DataError
from pvae.model.vae import build_vae


def tiny(**kw):
    return build_vae(z_dim=3, hidden_dims=(8,), x_dim=12, **kw)


def binary(n=5, d=12, seed=0):
    return torch.bernoulli(torch.full((n, d), 0.4), generator=torch.Generator().manual_seed(seed))


def test_model_and_guide_traces_agree_on_sites_and_shapes():
    vae, x = tiny(), binary()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (5, 3)
    assert model_tr.nodes["z"]["value"] is guide_tr.nodes["z"]["value"]
    for tr, name in ((model_tr, "z"), (guide_tr, "z"), (model_tr, "x")):
        site = tr.nodes[name]
        assert site["fn"].batch_shape == (5,)
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert model_tr.nodes["z"]["fn"].event_shape == (3,)
    assert model_tr.nodes["x"]["fn"].event_shape == (12,)
    assert model_tr.nodes["x"]["is_observed"]
    assert torch.equal(model_tr.nodes["x"]["value"], x)


def test_one_svi_step_loss_equals_hand_computed_negative_elbo():
    vae, x = tiny(), binary()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    q = vae.q
    with torch.no_grad():
        h = q.net.body(x)
        loc, scale = h[:, :3], F.softplus(h[:, 3:]) + 1e-5
    pyro.set_rng_seed(7)
    z = loc + scale * torch.distributions.Normal(torch.zeros(5, 3), 1.0).sample()
    with torch.no_grad():
        logits = vae.likelihood.decoder(z)
        log_px_z = (x * logits - F.softplus(logits)).sum(-1)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = -(log_px_z + log_pz - log_qz).sum().item()
    pyro.set_rng_seed(7)
    loss = svi.step(x)
    assert loss == pytest.approx(expected, rel=1e-5)
    # the step changed the parameters
    h2 = q.net.body(x)
    assert not torch.allclose(h2[:, :3], loc)


def param_sites(fn, *args):
    tr = poutine.trace(fn, param_only=True).get_trace(*args)
    return {name: site["value"].unconstrained() for name, site in tr.nodes.items()}


def test_model_and_guide_state_every_parameter_once_except_under_direct_params():
    vae, x = tiny(prior="learned"), binary()
    model_params, guide_params = param_sites(vae.model, x), param_sites(vae.guide, x)
    named = dict(vae.named_parameters())
    assert set(model_params) | set(guide_params) == set(named)
    assert not set(model_params) & set(guide_params)
    assert all(named[n] is t for n, t in {**model_params, **guide_params}.items())
    assert {n.split(".")[0] for n in model_params} == {"prior", "likelihood"}
    assert {n.split(".")[0] for n in guide_params} == {"q"}
    with vae.direct_params():
        assert param_sites(vae.model, x) == {} and param_sites(vae.guide, x) == {}
    assert param_sites(vae.guide, x).keys() == guide_params.keys()  # the context restores them


def test_svi_trains_a_new_vae_not_the_stale_params_of_an_earlier_one():
    x = binary()
    old = tiny()
    poutine.trace(old.guide).get_trace(x)  # leaves old's tensors in the param store
    torch.manual_seed(1)
    new = tiny()
    before = [p.detach().clone() for p in new.parameters()]
    svi = SVI(new.model, new.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    assert all(not torch.equal(a, p) for a, p in zip(before, new.parameters()))
    store = pyro.get_param_store()
    assert all(store[n].unconstrained() is p for n, p in new.named_parameters())


@pytest.mark.parametrize("beta", [0.0, 0.5, 3.0])
def test_beta_scales_the_latent_site_in_model_and_guide(beta):
    vae, x = tiny(beta=beta), binary()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    for tr in (guide_tr, model_tr):
        site = tr.nodes["z"]
        if beta == 0:
            assert site["mask"] is False
        else:
            assert site["scale"] == pytest.approx(beta)
    assert model_tr.nodes["x"]["scale"] == 1.0


def test_reconstruct_and_sample_are_probabilities():
    vae, x = tiny(), binary()
    r, s = vae.reconstruct(x), vae.sample(4)
    assert r.shape == (5, 12) and s.shape == (4, 12)
    assert float(r.min()) >= 0 and float(r.max()) <= 1 and float(s.min()) >= 0


@pytest.mark.parametrize("x, message", [
    (torch.ones(5, 11), "shape"),
    (torch.ones(5, 3, 4), "shape"),
    (torch.full((5, 12), 0.5), "binary"),
    (torch.tensor([[float("nan")] + [0.0] * 11]), "NaN"),
])
def test_bad_data_is_named(x, message):
    with pytest.raises(DataError, match=message):
        tiny().check_data(x)


@pytest.mark.parametrize("kind", ["prior", "guide", "likelihood"])
def test_unknown_part_names_list_the_choices(kind):
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nope'; choose one of"):
        tiny(**{kind: "nope"})


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf")])
def test_bad_beta_is_refused(beta):
    with pytest.raises(ConfigError, match="beta"):
        tiny(beta=beta)
