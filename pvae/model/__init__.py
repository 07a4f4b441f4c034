"""The VAE and its swappable parts: protocols, the model's configuration, priors, guides,
likelihoods, the upper stochastic layer and plain networks."""
