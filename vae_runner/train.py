"""The training loop: one function, every device, every preset."""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from vae_runner import distributed
from vae_runner.atomic import write_json
from vae_runner.checkpoint import environment, load_checkpoint, load_model_state, rng_state, save_checkpoint, seeded_rng, set_rng_state
from vae_runner.config import Config, swept_keys, validate
from vae_runner.data import (
    DatasetInfo,
    LoadedData,
    Split,
    StreamingBatches,
    TensorBatches,
    binarize_split,
    corrupt,
    load_dataset,
    make_batches,
    select_classes,
    take,
)
from vae_runner.diagnostics import fixed_examples, posterior_report, sample_pictures, test_report
from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.objective import elbo_terms, kl_weight
from vae_runner.tracking import Tracker, prior_latents

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} was asked for but no CUDA GPU is available; use device=auto or device=cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s); use cuda:0.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} was asked for but MPS is not available; use device=auto or device=cpu.")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA where supported, else fp16 with a GradScaler; fp32 on the CPU.

    On the CPU bf16 autocast ran about 6x slower than fp32 on the 2-core machine
    we measured (no native bf16 instructions), so fp32 is the CPU default.
    """
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; use precision=fp16 or auto.")
    if name == "fp16" and device.type == "cpu":
        raise UserError("precision=fp16 is not supported on the CPU; use precision=fp32 or bf16 there.")
    return name


def build_model(model_cfg: DictConfig, info: DatasetInfo) -> VAE:
    """The VAE for these images: `arch=auto` is conv for colour images and mlp for greyscale."""
    arch = model_cfg.arch if model_cfg.arch != "auto" else ("conv" if info.channels > 1 else "mlp")
    if model_cfg.conditional and info.num_classes == 0:
        raise UserError(
            f"model={model_cfg.name} is conditional but dataset={info.name} has no labels; "
            f"use class subfolders in the image folder, or model=vae."
        )
    return VAE(
        in_channels=info.channels,
        image_size=info.image_size,
        latent_dim=model_cfg.latent_dim,
        arch=arch,
        hidden_dims=list(model_cfg.hidden_dims),
        conv_channels=list(model_cfg.conv_channels),
        num_classes=info.num_classes if model_cfg.conditional else 0,
        likelihood=model_cfg.likelihood,
    )


def load_data(cfg: DictConfig) -> LoadedData:
    """The dataset named by the config, binarised and with classes held out as it asks.

    The test split (the final evaluation's) keeps the held-out classes: they are
    the anomalies. Dynamic binarisation resamples the training pixels in every
    batch; the validation and test images are binarised once, with the seed.
    """
    d = cfg.dataset
    data = load_dataset(
        d.name, root=d.root, path=d.path, image_size=d.image_size, channels=d.channels,
        train_samples=d.train_samples, val_samples=d.val_samples, val_fraction=d.val_fraction,
        max_memory_mb=d.max_memory_mb, num_workers=d.num_workers, seed=cfg.seed,
    )
    if (d.binarize != "none" or d.holdout_classes) and not isinstance(data.train, Split):
        raise UserError("dataset.binarize and dataset.holdout_classes need the images in memory; raise dataset.max_memory_mb.")
    if d.binarize != "none":
        data.val = binarize_split(data.val, cfg.seed)
        if d.binarize == "static":
            data.train = binarize_split(data.train, cfg.seed + 1)
    data.test = take(data.val, cfg.eval.test_samples) if isinstance(data.val, Split) else data.val
    if d.holdout_classes:
        unknown = sorted(set(d.holdout_classes) - set(range(data.info.num_classes)))
        if unknown:
            raise UserError(f"dataset.holdout_classes={list(d.holdout_classes)} names classes {unknown} that {d.name} lacks; use 0..{data.info.num_classes - 1}.")
        data.train = select_classes(data.train, d.holdout_classes, keep=False)
        data.val = select_classes(data.val, d.holdout_classes, keep=False)
    return data


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): the same seed gives the same run on the CPU."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 1  # the epoch in progress, or the next to run once one is complete
    batches_done: int = 0  # batches of `epoch` already trained
    images_seen: int = 0
    step_seconds: float = 0.0  # time inside training steps, all sessions
    seconds: float = 0.0  # wall time of earlier sessions of this run
    skipped_steps: int = 0
    last_finite_loss: float = math.nan
    last_finite_step: int = 0


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(Exception):
    """Too many non-finite steps in a row."""


class StopSignals:
    """SIGINT, SIGTERM and SIGUSR1/2 (cluster pre-emption) ask the loop to stop after the current step; a second one stops at once."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def forward(self) -> None:
        """Hand the signal on to the handler that was there before, once the checkpoint is saved.

        Under submitit that handler requeues the job, which then resumes from the checkpoint.
        """
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: stopping after the current step (send it again to stop at once)", signal.Signals(signum).name)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train the configured VAE in `run_dir`, resuming from its checkpoint if it has one; returns the final metrics."""
    seed_everything(cfg.seed)
    device = distributed.device_for_rank(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    amp_dtype = AMP_DTYPES[precision]
    main, world = distributed.is_main(), distributed.world_size()
    data = load_data(cfg)
    if cfg.train.batch_size > len(data.train):
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(data.train)} images); use a smaller batch size."
        )
    model = build_model(cfg.model, data.info).to(device)
    # Under torchrun: gradients averaged across ranks; `model` stays the plain module for evaluation and checkpoints.
    trained = DistributedDataParallel(model) if world > 1 else model
    optimizer = instantiate(cfg.optim)(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    d = cfg.dataset
    train_batches = make_batches(data.train, cfg.train.batch_size, device, True, cfg.seed, d.num_workers, binarize=d.binarize == "dynamic")
    val_batches, test_batches = eval_batches(cfg, data, device)

    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    progress = Progress()
    if checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        load_model_state(model, saved["model"], checkpoint_path)
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        progress = Progress(**{k: saved[k] for k in Progress.__dataclass_fields__ if k in saved})
        set_rng_state(saved["rng"])
        log.info("resuming from %s at step %d (epoch %d, batch %d)", checkpoint_path, progress.step, progress.epoch, progress.batches_done)
    if main:
        write_json(run_dir / "environment.json", environment())

    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s (%s, %s params) on %s: %d train / %d val images of %dx%dx%d, device %s, precision %s",
        cfg.model.name, model.arch, f"{n_params:,}", data.info.name, train_batches.num_samples,
        val_batches.num_samples, data.info.channels, data.info.image_size, data.info.image_size, device, precision,
    )

    # On resume, TensorBoard drops the events logged after the checkpoint: curves continue without duplicated points.
    tracker = Tracker(run_dir / "tensorboard" if main else None, purge_step=progress.step + 1 if progress.step else None)
    if progress.step == 0:
        hparams = _hparams(cfg, model.arch)
        tracker.hparams(hparams, shown=_shown_hparams(hparams))
        tracker.layout()
    z_fixed, y_fixed = prior_latents(model.latent_dim, model.num_classes, seed=cfg.seed)
    examples = fixed_examples(val_batches, d.noise, d.noise_level, cfg.seed)
    session_start = time.perf_counter()

    def checkpoint(batches_done: int) -> None:
        """Save everything needed to continue from here, exactly (rank 0 writes it)."""
        progress.batches_done = batches_done
        if not main:
            return
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True), "rng": rng_state(),
            **asdict(progress), "seconds": progress.seconds + time.perf_counter() - session_start,
        }
        save_checkpoint(checkpoint_path, state, model)

    t, m = cfg.train, cfg.model
    beta_at = beta_schedule(cfg, len(train_batches))

    def finished() -> bool:
        return progress.epoch > t.epochs or (t.max_steps is not None and progress.step >= t.max_steps)

    consecutive_skips = 0
    last_val: Optional[dict[str, float]] = None  # the last epoch's validation, reused by the final report
    try:
        with StopSignals() as stop:
            while not finished():
                model.train()
                t_epoch, epoch_images, start_batch = time.perf_counter(), 0, progress.batches_done
                for i, (x, y) in enumerate(train_batches.epoch(progress.epoch, start_batch=start_batch)):
                    beta = beta_at(progress.step)
                    x_in = corrupt(x, d.noise, d.noise_level) if d.noise != "none" else x  # denoising: noisy in, clean target
                    n, eps, weight = x.shape[0], None, 1.0
                    if world > 1:
                        # Every rank draws the whole batch's random numbers alike and keeps its rows, so the run
                        # follows the single-process one; the weight makes the averaged gradient the batch mean's.
                        rows = distributed.shard(n)
                        eps = torch.randn(n, model.latent_dim, device=x.device)[rows]
                        x, x_in, y = x[rows], x_in[rows], None if y is None else y[rows]
                        weight = x.shape[0] * world / n
                    terms = train_step(
                        trained, optimizer, scaler, x_in, y, target=x, beta=beta, free_bits=m.free_bits,
                        amp_dtype=amp_dtype, grad_clip=t.grad_clip, eps=eps, weight=weight,
                    )
                    progress.step += 1
                    epoch_images += n
                    if terms is None:
                        progress.skipped_steps += 1
                        consecutive_skips += 1
                        tracker.scalars("train", {"skipped_steps": progress.skipped_steps}, progress.step)
                        if consecutive_skips >= t.max_skipped_steps:
                            raise TrainingDiverged(_divergence_message(progress, consecutive_skips))
                    else:
                        consecutive_skips = 0
                        progress.last_finite_loss, progress.last_finite_step = terms["loss"].item(), progress.step
                        if progress.step % t.log_every_steps == 0 or progress.step == 1:
                            logged = distributed.mean_over_ranks({k: terms[k] for k in ("loss", "recon", "kl")}, x.shape[0])
                            tracker.scalars("train", {**logged, "grad_norm": terms["grad_norm"], "beta": beta}, progress.step)
                    if distributed.any_rank(stop.signum is not None):
                        checkpoint(start_batch + i + 1)
                        stop.forward()
                        signum = stop.signum or signal.SIGTERM  # another rank got it
                        raise Interrupted(signum, _interrupt_message(signum, progress.step, checkpoint_path, run_dir))
                    if t.checkpoint_every_steps and progress.step % t.checkpoint_every_steps == 0:
                        checkpoint(start_batch + i + 1)
                    if t.max_steps is not None and progress.step >= t.max_steps:
                        break
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - t_epoch
                progress.step_seconds += seconds
                progress.images_seen += epoch_images
                if epoch_images:
                    tracker.scalars("train", {"images_per_s": epoch_images / seconds}, progress.step)

                if main:  # the other ranks wait at the barrier
                    val = evaluate(model, val_batches, beta=beta_at(progress.step), amp_dtype=amp_dtype, seed=cfg.seed)
                    tracker.scalars("val", val, progress.step)
                    pictures = progress.epoch % t.image_every_epochs == 0 or progress.epoch == t.epochs
                    if pictures:
                        sample_pictures(tracker, model, examples, z_fixed, y_fixed, progress.step)
                    val.update(posterior_report(model, val_batches, tracker, progress.step, examples, pictures))
                    last_val = val
                    log.info(
                        "epoch %d/%d  step %d  train/loss %.2f  val/loss %.2f (recon %.2f, kl %.2f)  %s img/s",
                        progress.epoch, t.epochs, progress.step, progress.last_finite_loss, val["loss"], val["recon"],
                        val["kl"], f"{epoch_images / max(seconds, 1e-9):,.0f}",
                    )
                distributed.barrier()
                batches_done = start_batch + i + 1 if epoch_images else start_batch
                if batches_done >= len(train_batches):  # the epoch is complete (not cut short by max_steps)
                    progress.epoch, batches_done = progress.epoch + 1, 0
                checkpoint(batches_done)
                if distributed.any_rank(stop.signum is not None):
                    stop.forward()
                    signum = stop.signum or signal.SIGTERM
                    raise Interrupted(signum, _interrupt_message(signum, progress.step, checkpoint_path, run_dir))
        if not main:
            distributed.barrier()
            return {}
        metrics = final_metrics(model, val_batches, test_batches, tracker, cfg, progress.step, beta_at(progress.step), amp_dtype, last_val)
    finally:
        tracker.close()
    metrics.update(
        {
            "train/seconds": progress.seconds + time.perf_counter() - session_start,
            "train/images_per_s": progress.images_seen / max(progress.step_seconds, 1e-9),
            "train/steps": progress.step,
            "train/epochs": min(progress.epoch, t.epochs),
            "train/skipped_steps": progress.skipped_steps,
        }
    )
    write_json(run_dir / "metrics.json", metrics)
    distributed.barrier()
    return metrics


