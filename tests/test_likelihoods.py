"""Likelihoods: log p(x|z) against torch.distributions by hand; support checks; means."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from conftest import make_part

from pvae.errors import ConfigError, DataError
from pvae.distributions import BernoulliImage
from pvae.model.likelihoods import LIKELIHOODS, Bernoulli, ContinuousBernoulli, Normal


def _build(name, **options):
    return make_part(LIKELIHOODS[name], z_dim=2, x_dim=784, hidden_dims=(8,), activation="tanh",
                             num_data=None, conv_channels=2, **options)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
@pytest.mark.parametrize("decoder", ["mlp", "conv"])
def test_every_likelihood_has_one_image_events_and_a_displayable_mean(name, decoder):
    lik = _build(name, decoder=decoder)
    z = torch.randn(5, 4, 2)
    d = lik(z)
    assert d.batch_shape == (5, 4) and d.event_shape == (784,)
    m = lik.mean(z)
    assert m.shape == (5, 4, 784) and bool(((m >= 0) & (m <= 1)).all())
    assert lik.data_kind in ("binary", "continuous")


def test_bernoulli_log_prob_by_hand():
    lik = _build("bernoulli")
    z, x = torch.randn(3, 2), torch.bernoulli(torch.full((3, 784), 0.3))
    f = lik.decoder(z)
    expected = (x * f - torch.nn.functional.softplus(f)).sum(-1)
    torch.testing.assert_close(lik(z).log_prob(x), expected, rtol=1e-5, atol=1e-3)


def test_bernoulli_image_is_pyros_independent_bernoulli_in_value_gradient_and_shape():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.bernoulli(torch.full((4, 6), 0.3, dtype=torch.float64), generator=g)  # broadcast over 3
    ours, pyros = BernoulliImage(logits), dist.Bernoulli(logits=logits).to_event(1)
    a, b = ours.log_prob(x), pyros.log_prob(x)
    assert a.shape == (3, 4) and torch.allclose(a, b, rtol=1e-12, atol=0)
    (ga,) = torch.autograd.grad(a.sum(), logits)
    (gb,) = torch.autograd.grad(b.sum(), logits)
    assert torch.allclose(ga, gb, rtol=1e-12, atol=0)
    wide = BernoulliImage(logits[0]).expand((2, 4))  # what a particle plate does
    assert isinstance(wide, BernoulliImage) and wide.batch_shape == (2, 4) and wide.event_shape == (6,)
    assert torch.allclose(wide.log_prob(x)[1], b[0])
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        BernoulliImage(logits.detach(), validate_args=True).log_prob(x * 0.5)


def test_continuous_bernoulli_log_prob_by_hand_and_mean():
    lik = _build("cbernoulli")
    z, x = torch.randn(3, 2), torch.rand(3, 784)
    lam = torch.sigmoid(lik.decoder(z)).double()
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (x * lam.log() + (1 - x) * (1 - lam).log() + log_c).sum(-1)
    torch.testing.assert_close(lik(z).log_prob(x).double(), expected, rtol=1e-4, atol=1e-2)
    mean = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
    stable = (lam - 0.5).abs() > 0.01
    torch.testing.assert_close(lik.mean(z).double()[stable], mean[stable], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lik.mean(z).double()[~stable], lam[~stable], rtol=0, atol=1e-2)
    assert lik.data_kind == "continuous"


def test_normal_log_prob_by_hand_fixed_and_learned_scale():
    z, x = torch.randn(3, 2), torch.rand(3, 784)
    fixed = _build("normal", likelihood_scale=0.2)
    loc = fixed.decoder(z)
    expected = (-0.5 * ((x - loc) / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(fixed(z).log_prob(x), expected, rtol=1e-5, atol=1e-2)
    assert [n for n, _ in fixed.named_parameters() if "log_scale" in n] == []
    learned = _build("normal", likelihood_scale=0.2, learn_scale=True)
    assert "log_scale" in dict(learned.named_parameters())
    torch.testing.assert_close(learned.scale, torch.tensor(0.2))
    with torch.no_grad():
        learned.log_scale.fill_(math.log(0.5 - Normal.SIGMA_FLOOR))
    loc = learned.decoder(z)
    expected = torch.distributions.Normal(loc, 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(learned(z).log_prob(x), expected, rtol=1e-5, atol=1e-3)
    with pytest.raises(ConfigError, match="likelihood_scale"):
        _build("normal", likelihood_scale=0.0)


def test_checks_reject_data_outside_the_support():
    Bernoulli.check(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(DataError, match="binary"):
        Bernoulli.check(torch.tensor([[0.0, 0.5]]))
    ContinuousBernoulli.check(torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ContinuousBernoulli.check(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(DataError, match="finite"):
        ContinuousBernoulli.check(torch.tensor([[0.0, float("nan")]]))
    Normal.check(torch.tensor([[-3.0, 7.0]]))
    with pytest.raises(DataError, match="finite"):
        Normal.check(torch.tensor([[0.0, float("inf")]]))


def test_unknown_decoder_is_a_config_error():
    with pytest.raises(ConfigError, match="decoder"):
        _build("bernoulli", decoder="resnet")
