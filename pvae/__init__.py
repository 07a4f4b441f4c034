"""pvae: Variational Autoencoders written as Pyro probabilistic programs.

The modules ``pvae.evaluate`` (importance-sampled log p(x)), ``pvae.ais`` (annealed
importance sampling, BDMC) and ``pvae.compare`` keep their names: their main functions are
``pvae.evaluate.evaluate``, ``pvae.evaluate.ais`` and ``pvae.compare.compare``.
"""
from . import ais, compare, distributed, evaluate
from .ais import AISResult, BDMCResult, ais_log_likelihood, bdmc
from .amortization import GapReport, LocalFit, fit_local, gap_report, refine
from .checkpoint import Checkpoint, load
from .data import MNIST, load_mnist, synthetic
from .datasets import Dataset, load_dataset
from .errors import (CheckpointError, ConfigError, DataError, DivergenceError, PvaeError,
                     StorageError)
from .evaluate import EvalResult, log_likelihood, psis_khat
from .experiment import ExperimentConfig, run
from .guides import GUIDES, LocalGuide, SemiAmortizedGuide
from .hierarchy import UpperLayer
from .likelihoods import LIKELIHOODS
from .compare import CompareRow
from .objectives import IWAE, OBJECTIVES, beta_at, make_loss
from .parts import Guide, Likelihood, Prior
from .priors import PRIORS
from .state import EpochRecord, TrainSettings, TrainState
from .train import fit, make_optimizer, make_step
from .vae import VAE, VAEConfig, beta_handler, build_vae

__version__ = "0.2.0"

__all__ = [
    "VAE", "VAEConfig", "build_vae", "beta_handler", "Prior", "Likelihood", "Guide",
    "UpperLayer",
    "PRIORS", "LIKELIHOODS", "GUIDES", "OBJECTIVES", "make_loss", "beta_at", "IWAE",
    "compare", "CompareRow",
    "fit", "EpochRecord", "TrainState", "TrainSettings", "make_optimizer",
    "make_step", "load", "Checkpoint",
    "LocalGuide", "SemiAmortizedGuide", "fit_local", "refine", "gap_report", "LocalFit", "GapReport",
    "evaluate", "log_likelihood", "EvalResult", "psis_khat",
    "ais", "ais_log_likelihood", "bdmc", "AISResult", "BDMCResult",
    "load_mnist", "MNIST", "synthetic", "load_dataset", "Dataset", "distributed",
    "ExperimentConfig", "run",
    "PvaeError", "DataError", "ConfigError", "CheckpointError", "DivergenceError", "StorageError",
]