def evaluate_run(run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Recompute a run's final metrics from its checkpoint and saved config (plus overrides such as `eval.nll_samples=5000`).

    Writes them to the run's TensorBoard at the checkpoint's step and merges them into its metrics.json.
    """
    checkpoint_path, config_path = run_dir / "checkpoints" / "last.pt", run_dir / ".hydra" / "config.yaml"
    if not checkpoint_path.is_file() or not config_path.is_file():
        raise UserError(
            f"{run_dir} is not a vae-run run directory (it needs .hydra/config.yaml and checkpoints/last.pt); "
            f"pass a folder under outputs/runs/ or outputs/sweeps/<time>/."
        )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config_path), OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # unknown key, wrong type: OmegaConf's errors
        raise UserError(f"cannot apply {' '.join(overrides) or 'the saved config'}: {str(err).splitlines()[0]}; check the keys against README.") from None
    validate(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    amp_dtype = AMP_DTYPES[resolve_precision(cfg.precision, device)]
    data = load_data(cfg)
    model = build_model(cfg.model, data.info).to(device)
    saved = load_checkpoint(checkpoint_path)
    load_model_state(model, saved["model"], checkpoint_path)
    val_batches, test_batches = eval_batches(cfg, data, device)
    beta = beta_schedule(cfg, -(-len(data.train) // cfg.train.batch_size))(saved["step"])
    tracker = Tracker(run_dir / "tensorboard")
    try:
        metrics = final_metrics(model, val_batches, test_batches, tracker, cfg, saved["step"], beta, amp_dtype)
    finally:
        tracker.close()
    metrics_path = run_dir / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    merged.update(metrics)
    write_json(metrics_path, merged)
    return merged


def eval_batches(cfg: DictConfig, data: LoadedData, device: torch.device) -> tuple[TensorBatches | StreamingBatches, TensorBatches | StreamingBatches]:
    """Validation and test batches, in order."""
    make = partial(make_batches, batch_size=cfg.train.batch_size, device=device, shuffle=False, seed=cfg.seed, num_workers=cfg.dataset.num_workers)
    return make(data.val), make(data.test)


def beta_schedule(cfg: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The KL weight as a function of the step, for this config's schedule over the whole run."""
    m, t = cfg.model, cfg.train
    return partial(
        kl_weight, beta=m.beta, warmup_steps=m.kl_warmup_steps, schedule=m.kl_schedule,
        total_steps=t.max_steps or t.epochs * steps_per_epoch, cycles=m.kl_cycles, ratio=m.kl_cycle_ratio,
    )


def final_metrics(
    model: VAE,
    val_batches: TensorBatches | StreamingBatches,
    test_batches: TensorBatches | StreamingBatches,
    tracker: Tracker,
    cfg: DictConfig,
    step: int,
    beta: float,
    amp_dtype: Optional[torch.dtype] = None,
    val: Optional[dict[str, float]] = None,
) -> dict[str, float]:
    """Validation terms and posterior statistics (unless given: the last epoch's), then the test report (NLL, anomaly AUROC, denoising PSNR)."""
    d = cfg.dataset
    if val is None:
        val = evaluate(model, val_batches, beta=beta, amp_dtype=amp_dtype, seed=cfg.seed)
        val.update(posterior_report(model, val_batches, tracker, step, fixed_examples(val_batches, d.noise, d.noise_level, cfg.seed), pictures=False))
    metrics = {f"val/{k}": v for k, v in val.items()}
    if isinstance(test_batches, TensorBatches):
        metrics.update(
            test_report(
                model, test_batches, tracker, step, nll_samples=cfg.eval.nll_samples, nll_chunk=cfg.eval.nll_chunk,
                holdout_classes=list(d.holdout_classes), noise=d.noise, noise_level=d.noise_level, seed=cfg.seed,
            )
        )
    return metrics


def _interrupt_message(signum: int, step: int, checkpoint_path: Path, run_dir: Path) -> str:
    return (
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved to {checkpoint_path}. "
        f"Resume with: vae-run resume={run_dir}"
    )


def _divergence_message(progress: Progress, skips: int) -> str:
    return (
        f"training diverged: {skips} steps in a row up to step {progress.step} had a non-finite loss or gradient "
        f"(the last finite loss was {progress.last_finite_loss:.4g} at step {progress.last_finite_step}); "
        f"try a lower optim.lr, precision=fp32, or gradient clipping with train.grad_clip=1.0."
    )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    *,
    beta: float,
    target: Optional[torch.Tensor] = None,
    free_bits: float = 0.0,
    amp_dtype: Optional[torch.dtype] = None,
    grad_clip: Optional[float] = None,
    eps: Optional[torch.Tensor] = None,
    weight: float = 1.0,
) -> Optional[dict[str, torch.Tensor]]:
    """One optimizer step: forward under autocast, the objective in fp32, scaled backward, optional clipping.

    `target` is what the decoder must reproduce (the clean image when x is
    noisy); it defaults to x. `model` may be wrapped in DistributedDataParallel,
    with `eps` the reparameterisation noise and `weight` this rank's share of
    the batch. Returns the objective's terms and the gradient norm, or None when
    the loss or the gradient was not finite: then the parameters are left untouched.
    """
    module: VAE = getattr(model, "module", model)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x, y if module.num_classes else None, eps=eps)
    # fp32, outside autocast
    terms = elbo_terms(x if target is None else target, out, beta=beta, likelihood=module.likelihood, free_bits=free_bits)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"] * weight if weight != 1.0 else terms["loss"]).backward()
    scaler.unscale_(optimizer)  # true gradients for the norm and the clipping (a no-op without fp16)
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    if grad_clip:
        torch.nn.utils.clip_grads_with_norm_(module.parameters(), grad_clip, grad_norm)
    finite = bool(torch.isfinite(terms["loss"]) & torch.isfinite(grad_norm))  # one device sync per step
    if finite:
        scaler.step(optimizer)
    scaler.update()  # with fp16, a non-finite gradient lowers the loss scale
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return None
    return {**{name: value.detach() for name, value in terms.items()}, "grad_norm": grad_norm.detach()}


