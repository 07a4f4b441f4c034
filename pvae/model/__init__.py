"""The VAE and its swappable parts: protocols, configuration, priors, guides, likelihoods, nets."""
