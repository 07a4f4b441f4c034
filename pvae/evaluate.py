"""The estimators of log p(x) in one place: importance sampling (:func:`log_likelihood`,
:func:`importance_sampling`), AIS (:func:`ais`, :func:`ais_log_likelihood`), BDMC (:func:`bdmc`),
their results and the registry :data:`ESTIMATORS` (docs/evaluation.rst)."""
from .infer.annealing import AISResult, BDMCResult, ais, ais_log_likelihood, bdmc
from .infer.results import KHAT_BAD, psis_khat
from .infer.estimators import ESTIMATORS, EvalConfig
from .infer.importance import (DEFAULT_BATCH_SIZE, PROPOSALS, EvalResult, importance_sampling,
                               fitted_proposal, log_likelihood)
from .infer.logweights import DEFAULT_CHUNK_SIZE
from .infer.results import Estimate

__all__ = ["log_likelihood", "importance_sampling", "EvalResult", "fitted_proposal",
           "ais", "ais_log_likelihood", "bdmc", "AISResult", "BDMCResult", "Estimate",
           "ESTIMATORS", "EvalConfig", "psis_khat", "KHAT_BAD", "DEFAULT_CHUNK_SIZE",
           "DEFAULT_BATCH_SIZE", "PROPOSALS"]
