"""vae-runner: a config-driven experiment runner for variational autoencoders."""

__version__ = "0.1.0"
