"""Guides: shapes, reparameterized samples, and log q(z|x) against the density by hand."""
import pytest
import torch

from conftest import make_part
import torch.nn.functional as F

from pvae.errors import ConfigError
from pvae.model.guides import GUIDES, ConvNormalEncoder, IAFEncoder, LowRankEncoder
from pvae.model.nets import image_side

AMORTIZED = [name for name, cls in GUIDES.items()
             if cls.amortized and not cls.uses_model]


def _build(name, z_dim=3, x_dim=784):
    return make_part(GUIDES[name], z_dim=z_dim, x_dim=x_dim, hidden_dims=(8,), activation="tanh",
                        num_data=None, conv_channels=2)


def test_the_encoder_guides_are_registered():
    assert {"mlp", "conv", "lowrank", "iaf"} <= set(AMORTIZED)


@pytest.mark.parametrize("name", AMORTIZED)
def test_guide_shapes_rsample_and_log_prob_of_own_samples(name):
    q = _build(name)
    x = torch.rand(4, 784)
    d = q(x)
    assert d.batch_shape == (4,) and d.event_shape == (3,) and q.z_dim == 3
    z = d.rsample()
    assert z.shape == (4, 3)
    lp = d.log_prob(z)
    assert lp.shape == (4,) and bool(torch.isfinite(lp).all())
    grads = torch.autograd.grad(lp.sum() + z.sum(), list(q.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    zs = d.rsample((5,))
    assert zs.shape == (5, 4, 3) and d.log_prob(zs).shape == (5, 4)


def test_lowrank_guide_is_the_low_rank_gaussian_by_hand():
    q = LowRankEncoder(z_dim=3, x_dim=5, hidden_dims=(8,), rank=2)
    x = torch.randn(2, 5)
    out = q.net(x)
    loc, raw, factor = out[:, :3], out[:, 3:6], out[:, 6:].reshape(2, 3, 2)
    cov = factor @ factor.transpose(-1, -2) + torch.diag_embed((F.softplus(raw) + 1e-5) ** 2)
    z = torch.randn(2, 3)
    expected = torch.distributions.MultivariateNormal(loc, covariance_matrix=cov).log_prob(z)
    torch.testing.assert_close(q(x).log_prob(z), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="rank"):
        LowRankEncoder(z_dim=3, x_dim=5, rank=0)


def test_iaf_guide_log_prob_is_base_minus_log_det_by_hand():
    q = IAFEncoder(z_dim=3, x_dim=5, hidden_dims=(8,), flow_steps=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in q.flows.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(4, 5)
    loc, scale = q.base.encode(x)
    z0 = loc + scale * torch.randn(4, 3, generator=g)
    expected = torch.distributions.Normal(loc, scale).log_prob(z0).sum(-1)
    z = z0
    for f in q.flows:
        mean, log_scale = f.arn(z)
        log_scale = log_scale.clamp(-5.0, 3.0)
        expected = expected - log_scale.sum(-1)
        z = mean + log_scale.exp() * z
    torch.testing.assert_close(q(x).log_prob(z), expected, rtol=1e-4, atol=1e-4)


def test_iaf_guide_cached_log_prob_of_its_sample_equals_the_inverted_one():
    q = IAFEncoder(z_dim=3, x_dim=5, hidden_dims=(8,), flow_steps=3)
    x = torch.randn(4, 5)
    d = q(x)
    z = d.rsample()
    torch.testing.assert_close(d.log_prob(z), q(x).log_prob(z.clone()), rtol=1e-4, atol=1e-4)


def test_iaf_guide_broadcasts_against_mixture_components():
    q = IAFEncoder(z_dim=2, x_dim=5, hidden_dims=(8,))
    x = torch.randn(3, 5)
    z = torch.randn(6, 1, 2)
    lp = q(x).log_prob(z)
    assert lp.shape == (6, 3)
    for k in range(3):
        torch.testing.assert_close(lp[:, k], q(x[k:k + 1]).log_prob(z[:, 0]))


def test_conv_guide_needs_square_images_and_reads_the_image():
    with pytest.raises(ConfigError, match="square"):
        ConvNormalEncoder(z_dim=2, x_dim=780, hidden_dims=(8,))
    assert image_side(784) == 28
    q = ConvNormalEncoder(z_dim=2, x_dim=784, hidden_dims=(8,), conv_channels=2)
    x = torch.rand(2, 784)
    loc, _ = q.encode(x)
    x2 = x.clone()
    x2[1, 0] += 1.0
    loc2, _ = q.encode(x2)
    torch.testing.assert_close(loc2[0], loc[0])
    assert not torch.allclose(loc2[1], loc[1])
