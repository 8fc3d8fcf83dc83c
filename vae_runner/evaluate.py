"""Every pass over a split without gradients: validation, the posterior report and pictures, the final test report, `vae-eval`.

The maths these passes feed lives in `vae_runner.metrics`. Each pass runs the
model inside `vae_runner.model.evaluating(model)`, which restores the model's previous mode.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from vae_runner.atomic import write_json
from vae_runner.build import Batches, Built, build, planned_steps, validation_weights
from vae_runner.checkpoint import load_checkpoint, load_model_state, seeded_rng
from vae_runner.classifier import MIN_IMAGE_SIZE, cache_dir, classify, load_or_train
from vae_runner.config import Config, validate
from vae_runner.data import SPLIT_SEED, LoadedData, Split, corrupt, make_batches, select_classes, stratified_indices, stratified_subset, to_unit_float
from vae_runner.errors import UserError
from vae_runner.lock import RunLock
from vae_runner.metrics import active_units, auroc, importance_log_likelihood, kl_per_dim, psnr, summarise_bounds
from vae_runner.model import VAE, VAEOutput, evaluating
from vae_runner.objective import Objective, Weights, kl_per_image, objective_terms, sample_log_likelihood
from vae_runner.pictures import (
    anomaly_figure, class_samples_figure, denoising_figure, interpolation, manifold_figure, render, scatter_figure, traversal_figure,
)
from vae_runner.priors import Prior
from vae_runner.progress import Meter
from vae_runner.resume import EVALUATION_CHANGES
from vae_runner.run_dir import RunDir, read_metrics
from vae_runner.sample_quality import classifier_features, frechet_distance, inception_fid, label_accuracy
from vae_runner.tracking import Tracker, prior_latents, reconstruction_grid, samples_grid

log = logging.getLogger(__name__)

# Each Monte Carlo estimate of the final report draws from its own stream (seed + offset),
# so changing K moves test/nll alone, never test/elbo.
NLL_STREAM, ELBO_STREAM, NOISE_STREAM, SAMPLE_STREAM = 0, 1, 2, 3
FD_SAMPLES = 10_000  # eval.fd_samples=auto's ceiling: the usual count of an FID (Heusel et al. 2017)
# The test images the disentanglement metrics and the FD score are a fixed draw, not the run's seed: every run is scored on the same ones.
EVAL_SEED = SPLIT_SEED + 3
NLL_DECODE_SHARE, NLL_MIN_IMAGES = 0.2, 100  # eval.nll_images=auto (see nll_image_count)
# A CVAE's likelihoods are conditional on the true label, and named so.
GIVEN_LABEL = {"nll": "nll_given_label", "nll_se": "nll_given_label_se", "elbo": "elbo_given_label", "bits_per_dim": "bits_per_dim_given_label"}


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def _labels(model: VAE, y: Optional[Tensor]) -> Optional[Tensor]:
    """The labels a conditional model needs; None for an unconditional one."""
    return y if model.num_classes else None


# ------------------------------------------------------------------ validation, every epoch


def validation_terms(
    model: VAE, batches: Batches, *, objective: Objective = Objective(), weights: Weights = Weights(),
    amp_dtype: Optional[torch.dtype] = None, seed: int = 0,
) -> dict[str, float]:
    """Mean of each objective term over a whole split, in nats per image, with the given weights (the run's target beta).

    The posterior samples come from their own seeded generator, so every
    evaluation sees the same noise and training's random stream is untouched.
    """
    g = _generator(batches.device, seed)
    objective = replace(objective, dataset_size=batches.num_samples)  # beta_tc's N: this split's images
    sums: dict[str, Tensor] = {}
    n = 0
    with evaluating(model), torch.autocast(batches.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for x, y in batches.epoch(0):
            eps = torch.randn(objective.samples, x.shape[0], model.latent_dim, generator=g, device=x.device)
            out = model(x, _labels(model, y), eps=eps)
            for name, value in objective_terms(x, out, model.likelihood, objective, weights).items():
                sums[name] = sums.get(name, 0.0) + value.detach() * x.shape[0]
            n += x.shape[0]
    return {name: (total / n).item() for name, total in sums.items()}


@dataclass
class Factors:
    """A split's known generative factors (dsprites): their names and each image's value indices, (N, K) on the CPU."""

    names: list[str]
    values: Tensor


def split_factors(data: LoadedData, split: str) -> Optional[Factors]:
    """The known factors of data's `split` (train, val or test); None for a dataset without them."""
    values = getattr(getattr(data, split), "factors", None)
    return None if values is None else Factors(list(data.info.factors), values)


@dataclass
class Posteriors:
    """q(z|x) over a split, on the CPU: its mean E_q[z|x], its Gaussian stage, and the labels."""

    mean: Tensor  # (N, D): mu, or for a flow the average of FLOW_MEAN_DRAWS seeded draws
    mu: Tensor  # (N, D)
    logvar: Tensor  # (N, D)
    labels: Optional[Tensor]  # (N,) or None


FLOW_MEAN_DRAWS = 32


def collect_posteriors(model: VAE, batches: Batches, seed: int = 0) -> Posteriors:
    """The posteriors of every image of the split, in one pass (a flow's mean from seeded draws)."""
    g = _generator(batches.device, seed)
    out: dict[str, list[Tensor]] = {"mean": [], "mu": [], "logvar": [], "labels": []}
    with evaluating(model):
        for x, y in batches.epoch(0):
            h = model.features(x, _labels(model, y))
            mu, logvar = model.posterior.gaussian(h)
            mean = mu
            if len(model.posterior.flow):
                eps = torch.randn(FLOW_MEAN_DRAWS, x.shape[0], model.latent_dim, generator=g, device=x.device)
                mean = model.posterior(h, eps)[0].mean(dim=0)
            for name, value in (("mean", mean), ("mu", mu), ("logvar", logvar)):
                out[name].append(value.float().cpu())
            if y is not None:
                out["labels"].append(y.cpu())
    if not out["mu"]:
        raise ValueError("collect_posteriors got an empty split: the batches yielded no images")
    labels = torch.cat(out["labels"]) if out["labels"] else None
    return Posteriors(torch.cat(out["mean"]), torch.cat(out["mu"]), torch.cat(out["logvar"]), labels)


@dataclass
class Examples:
    """Fixed validation images (and labels) drawn in every epoch's pictures, and their fixed corruption."""

    x: Tensor  # (n <= 8, C, H, W)
    y: Optional[Tensor]
    noisy: Optional[Tensor] = None

    def labels(self, model: VAE) -> Optional[Tensor]:
        """The labels when the model is conditional, else None."""
        return _labels(model, self.y)


def fixed_examples(split: Split | Dataset, batches: Batches, noise: str, level: float, seed: int, n: int = 8) -> Examples:
    """n validation images drawn across classes with the seed (the first ones streamed, for a folder that streams), with a fixed corruption when denoising."""
    if isinstance(split, Split):
        chosen = stratified_subset(split, n, seed)
        x = to_unit_float(chosen.images.to(batches.device))
        y = None if chosen.labels is None else chosen.labels.to(batches.device)
    else:
        streamed = []
        for batch in batches.epoch(0):
            streamed.append(batch)
            if sum(len(xb) for xb, _ in streamed) >= n:
                break
        x = torch.cat([xb for xb, _ in streamed])[:n]
        y = None if streamed[0][1] is None else torch.cat([yb for _, yb in streamed])[:n]
    noisy = None
    if noise != "none":
        with seeded_rng(seed + NOISE_STREAM, x.device):
            noisy = corrupt(x, noise, level)
    return Examples(x, y, noisy)


def reconstruct(model: VAE, x: Tensor, y: Optional[Tensor]) -> Tensor:
    """Decode the latent code (`model.code`: the posterior mean): the model's reconstruction of x, in [0, 1]."""
    with evaluating(model):
        return model.sample(model.code(x, y), y)


def sample_pictures(tracker: Tracker, model: VAE, examples: Examples, step: int, seed: int, class_names: Sequence[str] = ()) -> None:
    """Fixed validation images over their reconstructions, and samples from the prior at fixed z (a CVAE: one row per class, named)."""
    device = next(model.parameters()).device
    tracker.image("val/reconstructions", reconstruction_grid(examples.x, reconstruct(model, examples.x, examples.labels(model))), step)
    with evaluating(model):
        z, y = prior_latents(model.prior_distribution(), model.num_classes, seed=seed)
        samples = model.sample(z.to(device), None if y is None else y.to(device))
    grid = samples_grid(samples)
    if model.num_classes:
        grid = render(class_samples_figure(grid, samples.shape[-2:], class_names, model.num_classes))
    tracker.image("samples/prior", grid, step)


def posterior_report(
    model: VAE, batches: Batches, tracker: Tracker, step: int, examples: Examples, pictures: bool, class_names: Sequence[str] = (),
    factors: Optional[Factors] = None,
) -> dict[str, float]:
    """Per epoch: active units, posterior histograms, the KL of each latent dimension and, if `pictures`, the latent space drawn.

    Per-dimension KLs exist for a Gaussian posterior under the standard-normal
    prior alone (a flow mixes dimensions, a mixture prior does not factorise): other
    models log no `val_kl_per_dim/` and rank the traversal's dimensions by activity.
    With the split's known `factors`, each traversal row also names the factor its dimension captures best.
    """
    post = collect_posteriors(model, batches)  # (N, D) each, on the CPU
    n_active, activity = active_units(post.mean)
    tracker.scalars("val", {"active_units": n_active}, step)
    tracker.histogram("val/posterior_mean", post.mean, step)
    ranking, score = activity, "var"
    if model.analytic_kl:
        ranking, score = kl_per_dim(post.mu, post.logvar), "KL"
        width = max(2, len(str(model.latent_dim - 1)))
        tracker.scalars("val_kl_per_dim", {f"{d:0{width}d}": v for d, v in enumerate(ranking.tolist())}, step)
        tracker.histogram("val_kl_per_dim/all", ranking, step)
        tracker.histogram("val/posterior_std", torch.exp(0.5 * post.logvar), step)
    if pictures:
        notes = captured_factors(post.mean, factors) if factors is not None and torch.isfinite(post.mean).all() else ()
        latent_pictures(tracker, model, examples, (ranking, score), post.mean, post.labels, step, class_names, notes)
    return {"active_units": float(n_active)}


def captured_factors(codes: Tensor, factors: Factors) -> list[str]:
    """For each latent dimension, the factor it shares the most information with and that share of the factor's entropy: "posX 0.82"."""
    from vae_runner.disentanglement import normalized_mutual_information  # scikit-learn loads when a dataset has factors

    share = normalized_mutual_information(codes.double().numpy(), factors.values.numpy())  # (D, K)
    best = share.argmax(axis=1)
    return [f"{factors.names[k]} {share[d, k]:.2f}" for d, k in enumerate(best)]


def latent_pictures(
    tracker: Tracker, model: VAE, examples: Examples, ranking: tuple[Tensor, str], mu: Tensor, labels: Optional[Tensor], step: int,
    class_names: Sequence[str] = (), notes: Sequence[str] = (),
) -> None:
    """Traversal (dimensions ranked by a (D,) score, named, with `notes` per dimension), interpolation (pairs of the fixed examples;
    none with a single one), scatter, manifold and denoising."""
    y = examples.labels(model)
    traversal = traversal_figure(model, examples.x[:1], None if y is None else y[:1], ranking[0], score=ranking[1], notes=notes)
    tracker.image("latent/traversal", render(traversal), step)
    half = examples.x.shape[0] // 2
    if half:
        pair_y = (None, None) if y is None else (y[:half], y[half : 2 * half])
        tracker.image("latent/interpolation", interpolation(model, examples.x[:half], pair_y[0], examples.x[half : 2 * half], pair_y[1]), step)
    tracker.image("latent/scatter", render(scatter_figure(mu, labels, class_names, images="validation images")), step)
    if model.latent_dim == 2 and not model.num_classes:
        tracker.image("latent/manifold", render(manifold_figure(model)), step)
    if examples.noisy is not None:
        tracker.image("val/denoising", render(denoising_figure(examples.noisy, reconstruct(model, examples.noisy, y), examples.x)), step)


# ------------------------------------------------------------------ the final test report


def _log_weights(model: VAE, x: Tensor, h: Tensor, y: Optional[Tensor], prior: Prior) -> Callable[[Tensor], Tensor]:
    """log p(x|z) + log p(z) - log q(z|x) as a function of the posterior's noise eps (S, B, D) -> (S, B), for these images.

    The encoder's features h and the prior (a VampPrior encodes its pseudo-inputs) come computed once, not once per chunk of samples.
    """

    def log_w(eps: Tensor) -> Tensor:
        out = model.draw(h, y, eps, prior)
        return sample_log_likelihood(model.likelihood, x, out) + out.log_p - out.log_q

    return log_w


def _elbo(model: VAE, x: Tensor, h: Tensor, y: Optional[Tensor], eps: Tensor, prior: Prior) -> tuple[Tensor, Tensor]:
    """Per-image reconstruction term (one z drawn with the noise eps (B, D)) and KL (closed form, or from that z), each (B,)."""
    out: VAEOutput = model.draw(h, y, eps[None], prior)
    return -sample_log_likelihood(model.likelihood, x, out)[0], kl_per_image(out)


def per_image_bounds(
    model: VAE, batches: Batches, k: int = 100, chunk: int = 64, seed: int = 0, nll_rows: Optional[Tensor] = None
) -> dict[str, Tensor]:
    """Per-image `log_px` (IWAE, K samples), `elbo`, `recon`, `kl` in nats and `labels` over one pass, each (N,) on the CPU.

    `elbo` = -(recon + kl) with the KL in closed form where it exists (else from the same z) and the
    reconstruction term from one z ~ q(z|x) (the SGVB estimator B of Kingma & Welling 2013, Sec. 2.3), i.e. the same
    quantity training logs as `val/elbo`. The IWAE samples and the ELBO's sample come
    from two generators seeded apart, so K changes `log_px` alone. `nll_rows` (N,) bool
    picks the images that get the costly `log_px` (NaN for the others; all by default);
    it comes back as `nll_rows`.
    """
    n = batches.num_samples
    nll_rows = torch.ones(n, dtype=torch.bool) if nll_rows is None else nll_rows.cpu()
    out: dict[str, list[Tensor]] = {"log_px": [], "elbo": [], "recon": [], "kl": [], "labels": []}
    g_nll, g_elbo = _generator(batches.device, seed + NLL_STREAM), _generator(batches.device, seed + ELBO_STREAM)
    scored = int(nll_rows.sum())
    what = f"test NLL, K={k}, {n:,} images" if scored == n else f"test ELBO of {n:,} images, NLL (K={k}) of {scored:,}"
    meter = Meter(what, n, unit="images")
    with evaluating(model), meter:
        for x, y in batches.epoch(0):
            yc = _labels(model, y)
            h, prior = model.features(x, yc), model.prior_distribution()
            picked = nll_rows[meter.done : meter.done + x.shape[0]].to(x.device)
            log_px = torch.full((x.shape[0],), math.nan, device=x.device)
            if picked.any():
                log_w = _log_weights(model, x[picked], h[picked], None if yc is None else yc[picked], prior)
                log_px[picked] = importance_log_likelihood(log_w, (int(picked.sum()), model.latent_dim), k, chunk, g_nll, x.device)
            recon, kl = _elbo(model, x, h, yc, torch.randn(x.shape[0], model.latent_dim, generator=g_elbo, device=x.device), prior)
            for name, value in (("log_px", log_px), ("elbo", -(recon + kl)), ("recon", recon), ("kl", kl)):
                out[name].append(value.float().cpu())
            if y is not None:
                out["labels"].append(y.cpu())
            meter.advance(x.shape[0], x.shape[0])
    if not out["elbo"]:
        raise ValueError("evaluation got an empty split: the batches yielded no images")
    return {**{name: torch.cat(values) for name, values in out.items() if values}, "nll_rows": nll_rows}


def nll_image_count(cfg: DictConfig, test_images: int, train_images: int) -> int:
    """How many test images get the importance-sampled NLL: `eval.nll_images` as a number, `all`, or `auto`.

    `auto` keeps the final evaluation in proportion to the training: its K decodes per
    image add up to NLL_DECODE_SHARE of the images training decoded (forward passes only,
    so a few percent of training's cost), and never fewer than NLL_MIN_IMAGES. The count
    follows from the config alone, so the same checkpoint always gets the same images.
    """
    setting, t = cfg.eval.nll_images, cfg.train
    if setting == "all":
        return test_images
    if setting != "auto":
        return min(int(setting), test_images)
    trained = t.epochs * train_images if t.max_steps is None else min(t.epochs * train_images, t.max_steps * t.batch_size)
    return min(test_images, max(NLL_MIN_IMAGES, math.ceil(NLL_DECODE_SHARE * trained / cfg.eval.nll_samples)))


def nll_subset(batches: Batches, n: Optional[int], seed: int, skip: Sequence[int] = ()) -> Tensor:
    """(N,) bool: the `eval.nll_images` test images that get the importance-sampled NLL, balanced over classes, seeded; all when n is None.

    Images of the `skip` classes (held out of training: test/nll leaves them out) are never picked.
    """
    labels = getattr(batches, "labels", None)  # an in-memory split's; a streamed folder's subset is drawn at random
    if labels is None:
        candidates, labels = torch.arange(batches.num_samples), None
    else:
        labels = labels.cpu()
        candidates = (~torch.isin(labels, torch.tensor(list(skip), dtype=labels.dtype))).nonzero().squeeze(1)
        labels = labels[candidates]
    picked = candidates[stratified_indices(labels, len(candidates), n, seed)]
    rows = torch.zeros(batches.num_samples, dtype=torch.bool)
    rows[picked] = True
    return rows


def label_free_elbo(model: VAE, batches: Batches, classes: Sequence[int], seed: int = 0) -> Tensor:
    """For a CVAE, log (1/|C|) sum_{c in C} exp ELBO(x | c) per image, (N,): a score that does not use the image's own label.

    Used to score anomalies: a held-out class's image must not be conditioned on its
    (never trained) label. Each class reuses the same posterior noise.
    """
    g = _generator(batches.device, seed + ELBO_STREAM)
    scores = []
    with evaluating(model):
        prior = model.prior_distribution()  # the same for every batch and class
        for x, _ in batches.epoch(0):
            eps = torch.randn(x.shape[0], model.latent_dim, generator=g, device=x.device)
            elbos = []
            for c in classes:
                y = torch.full((x.shape[0],), c, device=x.device, dtype=torch.long)
                recon, kl = _elbo(model, x, model.features(x, y), y, eps, prior)
                elbos.append(-(recon + kl))
            scores.append((torch.logsumexp(torch.stack(elbos), dim=0) - math.log(len(classes))).float().cpu())
    return torch.cat(scores)


def test_report(model: VAE, batches: Batches, tracker: Tracker, step: int, cfg: DictConfig, nll_images: Optional[int] = None) -> dict[str, float]:
    """The final evaluation on the test split: importance-sampled NLL, anomaly AUROC and denoising PSNR, as `test/...` metrics.

    `nll_images` of the test images get the NLL (all by default). For a CVAE the likelihoods
    are conditional on the true label: they are named `test/nll_given_label`,
    `test/elbo_given_label` and `test/bits_per_dim_given_label`.
    """
    d, seed = cfg.dataset, cfg.seed
    rows = nll_subset(batches, nll_images, seed + NLL_STREAM, skip=d.holdout_classes)
    bounds = per_image_bounds(model, batches, k=cfg.eval.nll_samples, chunk=cfg.eval.nll_chunk, seed=seed, nll_rows=rows)
    held_out = torch.zeros(len(bounds["elbo"]), dtype=torch.bool)
    if d.holdout_classes and "labels" in bounds:
        held_out = torch.isin(bounds["labels"], torch.tensor(list(d.holdout_classes)))
    num_dims = model.in_channels * model.image_size**2
    summary = summarise_bounds(bounds, num_dims, continuous=not model.likelihood.discrete, mask=~held_out)
    if model.num_classes:
        summary = {GIVEN_LABEL.get(k, k): v for k, v in summary.items()}
    metrics = {f"test/{name}": value for name, value in summary.items()}
    if held_out.any():
        metrics["test/anomaly_auroc"] = _anomaly_auroc(model, batches, bounds, held_out, tracker, step, cfg)
    if d.noise != "none":
        metrics.update(_denoising(model, batches, d.noise, d.noise_level, tracker, step, seed))
    return metrics


def _anomaly_auroc(model: VAE, batches: Batches, bounds: dict[str, Tensor], held_out: Tensor, tracker: Tracker, step: int, cfg: DictConfig) -> float:
    """AUROC of the negative ELBO telling held-out classes from the rest; a CVAE's ELBO is averaged over the training labels."""
    if model.num_classes:
        trained = [c for c in range(model.num_classes) if c not in set(cfg.dataset.holdout_classes)]
        score = -label_free_elbo(model, batches, trained, cfg.seed)
    else:
        score = -bounds["elbo"]  # higher is more anomalous
    tracker.histogram("test/anomaly_score/normal", score[~held_out], step)
    tracker.histogram("test/anomaly_score/held_out", score[held_out], step)
    area = auroc(score[held_out], score[~held_out])
    tracker.image("test/anomaly_scores", render(anomaly_figure(score[~held_out], score[held_out], area, list(cfg.dataset.holdout_classes))), step)
    return area


def _denoising(model: VAE, batches: Batches, noise: str, level: float, tracker: Tracker, step: int, seed: int) -> dict[str, float]:
    """PSNR of the reconstructions of noisy test images against the clean ones, beside the noisy inputs' own PSNR."""
    recon_psnr, noisy_psnr, first = [], [], None
    with seeded_rng(seed + NOISE_STREAM, batches.device):  # reconstructions draw no noise: the corruption alone uses this stream
        for x, y in batches.epoch(0):
            noisy = corrupt(x, noise, level)
            recon = reconstruct(model, noisy, _labels(model, y))
            # Capped at 100 dB: an image the noise left untouched would otherwise give inf and an infinite mean.
            recon_psnr.append(psnr(recon, x).clamp(max=100.0).cpu())
            noisy_psnr.append(psnr(noisy, x).clamp(max=100.0).cpu())
            if first is None:
                first = (noisy, recon, x)
    tracker.image("test/denoising", render(denoising_figure(*first)), step)
    return {"test/psnr_recon": torch.cat(recon_psnr).mean().item(), "test/psnr_noisy": torch.cat(noisy_psnr).mean().item()}


def final_report(
    built: Built, cfg: DictConfig, tracker: Tracker, step: int, val: Optional[dict[str, float]] = None, schedule_steps: Optional[int] = None
) -> dict[str, float]:
    """Validation terms and posterior statistics (unless given: the last epoch's), the test report, and the time it took (`test/seconds`).

    `schedule_steps` is the span of the run's schedules (its checkpoint's; the config's plan by default).
    """
    start = time.perf_counter()
    model = built.model
    if val is None:
        weights = validation_weights(cfg, schedule_steps or planned_steps(cfg, built.steps_per_epoch), step)
        val = validation_terms(model, built.val, objective=built.objective, weights=weights, amp_dtype=built.amp_dtype, seed=cfg.seed)
        examples = fixed_examples(built.data.val, built.val, cfg.dataset.noise, cfg.dataset.noise_level, cfg.seed)
        val.update(posterior_report(model, built.val, tracker, step, examples, pictures=False))
    metrics = {f"val/{k}": v for k, v in val.items()}
    nll_images = nll_image_count(cfg, built.test.num_samples, built.train.num_samples)
    metrics.update(test_report(model, built.test, tracker, step, cfg, nll_images))
    factors = split_factors(built.data, "test")
    if factors is not None:
        metrics.update(disentanglement(model, built.data.test, cfg.train.batch_size, factors, cfg.eval.disentanglement_images))
    if cfg.eval.sample_quality:
        metrics.update(sample_quality(model, built, cfg))
    tracker.scalars("test", {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}, step)
    metrics["test/seconds"] = time.perf_counter() - start
    return metrics


# ------------------------------------------------------------------ what the model learned: factors, and samples


def disentanglement(model: VAE, test: Split, batch_size: int, factors: Factors, images: int) -> dict[str, float]:
    """MIG, DCI, SAP and the FactorVAE score of `images` test images' posterior means against their known factors (`vae_runner.disentanglement`).

    The images are a fixed draw (EVAL_SEED), so runs of any seed are scored on the same
    ones; a CVAE is not scored on the factor its label gives it (dsprites' shape).
    """
    from vae_runner.disentanglement import MIN_IMAGES, disentanglement_report  # scikit-learn loads when a dataset has factors

    if len(test) < MIN_IMAGES:
        log.info("test/mig skipped: the disentanglement metrics need at least %d test images, and there are %d", MIN_IMAGES, len(test))
        return {}
    rows = stratified_indices(None, len(test), images, EVAL_SEED)
    picked = test.index(rows)
    codes = collect_posteriors(model, make_batches(picked, batch_size, next(model.parameters()).device, shuffle=False)).mean  # (n, D)
    values, names = factors.values[rows], factors.names
    if model.num_classes and picked.labels is not None:
        given = [k for k in range(values.shape[1]) if torch.equal(values[:, k], picked.labels)]
        values, names = values[:, [k for k in range(values.shape[1]) if k not in given]], [n for k, n in enumerate(names) if k not in given]
    if not torch.isfinite(codes).all():
        log.warning("test/mig skipped: some posterior means are not finite")
        return {}
    report = disentanglement_report(codes.double().numpy(), values.numpy(), seed=EVAL_SEED, samples=len(rows))
    log.info("disentanglement scored against %s on %d test images", ", ".join(names), len(rows))
    return {f"test/{name}": float(value) for name, value in report.items()}


def sample_quality(model: VAE, built: Built, cfg: DictConfig) -> dict[str, float]:
    """`test/fd` (and `test/fid` with local Inception weights) of n prior samples against n test images; a CVAE's `test/cvae_label_accuracy`.

    Features and labels come from a small classifier trained once on the run's
    training split and cached (`vae_runner.classifier`). The test images are a fixed
    draw (EVAL_SEED) of the classes trained on; binarised data gets binary samples.
    When there can be no classifier, the measures are skipped with one line.
    """
    data, d = built.data, cfg.dataset
    test = data.test if not d.holdout_classes or not isinstance(data.test, Split) else select_classes(data.test, d.holdout_classes, keep=False)
    why = _no_sample_quality(data, test)
    if why:
        log.info("test/fd skipped: %s", why)
        return {}
    device = built.device
    classifier = load_or_train(
        data.train, test, dataset=data.info.name, num_classes=data.info.num_classes, cache_dir=cache_dir(cfg.eval.cache_dir), seed=0, device=device,
    )
    n = fd_sample_count(cfg.eval.fd_samples, len(test))
    classes = [c for c in range(model.num_classes) if c not in set(d.holdout_classes)]
    samples, intended = prior_samples(model, n, cfg.seed + SAMPLE_STREAM, classes, binary=d.binarize != "none")
    real = stratified_subset(test, n, EVAL_SEED).images  # (n, C, H, W) uint8
    metrics = {
        "test/fd": frechet_distance(classifier_features(classifier.net, real, device), classifier_features(classifier.net, samples, device)),
        "test/fd_samples": float(n),
        "test/classifier_accuracy": classifier.test_accuracy,
    }
    if intended is not None:
        metrics["test/cvae_label_accuracy"] = label_accuracy(classify(classifier.net, samples, device), intended, model.num_classes)
    if cfg.eval.inception_weights:
        metrics["test/fid"] = inception_fid(Path(cfg.eval.inception_weights).expanduser(), real, samples, device=device)
    else:
        log.info("test/fid skipped: eval.inception_weights is not set (the Inception weights cannot be downloaded offline)")
    return metrics


def _no_sample_quality(data: LoadedData, test: Split | Dataset) -> str:
    """Why this data can have no sample-quality classifier; empty when it can."""
    if not (isinstance(data.train, Split) and isinstance(test, Split)):
        return "the sample-quality classifier trains on images in memory, and these stream from disk"
    if data.train.labels is None:
        return "the sample-quality classifier needs class labels, and these images have none"
    if data.info.image_size < MIN_IMAGE_SIZE:
        return f"the sample-quality classifier needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px"
    if len(test) < 2:
        return "a Fréchet distance needs at least 2 test images"
    return ""


def fd_sample_count(setting: int | str, test_images: int) -> int:
    """`eval.fd_samples`, at most the test images, so both sides of the FD hold as many; `auto`: at most FD_SAMPLES."""
    return min(FD_SAMPLES if setting == "auto" else int(setting), test_images)


def prior_samples(model: VAE, n: int, seed: int, classes: Sequence[int] = (), binary: bool = False, chunk: int = 1000) -> tuple[Tensor, Optional[Tensor]]:
    """n images decoded from the prior (the likelihood's mean; with `binary`, Bernoulli draws from it) on the CPU, and for a CVAE
    the class each was drawn for, cycling through `classes`."""
    g, cpu = torch.Generator().manual_seed(seed), torch.device("cpu")
    y = torch.tensor(list(classes))[torch.arange(n) % len(classes)] if model.num_classes else None
    device = next(model.parameters()).device
    images = []
    with evaluating(model):
        z = model.prior_distribution().sample(n, g, device=cpu)  # (n, D)
        for start in range(0, n, chunk):
            yc = None if y is None else y[start : start + chunk].to(device)
            images.append(model.sample(z[start : start + chunk].to(device), yc).float().cpu())
    x = torch.cat(images)
    return (torch.bernoulli(x, generator=g) if binary else x), y


def split_sizes(built: Built) -> dict[str, float]:
    """How many images each split holds, for metrics.json."""
    return {f"data/{name}_images": float(b.num_samples) for name, b in (("train", built.train), ("val", built.val), ("test", built.test))}


# ------------------------------------------------------------------ vae-eval


def evaluate_run(run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Recompute a run's final metrics from its checkpoint and saved config (plus overrides such as `eval.nll_samples=5000`).

    Writes them to the run's TensorBoard at the checkpoint's step and merges them into its metrics.json.
    """
    run = RunDir(run_dir)
    if not run.checkpoint.is_file() or not run.config.is_file():
        raise UserError(
            f"{run_dir} is not a vae-run run directory (it needs .hydra/config.yaml and checkpoints/last.pt); "
            f"pass a folder under outputs/runs/ or outputs/sweeps/<time>/."
        )
    previous = read_metrics(run.metrics) if run.metrics.is_file() else {}  # a corrupt file is refused before the work
    previous = {k: v for k, v in previous.items() if not k.startswith("test/")}  # recomputed here; none may linger (test/nll_se)
    overrides = [o.lstrip("+") for o in overrides]
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or not key.startswith(EVALUATION_CHANGES):
            raise UserError(
                f"vae-eval cannot apply {override}: it may change only eval.*, device, precision and where the data is "
                f"(dataset.root, dataset.path), so that the metrics still describe the run; train a new run for the rest."
            )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run.config), OmegaConf.from_dotlist(overrides))
    except Exception as err:  # unknown key, wrong type: OmegaConf's errors
        raise UserError(f"cannot apply {' '.join(overrides) or 'the saved config'}: {str(err).splitlines()[0]}; check the keys against README.") from None
    validate(cfg)
    with RunLock(run.lock, str(run_dir)):
        built = build(cfg)
        saved = load_checkpoint(run.checkpoint)
        load_model_state(built.model, saved["model"], run.checkpoint)
        tracker = Tracker(run.tensorboard, pictures=run.pictures)
        try:
            metrics = final_report(built, cfg, tracker, saved["step"], schedule_steps=saved.get("schedule_steps"))
        finally:
            tracker.close()
        merged = {**previous, **metrics, **split_sizes(built)}
        write_json(run.metrics, merged)
    return merged