def evaluate(
    model: VAE, batches: TensorBatches | StreamingBatches, *, beta: float, amp_dtype: Optional[torch.dtype] = None, seed: int = 0
) -> dict[str, float]:
    """Mean of each objective term over a whole split, in nats per image.

    The posterior samples come from their own seeded random state, so every
    evaluation sees the same noise and training's random stream is untouched.
    """
    with seeded_rng(seed, batches.device):
        return _evaluate(model, batches, beta=beta, amp_dtype=amp_dtype)


@torch.no_grad()
def _evaluate(model: VAE, batches: TensorBatches | StreamingBatches, *, beta: float, amp_dtype: Optional[torch.dtype]) -> dict[str, float]:
    model.eval()
    device_type = next(model.parameters()).device.type
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for x, y in batches.epoch(0):
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x, y if model.num_classes else None)
        terms = elbo_terms(x, out, beta=beta, likelihood=model.likelihood)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.detach() * x.shape[0]
        n += x.shape[0]
    model.train()
    return {name: (total / n).item() for name, total in sums.items()}


# The HParams columns shown by default after the swept keys (the "model, dataset, beta, latent size, lr").
CORE_HPARAMS = ("model", "dataset", "model.beta", "model.latent_dim", "optim.lr")


def _hparams(cfg: DictConfig, arch: str) -> dict[str, Any]:
    """The hyper-parameters shown as columns in TensorBoard's HParams tab, named by their config keys."""
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "model.arch": arch,
        "model.beta": cfg.model.beta,
        "model.latent_dim": cfg.model.latent_dim,
        "model.likelihood": cfg.model.likelihood,
        "model.kl_warmup_steps": cfg.model.kl_warmup_steps,
        "optim.lr": cfg.optim.lr,
        "train.batch_size": cfg.train.batch_size,
        "train.epochs": cfg.train.epochs,
        "seed": cfg.seed,
    }


def _shown_hparams(hparams: dict[str, Any]) -> list[str]:
    """The keys this sweep varies, then the core ones, at least five (what TensorBoard displays by default)."""
    shown = [k for k in sorted(swept_keys()) if k in hparams]
    for key in CORE_HPARAMS:
        if len(shown) >= 5:
            break
        if key not in shown:
            shown.append(key)
    return shown
