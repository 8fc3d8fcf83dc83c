"""The training loop: `train()` reads as its steps (start or resume, run an epoch, end it, save), then the final report."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from vae_runner import distributed
from vae_runner.atomic import write_json
from vae_runner.build import Built, build, make_optimizer, planned_steps, resolve_device, validation_weights, weights_schedule
from vae_runner.checkpoint import environment, load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from vae_runner.config import swept_keys
from vae_runner.data import corrupt
from vae_runner.evaluate import (
    Examples, final_report, fixed_examples, posterior_report, sample_pictures, split_factors, split_sizes, validation_terms,
)
from vae_runner.model import VAE
from vae_runner.objective import Objective, Weights, objective_terms
from vae_runner.progress import Meter
from vae_runner.run_dir import RunDir
from vae_runner.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 1  # the epoch in progress, or the next to run once one is complete
    batches_done: int = 0  # batches of `epoch` already trained
    images_seen: int = 0
    step_seconds: float = 0.0  # time inside training steps, all sessions
    seconds: float = 0.0  # wall time of the training loops of earlier sessions of this run
    skipped_steps: int = 0
    last_finite_loss: float = math.nan
    last_finite_step: int = 0
    schedule_steps: int = 0  # the steps beta's and capacity's schedules span: the first session's plan (0: not yet set)


class Interrupted(BaseException):
    """A signal stopped the run; the CLI exits with 128 + the signal number.

    A BaseException, like KeyboardInterrupt: raised from a signal handler, it must
    not be swallowed by an `except Exception` in whatever code it lands in.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingDiverged(Exception):
    """Too many non-finite steps in a row."""


class StopSignals:
    """SIGINT, SIGTERM and SIGUSR1/2 (cluster pre-emption).

    In the training loop the first signal asks the loop to stop after the current
    step and checkpoint; a second one stops at once. Outside the loop (setting up,
    the final evaluation) `at_once` holds the message, and any signal stops at once.
    """

    # SIGHUP: the terminal or SSH session closed.
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))

    def __init__(self, at_once: Optional[str] = None) -> None:
        self.signum: Optional[int] = None
        self.at_once = at_once
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
        name = signal.Signals(signum).name
        if self.at_once is not None:
            raise Interrupted(signum, f"stopped by {name} {self.at_once}")
        if self.signum is not None:
            raise Interrupted(signum, f"stopped at once by a second {name}; the last checkpoint is intact.")
        self.signum = signum
        log.warning("received %s: stopping after the current step (send it again to stop at once)", name)


@dataclass
class Session:
    """One process's training of a run: what it built, its optimizer, where it stands and where it writes."""

    cfg: DictConfig
    run: RunDir
    built: Built
    trained: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    tracker: Tracker
    progress: Progress
    weights_at: Callable[[int], Weights]  # the objective's weights at a step
    examples: Examples
    started: float = field(default_factory=time.perf_counter)
    consecutive_skips: int = 0
    meter: Optional[Meter] = None  # the epoch's progress bar (or plain lines)
    running_loss: Optional[float] = None  # an exponential moving average of the finite training losses, for the bar
    label: str = ""  # a stacked sweep's member: its run folder's name, before its epoch lines

    @property
    def model(self) -> VAE:
        return self.built.model

    def finished(self) -> bool:
        """Every epoch trained, or `train.max_steps` reached."""
        t = self.cfg.train
        return self.progress.epoch > t.epochs or (t.max_steps is not None and self.progress.step >= t.max_steps)

    def loop_seconds(self) -> float:
        """Wall time of the training loop, all sessions of this run."""
        return self.progress.seconds + time.perf_counter() - self.started


