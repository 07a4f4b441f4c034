"""What β did to the latent space: the KL of each latent coordinate to the prior, the active units
(Burda et al. 2016: Cov_x E_q[z_i] > 0.01) and latent traversals (docs/uses.rst)."""
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from ..distributions import DiagonalNormalMixture
from ..model.vae import VAE

ACTIVE_THRESHOLD = 0.01
MAX_IMAGES = 2000
MC_SAMPLES, MC_IMAGES = 16, 1000
SWEEP = 3.0
"""Traversals sweep each coordinate over ±SWEEP prior standard deviations."""


@dataclass(frozen=True)
class LatentReport:
    """Per-coordinate ``kl`` (nats, mean over ``n`` images; None where the marginals of q or p
    are not Normal or mixtures of Normals), ``variance`` Cov_x E_q[z_i], the prior's ``scale``."""

    kl: torch.Tensor | None
    variance: torch.Tensor
    scale: torch.Tensor
    n: int

    @property
    def active_units(self) -> int:
        """Coordinates whose posterior mean varies over the images: Cov_x E_q[z_i] > 0.01."""
        return int((self.variance > ACTIVE_THRESHOLD).sum())

    @property
    def order(self) -> torch.Tensor:
        """Coordinates by decreasing KL (by decreasing ``variance`` where KL is unknown)."""
        return torch.argsort(self.kl if self.kl is not None else self.variance, descending=True)

    def to_metrics(self) -> dict:
        """``kl_per_dim`` (coordinate order), ``active_units`` and the images they average."""
        kl = None if self.kl is None else [round(float(v), 6) for v in self.kl]
        return {"kl_per_dim": kl, "active_units": self.active_units, "latent_n_test": self.n}


def prior_marginal(vae: VAE):
    """``(logits (K,), locs (K, D), scales (K, D))`` of p(z) as a mixture of diagonal Normals (K =
    1 for a Normal), whose coordinate i has the marginal Σ_k π_k N(μ_ki, σ_ki²); else None."""
    if vae.upper is not None:
        return None
    p = vae.prior()
    if isinstance(p, dist.Independent) and isinstance(p.base_dist, dist.Normal):
        base = p.base_dist
        return base.loc.new_zeros(1), base.loc.reshape(1, -1), base.scale.reshape(1, -1)
    if isinstance(p, (DiagonalNormalMixture, dist.MixtureSameFamily)):
        comp = p.component_distribution
        if isinstance(comp, dist.Independent) and isinstance(comp.base_dist, dist.Normal):
            return p.mixture_distribution.logits, comp.base_dist.loc, comp.base_dist.scale
    return None


def posterior(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E_q[z|x] per image and, where each q(z_i|x) is Normal, its standard deviation (else None;
    through a guide's flows the mean is that of MC_SAMPLES draws)."""
    loc, scale, flows = vae.encode(x)
    if not flows:
        return loc, scale
    z = loc + scale * torch.randn((MC_SAMPLES, *loc.shape), device=loc.device)
    for f in flows:
        z = f(z)
    return z.mean(0), None


def kl_per_dim(loc: torch.Tensor, scale: torch.Tensor, marginal) -> torch.Tensor:
    """Mean over images of KL(N(loc_i, scale_i²) || p(z_i)): exact for a Normal p(z_i), else
    by MC_SAMPLES draws on the first MC_IMAGES images."""
    logits, locs, scales = (t.to(loc) for t in marginal)
    if locs.shape[0] == 1:
        ratio = scale / scales[0]
        kl = ((loc - locs[0]) / scales[0]) ** 2 / 2 + (ratio ** 2 - 1) / 2 - ratio.log()
        return kl.mean(0)
    total, n = torch.zeros_like(loc[0]), min(MC_IMAGES, loc.shape[0])
    log_pi, step = torch.log_softmax(logits, 0).reshape(-1, 1), max(1, 2**22 // locs.numel())
    for start in range(0, n, step):
        m, s = loc[start:min(n, start + step)], scale[start:min(n, start + step)]
        z = m + s * torch.randn((MC_SAMPLES, *m.shape), device=m.device)
        log_p = torch.logsumexp(log_pi + dist.Normal(locs, scales).log_prob(z.unsqueeze(-2)), -2)
        total += (dist.Normal(m, s).log_prob(z) - log_p).sum((0, 1))
    return total / (n * MC_SAMPLES)


def prior_draws(vae: VAE, n: int) -> torch.Tensor:
    """``n`` draws of the bottom latent z from the prior (two layers: z2 ~ p(z2), z ~ p(z|z2))."""
    z = vae.prior().sample((n,))
    return z if vae.upper is None else vae.upper.conditional(z).sample()


@torch.no_grad()
def latent_report(vae: VAE, x: torch.Tensor, seed: int = 0) -> LatentReport:
    """The :class:`LatentReport` of the first MAX_IMAGES images of ``x``; the global RNGs are
    left as they were (draws come from ``seed``)."""
    x = x[:MAX_IMAGES].to(vae.device)
    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []):
        torch.manual_seed(seed)
        mean, scale = posterior(vae, x)
        marginal = prior_marginal(vae)
        kl = None if scale is None or marginal is None else kl_per_dim(mean, scale, marginal)
        prior_scale = prior_draws(vae, 4096).std(0)
    variance = mean.var(0) if mean.shape[0] > 1 else torch.zeros_like(mean[0])
    return LatentReport(None if kl is None else kl.cpu(), variance.cpu(), prior_scale.cpu(),
                        x.shape[0])


@torch.no_grad()
def traversals(vae: VAE, x: torch.Tensor, report: LatentReport, rows: int = 20,
               steps: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (rows·steps, x_dim), coordinates)``: from the posterior mean of the image ``x``
    (1, x_dim), the first ``rows`` coordinates of ``report.order`` each set in turn to mean + t·σ_p,
    t over ``steps`` values in [−SWEEP, SWEEP], the others held; decoded as E[x|z]."""
    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []):
        torch.manual_seed(0)
        mean = posterior(vae, x[:1].to(vae.device))[0][0]
    coords = report.order[:rows]
    t = torch.linspace(-SWEEP, SWEEP, steps, device=mean.device)
    z = mean.expand(len(coords), steps, -1).clone()
    for row, i in enumerate(coords.tolist()):
        z[row, :, i] = mean[i] + t * report.scale[i].to(mean)
    return vae.likelihood.mean(z.reshape(-1, z.shape[-1])), coords

