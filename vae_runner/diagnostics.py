"""What a run shows about its model: posterior statistics and latent pictures per epoch, and the final test report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from vae_runner.checkpoint import seeded_rng
from vae_runner.data import StreamingBatches, TensorBatches, corrupt
from vae_runner.evaluation import active_units, auroc, collect_posteriors, kl_per_dim, per_image_bounds, psnr, summarise_bounds
from vae_runner.model import VAE
from vae_runner.pictures import denoising_grid, interpolation, latent_scatter, latent_traversal, manifold_grid
from vae_runner.tracking import Tracker, reconstruction_grid, samples_grid


@dataclass
class Examples:
    """Fixed test images (and labels) drawn in every epoch's pictures, and their fixed corruption."""

    x: Tensor  # (8, C, H, W)
    y: Optional[Tensor]
    noisy: Optional[Tensor] = None

    def labels(self, model: VAE) -> Optional[Tensor]:
        """The labels when the model is conditional, else None."""
        return self.y if model.num_classes else None


def posterior_report(model: VAE, batches: TensorBatches, tracker: Tracker, step: int, examples: Examples, pictures: bool) -> dict[str, float]:
    """Per epoch: KL of each latent dimension, active units, posterior histograms and, if `pictures`, the latent space drawn."""
    mu, logvar, labels = collect_posteriors(model, batches)  # (N, D) each, on the CPU
    kl_d = kl_per_dim(mu, logvar)
    n_active, _ = active_units(mu)
    width = max(2, len(str(model.latent_dim - 1)))
    tracker.scalars("val/kl_per_dim", {f"{d:0{width}d}": v for d, v in enumerate(kl_d.tolist())}, step)
    tracker.scalars("val", {"active_units": n_active}, step)
    tracker.histogram("val/kl_per_dim", kl_d, step)
    tracker.histogram("val/posterior_mean", mu, step)
    tracker.histogram("val/posterior_std", torch.exp(0.5 * logvar), step)
    if pictures:
        y = examples.labels(model)
        half = examples.x.shape[0] // 2
        tracker.image("latent/traversal", latent_traversal(model, examples.x[:1], None if y is None else y[:1], kl_d), step)
        pairs_y = (None, None) if y is None else (y[:half], y[half : 2 * half])
        tracker.image("latent/interpolation", interpolation(model, examples.x[:half], pairs_y[0], examples.x[half : 2 * half], pairs_y[1]), step)
        tracker.image("latent/scatter", latent_scatter(mu, labels, num_classes=max(10, model.num_classes)), step)
        if model.latent_dim == 2 and not model.num_classes:
            tracker.image("latent/manifold", manifold_grid(model), step)
        if examples.noisy is not None:
            tracker.image("val/denoising", denoising_grid(examples.noisy, reconstruct(model, examples.noisy, y), examples.x), step)
    return {"active_units": float(n_active)}


@torch.no_grad()
def reconstruct(model: VAE, x: Tensor, y: Optional[Tensor]) -> Tensor:
    """Decode the posterior mean: the model's reconstruction of x, in [0, 1]."""
    was_training = model.training
    model.eval()
    mu, _ = model.encode(x, y)
    out = model.sample(mu, y)
    model.train(was_training)
    return out


def fixed_examples(batches: TensorBatches | StreamingBatches, noise: str, level: float, seed: int, n: int = 8) -> Examples:
    """The first n validation images, with a fixed corruption when denoising."""
    x, y = next(iter(batches.epoch(0)))
    x, y = x[:n], None if y is None else y[:n]
    noisy = None
    if noise != "none":
        with seeded_rng(seed, x.device):
            noisy = corrupt(x, noise, level)
    return Examples(x, y, noisy)


def sample_pictures(tracker: Tracker, model: VAE, examples: Examples, z: Tensor, z_labels: Optional[Tensor], step: int) -> None:
    """Fixed test images over their reconstructions, and samples from the prior at fixed z (a CVAE: one row per class)."""
    device = next(model.parameters()).device
    tracker.image("val/reconstructions", reconstruction_grid(examples.x, reconstruct(model, examples.x, examples.labels(model))), step)
    samples = model.sample(z.to(device), None if z_labels is None else z_labels.to(device))
    tracker.image("samples/prior", samples_grid(samples), step)


def test_report(
    model: VAE,
    batches: TensorBatches,
    tracker: Tracker,
    step: int,
    *,
    nll_samples: int,
    nll_chunk: int,
    holdout_classes: Sequence[int] = (),
    noise: str = "none",
    noise_level: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """The final evaluation on the test split: importance-sampled NLL, anomaly AUROC and denoising PSNR, logged as `test/...`."""
    with seeded_rng(seed, batches.device):
        bounds = per_image_bounds(model, batches, k=nll_samples, chunk=nll_chunk)
        labels = batches.labels.cpu() if batches.labels is not None else None
        held_out = torch.zeros(len(bounds["elbo"]), dtype=torch.bool)
        if holdout_classes and labels is not None:
            held_out = torch.isin(labels, torch.tensor(list(holdout_classes)))
        num_dims = model.in_channels * model.image_size**2
        summary = summarise_bounds(bounds, num_dims, continuous=model.likelihood == "gaussian", mask=~held_out)
        metrics = {f"test/{name}": value for name, value in summary.items()}
        if held_out.any():
            score = -bounds["elbo"]  # the negative ELBO: higher is more anomalous
            metrics["test/anomaly_auroc"] = auroc(score[held_out], score[~held_out])
            tracker.histogram("test/anomaly_score/normal", score[~held_out], step)
            tracker.histogram("test/anomaly_score/held_out", score[held_out], step)
        if noise != "none":
            metrics.update(_denoising(model, batches, noise, noise_level, tracker, step))
    tracker.scalars("test", {k.split("/", 1)[1]: v for k, v in metrics.items()}, step)
    return metrics


@torch.no_grad()
def _denoising(model: VAE, batches: TensorBatches, noise: str, level: float, tracker: Tracker, step: int) -> dict[str, float]:
    """PSNR of the reconstructions of noisy test images against the clean ones, beside the noisy inputs' own PSNR."""
    recon_psnr, noisy_psnr, first = [], [], None
    for x, y in batches.epoch(0):
        y = y if model.num_classes else None
        noisy = corrupt(x, noise, level)
        recon = reconstruct(model, noisy, y)
        # Capped at 100 dB: an image the noise left untouched would otherwise give inf and an infinite mean.
        recon_psnr.append(psnr(recon, x).clamp(max=100.0).cpu())
        noisy_psnr.append(psnr(noisy, x).clamp(max=100.0).cpu())
        if first is None:
            first = (noisy, recon, x)
    tracker.image("test/denoising", denoising_grid(*first), step)
    return {"test/psnr_recon": torch.cat(recon_psnr).mean().item(), "test/psnr_noisy": torch.cat(noisy_psnr).mean().item()}
