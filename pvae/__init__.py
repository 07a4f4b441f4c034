"""pvae: Variational Autoencoders written as Pyro probabilistic programs."""
from .amortization import GapReport, LocalFit, fit_local, gap_report, refine
from .checkpoint import load_vae
from .data import MNIST, load_mnist, synthetic
from .errors import CheckpointError, ConfigError, DataError, DivergenceError, PvaeError
from .evaluate import EvalResult, evaluate, log_likelihood, psis_khat
from .experiment import ExperimentConfig, run
from .guides import GUIDES, LocalGuide, SemiAmortizedGuide
from .likelihoods import LIKELIHOODS
from .compare import CompareRow, compare
from .objectives import IWAE, OBJECTIVES, beta_at, make_loss
from .priors import PRIORS
from .train import EpochRecord, FitResult, fit, make_optimizer, make_step
from .vae import VAE, beta_handler, build_vae

__version__ = "0.1.0"

__all__ = [
    "VAE", "build_vae", "beta_handler",
    "PRIORS", "LIKELIHOODS", "GUIDES", "OBJECTIVES", "make_loss", "beta_at", "IWAE",
    "compare", "CompareRow",
    "fit", "FitResult", "EpochRecord", "make_optimizer", "make_step",
    "LocalGuide", "SemiAmortizedGuide", "fit_local", "refine", "gap_report", "LocalFit", "GapReport",
    "log_likelihood", "evaluate", "EvalResult", "psis_khat",
    "load_mnist", "MNIST", "synthetic", "load_vae",
    "ExperimentConfig", "run",
    "PvaeError", "DataError", "ConfigError", "CheckpointError", "DivergenceError",
]