def train(cfg: DictConfig, run_dir: Path, on_start: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Train the configured VAE in `run_dir`, resuming from its checkpoint if it has one; returns the final metrics.

    `on_start` is called once the run is built and resumed, just before the first epoch.
    """
    run = RunDir(run_dir)
    with StopSignals(at_once="before training started; nothing was saved.") as stop:
        s = start(cfg, run)
        if on_start is not None:
            on_start()
        try:
            stop.at_once, last_val = None, None
            while not s.finished():
                images, seconds, batches_done = run_epoch(s, stop)
                last_val = end_epoch(s, images, seconds, batches_done, stop)
            loop_seconds = s.loop_seconds()
            if not distributed.is_main():
                distributed.barrier()
                return {}
            stop.at_once = f"during the final evaluation; training is complete in {run.checkpoint}. Compute the metrics with: vae-eval {run.root}"
            metrics = finish(s, last_val, loop_seconds)
        finally:
            s.tracker.close()
    distributed.barrier()
    return metrics


def finish(s: Session, last_val: Optional[dict[str, float]], loop_seconds: float) -> dict[str, float]:
    """The final evaluation and the training's own figures, written to the run's metrics.json; returns them."""
    metrics = final_report(s.built, s.cfg, s.tracker, s.progress.step, last_val, s.progress.schedule_steps)
    p = s.progress
    metrics.update(
        {
            "train/seconds": loop_seconds,
            "train/images_per_s": p.images_seen / max(p.step_seconds, 1e-9),
            "train/steps": p.step,
            "train/epochs": p.epoch - 1 + p.batches_done / s.built.steps_per_epoch,  # trained, in all sessions (not the config's)
            "train/skipped_steps": p.skipped_steps,
            **split_sizes(s.built),
        }
    )
    write_json(s.run.metrics, metrics)
    return metrics


def start(cfg: DictConfig, run: RunDir, built: Optional[Built] = None) -> Session:
    """Build the run (or take `built`), resume from its checkpoint if there is one, and open TensorBoard."""
    built = built or build(cfg, device=distributed.device_for_rank(resolve_device(cfg.device)))
    model = built.model
    optimizer = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler(built.device.type, enabled=built.precision == "fp16")
    progress = resume(run, model, optimizer, scaler)
    progress.schedule_steps = progress.schedule_steps or planned_steps(cfg, built.steps_per_epoch)
    main = distributed.is_main()
    if main:
        write_json(run.environment, environment())
    n_params = sum(p.numel() for p in model.parameters())
    m = cfg.model
    log.info(
        "%s (%s, %s params; %s posterior, %s prior, %s likelihood, %s objective) on %s: %d train / %d val / %d test images of %dx%dx%d, "
        "device %s, precision %s",
        m.name, model.arch, f"{n_params:,}", m.posterior, m.prior, model.likelihood.name, m.objective,
        built.data.info.name, built.train.num_samples, built.val.num_samples,
        built.test.num_samples, built.data.info.channels, built.data.info.image_size, built.data.info.image_size, built.device, built.precision,
    )
    # On resume, TensorBoard drops the events logged after the checkpoint: curves continue without duplicated points.
    tracker = Tracker(run.tensorboard if main else None, purge_step=progress.step + 1 if progress.step else None, pictures=run.pictures)
    if progress.step == 0:
        hparams = _hparams(cfg, model)
        tracker.hparams(hparams, shown=_shown_hparams(hparams))
        tracker.layout()
    d = cfg.dataset
    return Session(
        cfg, run, built,
        trained=DistributedDataParallel(model) if distributed.world_size() > 1 else model,  # gradients averaged across ranks
        optimizer=optimizer, scaler=scaler, tracker=tracker, progress=progress,
        weights_at=weights_schedule(cfg, progress.schedule_steps),
        examples=fixed_examples(built.data.val, built.val, d.noise, d.noise_level, cfg.seed),
    )


def resume(run: RunDir, model: VAE, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> Progress:
    """Load the run's checkpoint, if it has one, into the model, optimizer, scaler and RNGs; returns where training stands."""
    if not run.checkpoint.exists():
        return Progress()
    saved = load_checkpoint(run.checkpoint)
    load_model_state(model, saved["model"], run.checkpoint)
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    progress = Progress(**{k: saved[k] for k in Progress.__dataclass_fields__ if k in saved})
    set_rng_state(saved["rng"])
    log.info("resuming from %s at step %d (epoch %d, batch %d)", run.checkpoint, progress.step, progress.epoch, progress.batches_done)
    return progress


def save(s: Session, batches_done: int) -> None:
    """Checkpoint everything needed to continue from here, exactly (rank 0 writes it)."""
    s.progress.batches_done = batches_done
    if distributed.is_main():
        save_checkpoint(s.run.checkpoint, checkpoint_state(s), s.model)


def checkpoint_state(s: Session) -> dict[str, Any]:
    """Everything a checkpoint holds: weights, optimizer, scaler, config, random state and progress."""
    return {
        "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
        "config": OmegaConf.to_container(s.cfg, resolve=True), "rng": rng_state(),
        **asdict(s.progress), "seconds": s.loop_seconds(),
    }


def run_epoch(s: Session, stop: StopSignals) -> tuple[int, float, int]:
    """Train from the saved position to the epoch's end (or `train.max_steps`); returns images trained, seconds, batches done."""
    p, t = s.progress, s.cfg.train
    s.model.train()
    started = time.perf_counter()
    total = s.built.steps_per_epoch if t.max_steps is None else min(s.built.steps_per_epoch, p.batches_done + t.max_steps - p.step)
    s.meter = Meter(f"epoch {p.epoch}/{t.epochs}", total, done=p.batches_done)
    with s.meter:
        images, done = _train_batches(s, stop)
    if s.built.device.type == "cuda":
        torch.cuda.synchronize(s.built.device)
    seconds = time.perf_counter() - started
    p.step_seconds, p.images_seen = p.step_seconds + seconds, p.images_seen + images
    if images:
        s.tracker.scalars("train", {"images_per_s": images / seconds}, p.step)
    return images, seconds, done


def _train_batches(s: Session, stop: StopSignals) -> tuple[int, int]:
    """The epoch's remaining batches, one step each, checkpointing on cadence and on a stop signal; returns images trained and batches done."""
    p, t = s.progress, s.cfg.train
    images, done = 0, p.batches_done
    for x, y in s.built.train.epoch(p.epoch, start_batch=p.batches_done):
        record(s, train_batch(s, x, y), x.shape[0])
        images, done = images + x.shape[0], done + 1
        s.meter.advance(1, x.shape[0])
        if distributed.any_rank(stop.signum is not None):
            save(s, done)
            _stop_after_checkpoint(s, stop)
        if t.checkpoint_every_steps and p.step % t.checkpoint_every_steps == 0:
            save(s, done)
        if t.max_steps is not None and p.step >= t.max_steps:
            break
    return images, done


def train_batch(s: Session, x: torch.Tensor, y: Optional[torch.Tensor]) -> Optional[dict[str, torch.Tensor]]:
    """One optimizer step on this batch (this rank's shard of it under torchrun), denoising inputs corrupted first."""
    d, n = s.cfg.dataset, x.shape[0]
    x_in = corrupt(x, d.noise, d.noise_level) if d.noise != "none" else x  # denoising: noisy in, clean target
    eps, weight, kl_batch_mean = None, 1.0, None
    if distributed.world_size() > 1:
        # Every rank draws the whole batch's random numbers alike and keeps its rows, so the run
        # follows the single-process one; the weight makes the averaged gradient the batch mean's.
        rows = distributed.shard(n)
        eps = torch.randn(s.built.objective.samples, n, s.model.latent_dim, device=x.device)[:, rows]
        x, x_in, y = x[rows], x_in[rows], None if y is None else y[rows]
        weight = x.shape[0] * distributed.world_size() / n
        kl_batch_mean = partial(distributed.batch_mean, count=x.shape[0])  # free bits floor the whole batch's KL
    s.progress.step += 1
    return train_step(
        s.trained, s.optimizer, s.scaler, x_in, y, target=x, objective=s.built.objective, weights=s.weights_at(s.progress.step - 1),
        amp_dtype=s.built.amp_dtype, grad_clip=s.cfg.train.grad_clip, eps=eps, weight=weight, kl_batch_mean=kl_batch_mean,
    )


def record(s: Session, terms: Optional[dict[str, torch.Tensor]], n: int) -> None:
    """Count a skipped (non-finite) step, stopping after too many in a row; log a finite one's terms every `train.log_every_steps`."""
    p, t = s.progress, s.cfg.train
    if terms is None:
        p.skipped_steps += 1
        s.consecutive_skips += 1
        s.tracker.scalars("train", {"skipped_steps": p.skipped_steps}, p.step)
        if s.consecutive_skips >= t.max_skipped_steps:
            raise TrainingDiverged(_divergence_message(p, s.consecutive_skips))
        return
    s.consecutive_skips = 0
    p.last_finite_loss, p.last_finite_step = terms["loss"].item(), p.step
    s.running_loss = p.last_finite_loss if s.running_loss is None else 0.95 * s.running_loss + 0.05 * p.last_finite_loss
    if s.meter is not None:
        s.meter.note(f"loss {s.running_loss:.2f}")
    if p.step % t.log_every_steps == 0 or p.step == 1:
        logged = distributed.mean_over_ranks({k: v for k, v in terms.items() if k not in ("grad_norm", "elbo", "capacity")}, n)
        weights, name = s.weights_at(p.step - 1), s.built.objective.name
        scheduled = {"capacity": weights.capacity} if name == "capacity" else {"beta": weights.beta} if name in ("elbo", "beta_tc") else {}
        s.tracker.scalars("train", {**logged, "grad_norm": terms["grad_norm"], **scheduled}, p.step)


def end_epoch(s: Session, images: int, seconds: float, batches_done: int, stop: StopSignals) -> Optional[dict[str, float]]:
    """Validate and draw (rank 0), move to the next epoch when this one is complete, checkpoint; returns the validation."""
    val = report_epoch(s, images, seconds)
    distributed.barrier()
    save(s, advance(s, batches_done))
    if distributed.any_rank(stop.signum is not None):
        _stop_after_checkpoint(s, stop)
    return val


def report_epoch(s: Session, images: int, seconds: float) -> Optional[dict[str, float]]:
    """On rank 0: the validation terms, the posterior report and the epoch's pictures, logged; returns the validation."""
    if not distributed.is_main():  # the other ranks wait at the barrier
        return None
    p, t, m = s.progress, s.cfg.train, s.model
    weights = validation_weights(s.cfg, p.schedule_steps, p.step)
    val = validation_terms(m, s.built.val, objective=s.built.objective, weights=weights, amp_dtype=s.built.amp_dtype, seed=s.cfg.seed)
    s.tracker.scalars("val", val, p.step)
    pictures, kept = pictures_due(t, p.epoch, p.step)
    names = s.built.data.info.class_names
    with s.tracker.copies_in(epoch_folder(p.epoch, t.epochs) if kept else None):
        if pictures:
            sample_pictures(s.tracker, m, s.examples, p.step, s.cfg.seed, names)
        factors = split_factors(s.built.data, "val")
        val.update(posterior_report(m, s.built.val, s.tracker, p.step, s.examples, pictures, names, factors))
    log.info(
        "%sepoch %d/%d  step %d  train/loss %.2f  val/loss %.2f (recon %.2f, kl %.2f)  %s img/s",
        f"{s.label}  " if s.label else "", p.epoch, t.epochs, p.step, p.last_finite_loss, val["loss"], val["recon"], val["kl"], f"{images / max(seconds, 1e-9):,.0f}",
    )
    return val


def advance(s: Session, batches_done: int) -> int:
    """Move to the next epoch when this one is complete (not cut short by max_steps); returns the batches done of the epoch in progress."""
    if batches_done >= s.built.steps_per_epoch:
        s.progress.epoch, batches_done = s.progress.epoch + 1, 0
    return batches_done


def pictures_due(t: DictConfig, epoch: int, step: int) -> tuple[bool, bool]:
    """Whether this epoch draws its pictures, and whether it keeps them in `pictures/epoch_NNN/`.

    Drawn every `train.image_every_epochs`, on every kept epoch (every
    `train.pictures_every_epochs`, 0: none), and always on the last one, which
    `train.epochs` or `train.max_steps` ends.
    """
    last = epoch >= t.epochs or (t.max_steps is not None and step >= t.max_steps)
    kept = t.pictures_every_epochs > 0 and epoch % t.pictures_every_epochs == 0
    return epoch % t.image_every_epochs == 0 or kept or last, kept


def epoch_folder(epoch: int, epochs: int) -> str:
    """The folder under `pictures/` that keeps an epoch's pictures: `epoch_003`, zero-padded to sort (at least 3 digits)."""
    return f"epoch_{epoch:0{max(3, len(str(epochs)))}d}"


def _stop_after_checkpoint(s: Session, stop: StopSignals) -> None:
    """The checkpoint is saved: hand the signal on (submitit requeues) and stop with the message to resume."""
    stop.forward()
    signum = stop.signum or signal.SIGTERM  # another rank got it
    raise Interrupted(
        signum,
        f"stopped by {signal.Signals(signum).name} at step {s.progress.step}; checkpoint saved to {s.run.checkpoint}. "
        f"Resume with: vae-run resume={s.run.root}",
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
    objective: Objective = Objective(),
    weights: Weights = Weights(),
    target: Optional[torch.Tensor] = None,
    amp_dtype: Optional[torch.dtype] = None,
    grad_clip: Optional[float] = None,
    eps: Optional[torch.Tensor] = None,
    weight: float = 1.0,
    kl_batch_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Optional[dict[str, torch.Tensor]]:
    """One optimizer step: forward under autocast, the objective in fp32, scaled backward, optional clipping.

    `objective` and this step's `weights` say what is minimised. `target` is what
    the decoder must reproduce (the clean image when x is noisy); it defaults to x.
    `model` may be wrapped in DistributedDataParallel, with `eps` the
    reparameterisation noise (S, B, D), `weight` this rank's share of the batch
    and `kl_batch_mean` the whole batch's per-dimension KL. Returns the
    objective's terms and the gradient norm, or None when the loss or the
    gradient was not finite: then the parameters are left untouched.
    """
    module: VAE = getattr(model, "module", model)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x, y if module.num_classes else None, eps=eps, samples=objective.samples)
    # fp32, outside autocast
    terms = objective_terms(x if target is None else target, out, module.likelihood, objective, weights, kl_batch_mean)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"] * weight if weight != 1.0 else terms["loss"]).backward()
    return apply_gradients(module, optimizer, scaler, terms, grad_clip)


def apply_gradients(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, terms: dict[str, torch.Tensor], grad_clip: Optional[float]
) -> Optional[dict[str, torch.Tensor]]:
    """Unscale, measure and clip the gradients backward left in `module`, and step unless the loss or the gradient is not finite.

    Returns the detached terms with the gradient norm, or None for a skipped step (the parameters untouched).
    """
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


# The HParams columns shown by default after the swept keys (the "model, dataset, beta, latent size, lr").
CORE_HPARAMS = ("model", "dataset", "model.beta", "model.latent_dim", "optim.lr")


def _hparams(cfg: DictConfig, model: VAE) -> dict[str, Any]:
    """The hyper-parameters shown as columns in TensorBoard's HParams tab, named by their config keys (`auto` settled)."""
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "model.arch": model.arch,
        "model.posterior": cfg.model.posterior,
        "model.prior": cfg.model.prior,
        "model.objective": cfg.model.objective,
        "model.beta": cfg.model.beta,
        "model.latent_dim": cfg.model.latent_dim,
        "model.likelihood": model.likelihood.name,
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
