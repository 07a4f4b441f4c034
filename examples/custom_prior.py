"""A prior of one's own, written in one's own file: registered by name, it trains and is
evaluated like the built-in priors, and its option is a flag with no other edit.

    python examples/custom_prior.py --epochs 5 --df 2.5
    python examples/custom_prior.py --help      # --prior lists "student", --df is a flag

p(z) = ∏_d t_ν(z_d), a Student-t with ν degrees of freedom: heavier tails than N(0, I), so
the encoder may place images further out without a quadratic KL penalty.
"""
import sys

import pyro.distributions as dist
import torch
from torch import nn

import pvae
from pvae.runs import cli


class StudentTPrior(nn.Module):
    """p(z) = ∏_d StudentT(z_d; ν, 0, 1), ν = ``df``. A prior is an ``nn.Module`` with
    ``z_dim`` whose ``forward()`` returns p(z) with event shape (z_dim,); its constructor takes
    the shared sizes it needs by name and its options as keyword-only arguments."""

    def __init__(self, z_dim: int, *, df: float = 3.0):
        super().__init__()
        if not df > 0:
            raise pvae.ConfigError(f"df must be > 0, got {df}")
        self.z_dim = int(z_dim)
        self.register_buffer("df", torch.tensor(float(df)))  # a buffer follows the device

    def forward(self) -> dist.Distribution:
        loc = self.df.new_zeros(self.z_dim)
        return dist.StudentT(self.df, loc, torch.ones_like(loc)).to_event(1)


pvae.PRIORS["student"] = StudentTPrior


def main(argv=None) -> int:
    config = cli.parse("python examples/custom_prior.py", argv, __doc__.splitlines()[0],
                       defaults={"prior": "student", "out": "runs/student", "epochs": 10})
    metrics = pvae.run(config)  # data, VAE, fit, log p(x), metrics.json and figures
    print(cli.summary(metrics))
    print(f"p(z) = StudentT(df={config.model.options.get('df', 3.0)}); wrote {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_guarded(main))
