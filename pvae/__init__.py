"""pvae: Variational Autoencoders written as Pyro probabilistic programs; floors: :data:`LAYERS`."""
from . import evaluate
from .data import DATASETS, MNIST, DataConfig, Dataset, load_dataset, load_mnist, synthetic
from .errors import (CheckpointError, ConfigError, DataError, DivergenceError, PvaeError,
                     StorageError)
from .infer.amortization import GapReport, gap_report, refine
from .infer.annealing import AISResult, BDMCResult, ais, ais_log_likelihood, bdmc
from .infer.results import psis_khat
from .infer.estimators import ESTIMATORS, EvalConfig
from .infer.importance import EvalResult, importance_sampling, log_likelihood
from .infer.localfit import LocalFit, fit_local
from .infer.objectives import IWAE, OBJECTIVES, make_loss
from .model.config import VAEConfig
from .model.guides import GUIDES, LocalGuide, SemiAmortizedGuide
from .model.hierarchy import UpperLayer
from .model.likelihoods import LIKELIHOODS
from .model.parts import Guide, Likelihood, Prior
from .model.priors import PRIORS
from .model.config import beta_handler
from .model.vae import VAE, build_vae
from .runs.comparison import CompareRow, compare
from .runs.config import RunConfig
from .runs.experiment import run
from .training import distributed
from .training.checkpoint import Checkpoint, load
from .training.config import TrainConfig
from .training.loop import fit
from .training.recipes import RECIPES, beta_at
from .training.state import EpochRecord, TrainState
from .training.step import make_optimizer, make_step

__version__ = "0.3.0"

LAYERS = (("errors", "checks", "files", "distributions", "progress"), ("infer",), ("model",),
          ("data",), ("training",), ("runs",), ("evaluate", "__main__"))
"""The package's floors, bottom first: a module imports only from its own floor's earlier
entries (the helpers) or from floors below; inside a folder, from its own folder too."""

__all__ = [
    "VAE", "VAEConfig", "build_vae", "beta_handler", "Prior", "Likelihood", "Guide",
    "UpperLayer", "PRIORS", "LIKELIHOODS", "GUIDES", "OBJECTIVES", "make_loss", "beta_at", "IWAE",
    "RunConfig", "TrainConfig", "EvalConfig", "DataConfig", "RECIPES",
    "compare", "CompareRow", "run",
    "fit", "EpochRecord", "TrainState", "make_optimizer", "make_step", "load", "Checkpoint",
    "LocalGuide", "SemiAmortizedGuide", "fit_local", "refine", "gap_report", "LocalFit",
    "GapReport", "evaluate", "importance_sampling", "log_likelihood", "EvalResult", "psis_khat",
    "ESTIMATORS", "ais", "ais_log_likelihood", "bdmc", "AISResult", "BDMCResult",
    "load_mnist", "MNIST", "synthetic", "load_dataset", "Dataset", "DATASETS", "distributed",
    "PvaeError", "DataError", "ConfigError", "CheckpointError", "DivergenceError", "StorageError",
]
