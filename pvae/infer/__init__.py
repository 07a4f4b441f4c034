"""Inference on any Pyro model/guide pair whose local latents live in the ``"data"`` plate;
what it needs of a VAE (never :mod:`pvae.model` itself) comes through :mod:`pvae.infer.host`."""
