"""Priors: each log_prob is the density it claims, normalised, with the right shapes."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from conftest import make_part

from pvae.errors import ConfigError
from pvae.model.guides import NormalEncoder
from pvae.model.priors import PRIORS, FlowPrior, LearnedNormal, MixturePrior, StandardNormal, VampPrior
from pvae.model.vae import build_vae


def _build(name, z_dim=3, x_dim=6):
    return make_part(PRIORS[name], z_dim=z_dim, x_dim=x_dim, hidden_dims=(8,), activation="tanh",
                        num_data=None, num_components=3, num_pseudo_inputs=4,
                        guide=NormalEncoder(z_dim=z_dim, x_dim=x_dim, hidden_dims=(8,)))


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_has_event_shape_z_dim_and_samples(name):
    prior = _build(name)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (3,)
    z = p.sample((5,))
    assert z.shape == (5, 3)
    lp = p.log_prob(z)
    assert lp.shape == (5,) and bool(torch.isfinite(lp).all())


def test_learned_prior_at_init_equals_standard_normal_then_follows_its_parameters():
    z = torch.randn(7, 4)
    learned, standard = LearnedNormal(z_dim=4), StandardNormal(z_dim=4)
    torch.testing.assert_close(learned().log_prob(z), standard().log_prob(z))
    with torch.no_grad():
        learned.loc.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        learned.log_scale.copy_(torch.tensor([0.0, 0.3, -0.7, 1.1]))
    expected = torch.distributions.Normal(learned.loc, learned.log_scale.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(learned().log_prob(z), expected.detach())
    assert {n for n, _ in learned.named_parameters()} == {"loc", "log_scale"}


def test_mixture_with_one_component_equals_its_normal():
    prior = MixturePrior(z_dim=3, num_components=1)
    z = torch.randn(6, 3)
    scale = torch.nn.functional.softplus(prior.raw_scales[0]) + 1e-5
    expected = torch.distributions.Normal(prior.locs[0], scale).log_prob(z).sum(-1)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_mixture_is_the_weighted_sum_of_its_components():
    prior = MixturePrior(z_dim=2, num_components=3)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -2.0]))
    z = torch.randn(5, 2)
    w = torch.softmax(prior.logits, 0)
    scale = torch.nn.functional.softplus(prior.raw_scales) + 1e-5
    comp = torch.distributions.Normal(prior.locs, scale).log_prob(z[:, None, :]).sum(-1).exp()
    expected = (comp * w).sum(-1).log()
    torch.testing.assert_close(prior().log_prob(z), expected.detach(), rtol=1e-5, atol=1e-5)


def test_mixture_rejects_zero_components():
    with pytest.raises(ConfigError, match="num_components"):
        MixturePrior(z_dim=2, num_components=0)


def test_vamp_with_one_pseudo_input_equals_the_guide_at_it():
    enc = NormalEncoder(z_dim=3, x_dim=6, hidden_dims=(8,))
    prior = VampPrior(z_dim=3, x_dim=6, guide=enc, num_pseudo_inputs=1)
    z = torch.randn(5, 3)
    u = prior.pseudo_inputs
    torch.testing.assert_close(prior().log_prob(z), enc(u).log_prob(z))
    loc, scale = enc.encode(u)
    by_hand = torch.distributions.Normal(loc[0], scale[0]).log_prob(z).sum(-1)
    torch.testing.assert_close(prior().log_prob(z), by_hand)


def test_vamp_is_the_uniform_mixture_of_the_guide_at_its_pseudo_inputs():
    enc = NormalEncoder(z_dim=2, x_dim=6, hidden_dims=(8,))
    prior = VampPrior(z_dim=2, x_dim=6, guide=enc, num_pseudo_inputs=4)
    u = prior.pseudo_inputs
    assert u.shape == (4, 6) and bool(((u > 0) & (u < 1)).all())
    z = torch.randn(5, 2)
    loc, scale = enc.encode(u)
    comp = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
    expected = torch.logsumexp(comp, -1) - math.log(4)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_vamp_shares_the_encoder_without_registering_it_twice():
    vae = build_vae(prior="vamp", z_dim=2, hidden_dims=(8,), x_dim=6, num_pseudo_inputs=3)
    assert [n for n, _ in vae.prior.named_parameters()] == ["raw_pseudo_inputs"]
    assert vae.prior.encoder is vae.q
    names = [n for n, _ in vae.named_parameters()]
    assert len(names) == len(set(names)) == len(list(vae.parameters()))
    assert [k for k in vae.state_dict() if k.startswith("prior.")] == ["prior.raw_pseudo_inputs"]
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    with pyro.poutine.trace(param_only=True) as tr:
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    store = sorted(tr.trace.nodes)
    assert "prior.raw_pseudo_inputs" in store
    q_names = {"q." + n for n, _ in vae.q.named_parameters()}
    assert {n for n in store if n.startswith("q.")} == q_names
    assert not any(n.startswith("prior.") and n != "prior.raw_pseudo_inputs" for n in store)
    lp = vae.prior().log_prob(torch.randn(3, 2)).sum()
    grads = torch.autograd.grad(lp, [vae.q.net.body[0].weight, vae.prior.raw_pseudo_inputs])
    assert all(float(g.abs().sum()) > 0 for g in grads)
    assert torch.isfinite(loss)


def test_vamp_needs_an_amortized_guide():
    with pytest.raises(ConfigError, match="needs the encoder"):
        VampPrior(z_dim=2, x_dim=6, guide=None)
    with pytest.raises(ConfigError, match="per-datapoint"):
        build_vae(prior="vamp", guide="local", z_dim=2, hidden_dims=(8,), x_dim=6, num_data=5)


def _perturbed_flow(z_dim, steps=2, seed=3):
    prior = FlowPrior(z_dim=z_dim, flow_steps=steps)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=g))
    return prior


def test_flow_prior_log_prob_is_the_change_of_variables_by_hand():
    prior = _perturbed_flow(z_dim=3, steps=2)
    z = prior().sample((4,))

    def to_base(v):
        for f in prior.flows:
            mean, log_scale = f.arn(v)
            v = mean + log_scale.clamp(-5.0, 3.0).exp() * v
        return v

    base = torch.distributions.Normal(0.0, 1.0)
    expected = []
    for zi in z:
        u = to_base(zi)
        jac = torch.autograd.functional.jacobian(to_base, zi)
        expected.append(base.log_prob(u).sum() + torch.linalg.slogdet(jac)[1])
    expected = torch.stack(expected)
    torch.testing.assert_close(prior().log_prob(z).detach(), expected.detach(),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prior().log_prob(z.clone()).detach(), expected.detach(),
                               rtol=1e-4, atol=1e-4)


def test_flow_prior_density_integrates_to_one_in_2d():
    prior = _perturbed_flow(z_dim=2, steps=2)
    n, lim = 601, 12.0
    t = torch.linspace(-lim, lim, n)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        dens = prior().log_prob(zz).exp()
    cell = (t[1] - t[0]) ** 2
    mass = float(dens.sum() * cell)
    assert abs(mass - 1.0) < 2e-3, mass
    assert float(dens.max()) > 0.05


def test_flow_prior_registers_its_maps_as_children():
    prior = FlowPrior(z_dim=3, flow_steps=3)
    names = [n for n, _ in prior.named_parameters()]
    assert len(prior.flows) == 3 and len(names) == 12
    assert all(n.startswith("flows.") for n in names)
    with pytest.raises(ConfigError, match="at least one step"):
        FlowPrior(z_dim=3, flow_steps=0)


def test_standard_prior_is_standard_normal():
    z = torch.randn(4, 3)
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(StandardNormal(z_dim=3)().log_prob(z), expected)


def test_diagonal_normal_mixture_matches_mixture_same_family_without_the_memory():
    from pvae.distributions import DiagonalNormalMixture

    g = torch.Generator().manual_seed(3)
    logits, locs = torch.randn(7, generator=g), 3 * torch.randn(7, 5, generator=g)
    scales = 0.02 + torch.rand(7, 5, generator=g)
    fast = DiagonalNormalMixture(logits, locs, scales)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                 dist.Normal(locs, scales).to_event(1))
    z = ref.sample((6, 4))
    assert torch.allclose(fast.log_prob(z), ref.log_prob(z), atol=1e-4, rtol=1e-6)
    assert torch.allclose(fast.expand((4,)).log_prob(z), ref.log_prob(z), atol=1e-4, rtol=1e-6)
    assert fast.expand((4,)).batch_shape == (4,)
    vamp = build_vae(prior="vamp", guide="mlp", z_dim=5, x_dim=12, hidden_dims=(8,),
                     num_pseudo_inputs=9).prior()
    assert isinstance(vamp, DiagonalNormalMixture)
    comps = vamp.component_distribution
    ref = dist.MixtureSameFamily(vamp.mixture_distribution, comps)
    assert torch.allclose(vamp.log_prob(z), ref.log_prob(z), atol=1e-4, rtol=1e-6)


def _vamp_iaf(gain, z_dim=50, dtype=torch.float32):
    """A VampPrior + IAF VAE whose flow weights are multiplied by ``gain``: a strongly
    non-linear flow, like the one a VampPrior + IAF run reached when its loss became NaN."""
    torch.manual_seed(0)
    vae = build_vae(prior="vamp", guide="iaf", z_dim=z_dim, hidden_dims=(16,), x_dim=6,
                    num_pseudo_inputs=3).to(dtype)
    with torch.no_grad():
        for name, p in vae.q.flows.named_parameters():
            if name.endswith("weight"):
                p.mul_(gain)
    return vae


def test_vamp_with_a_flow_guide_is_the_flow_of_the_base_mixture():
    """(1/K) Σ_k q(z|u_k) = push-forward by the shared flow f of (1/K) Σ_k q0(z0|u_k)."""
    torch.set_default_dtype(torch.float64)  # Pyro's flow inverse starts from default-dtype zeros
    vae = _vamp_iaf(gain=1.0, z_dim=4, dtype=torch.float64)
    prior = vae.prior()
    assert isinstance(prior, dist.TransformedDistribution)
    components = vae.q(vae.prior.pseudo_inputs)
    reference = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(3, dtype=torch.float64)),
                                       components)
    z = torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    assert prior.sample((5,)).shape == (5, 4)


@pytest.mark.parametrize("gain", [3.0, 30.0])
def test_vamp_with_an_iaf_guide_scores_guide_samples_at_their_exact_pre_image(gain):
    """The density of a guide sample z = f(z0) needs f⁻¹(z) = z0. Inverted afresh, one
    coordinate after another, f⁻¹ amplifies float32 rounding through every coordinate: here
    log p(z) was off by 1e24 (gain 3) or NaN (gain 30), the NaN of a VampPrior + IAF run.
    The prior reuses the flows' cached z0 instead: log p(z) is the float64 value from z0."""
    vae = _vamp_iaf(gain)
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    q = vae.q(x)
    z0 = q.base_dist.rsample()
    z = z0
    log_det = torch.zeros(40)
    for f in vae.q.flows:
        y = f(z)
        log_det = log_det + f.log_abs_det_jacobian(z, y)
        z = y
    base = vae.q.base(vae.prior.pseudo_inputs).base_dist
    exact = (torch.logsumexp(torch.distributions.Normal(base.loc.double(), base.scale.double())
                             .log_prob(z0.double()[:, None]).sum(-1), -1)
             - math.log(3) - log_det.double())
    lp = vae.prior().log_prob(z)
    assert bool(torch.isfinite(lp).all())
    torch.testing.assert_close(lp.double(), exact, rtol=1e-5, atol=1e-3)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(bool(torch.isfinite(p.grad).all()) for p in vae.parameters() if p.grad is not None)
