"""vae-runner's Hydra launcher `hydra/launcher=stacked` (a package under hydra_plugins, where Hydra looks for plugins)."""
