"""The names of the model's choices, one tuple per config key; kept free of torch so the config is checked before torch loads."""

ARCHS = ("mlp", "conv", "resnet")  # model.arch (vae_runner.nets)
POSTERIORS = ("gaussian", "planar", "iaf")  # model.posterior (vae_runner.posteriors)
PRIORS = ("normal", "vamp", "mog")  # model.prior (vae_runner.priors)
OBJECTIVES = ("elbo", "iwae", "beta_tc", "capacity")  # model.objective (vae_runner.objective)
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian", "discretized_logistic")  # model.likelihood (vae_runner.likelihoods)


def closed_form_kl(posterior: str, prior: str) -> bool:
    """Whether KL(q(z|x) || p(z)) has a closed form, per latent dimension: a Gaussian posterior under the standard-normal prior."""
    return posterior == "gaussian" and prior == "normal"
