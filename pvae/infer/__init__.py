"""Inference on any Pyro model/guide pair whose local latents live in the ``"data"`` plate:
importance log-weights, objectives, importance sampling, local fits, the amortization gap,
HMC, AIS and BDMC, their diagnostics, and one registry of estimators. Imports nothing from
:mod:`pvae.model`; what it needs from a VAE comes through :mod:`pvae.infer.host`."""
