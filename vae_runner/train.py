"""The training loop: one function, every device, every preset."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_runner.config import swept_keys
from vae_runner.data import DatasetInfo, LoadedData, StreamingBatches, TensorBatches, load_dataset, make_batches
from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.objective import elbo_terms, kl_weight, likelihood_mean
from vae_runner.tracking import Tracker, prior_latents, reconstruction_grid, samples_grid

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
    """The dataset named by the config."""
    d = cfg.dataset
    return load_dataset(
        d.name, root=d.root, path=d.path, image_size=d.image_size, channels=d.channels,
        train_samples=d.train_samples, val_samples=d.val_samples, val_fraction=d.val_fraction,
        max_memory_mb=d.max_memory_mb, num_workers=d.num_workers, seed=cfg.seed,
    )


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Train the configured VAE, logging to `run_dir`; returns the final metrics (also in metrics.json)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    amp_dtype = AMP_DTYPES[precision]
    data = load_data(cfg)
    if cfg.train.batch_size > len(data.train):
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(data.train)} images); use a smaller batch size."
        )
    model = build_model(cfg.model, data.info).to(device)
    optimizer = instantiate(cfg.optim)(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train_batches = make_batches(data.train, cfg.train.batch_size, device, True, cfg.seed, cfg.dataset.num_workers)
    val_batches = make_batches(data.val, cfg.train.batch_size, device, False, cfg.seed, cfg.dataset.num_workers)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s (%s, %s params) on %s: %d train / %d val images of %dx%dx%d, device %s, precision %s",
        cfg.model.name, model.arch, f"{n_params:,}", data.info.name, train_batches.num_samples,
        val_batches.num_samples, data.info.channels, data.info.image_size, data.info.image_size, device, precision,
    )

    tracker = Tracker(run_dir / "tensorboard")
    hparams = _hparams(cfg, model.arch)
    tracker.hparams(hparams, shown=_shown_hparams(hparams))
    z_fixed, y_fixed = prior_latents(model.latent_dim, model.num_classes, seed=cfg.seed)
    x_fixed, y_fixed_val = _first_batch(val_batches, 8)

    step, images_seen, step_seconds = 0, 0, 0.0
    val: dict[str, float] = {}
    max_steps = cfg.train.max_steps
    t_start = time.perf_counter()
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        t_epoch, epoch_images = time.perf_counter(), 0
        for x, y in train_batches.epoch(epoch):
            beta = kl_weight(step, cfg.model.beta, cfg.model.kl_warmup_steps)
            terms = train_step(model, optimizer, scaler, x, y, beta=beta, amp_dtype=amp_dtype)
            step += 1
            epoch_images += x.shape[0]
            if step % cfg.train.log_every_steps == 0 or step == 1:
                tracker.scalars("train", {"loss": terms["loss"], "recon": terms["recon"], "kl": terms["kl"], "beta": beta}, step)
            if max_steps is not None and step >= max_steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t_epoch
        step_seconds += seconds
        images_seen += epoch_images
        tracker.scalars("train", {"images_per_s": epoch_images / seconds}, step)

        beta = kl_weight(step, cfg.model.beta, cfg.model.kl_warmup_steps)
        val = evaluate(model, val_batches, beta=beta, amp_dtype=amp_dtype)
        tracker.scalars("val", val, step)
        if epoch % cfg.train.image_every_epochs == 0 or epoch == cfg.train.epochs:
            _log_images(tracker, model, x_fixed, y_fixed_val, z_fixed, y_fixed, step)
        save_checkpoint(run_dir / "checkpoints" / "last.pt", model, optimizer, scaler, cfg, step=step, epoch=epoch)
        log.info(
            "epoch %d/%d  step %d  train/loss %.2f  val/loss %.2f (recon %.2f, kl %.2f)  %s img/s",
            epoch, cfg.train.epochs, step, terms["loss"].item(), val["loss"], val["recon"], val["kl"],
            f"{epoch_images / seconds:,.0f}",
        )
        if max_steps is not None and step >= max_steps:
            break
    tracker.close()

    metrics = {f"val/{k}": v for k, v in val.items()}
    metrics.update(
        {
            "train/seconds": time.perf_counter() - t_start,
            "train/images_per_s": images_seen / step_seconds,
            "train/steps": step,
            "train/epochs": epoch,
        }
    )
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def train_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    *,
    beta: float,
    amp_dtype: Optional[torch.dtype] = None,
) -> dict[str, torch.Tensor]:
    """One optimizer step on a batch: forward under autocast, the objective in fp32, scaled backward."""
    device_type = x.device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x, y if model.num_classes else None)
    terms = elbo_terms(x, out, beta=beta, likelihood=model.likelihood)  # fp32, outside autocast
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in terms.items()}


@torch.no_grad()
def evaluate(model: VAE, batches: TensorBatches | StreamingBatches, *, beta: float, amp_dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """Mean of each objective term over a whole split, in nats per image."""
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


def _log_images(tracker: Tracker, model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], z: torch.Tensor, z_labels: Optional[torch.Tensor], step: int) -> None:
    """Input-vs-reconstruction grid of fixed test images, and samples from the prior (fixed z)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        mu, _ = model.encode(x, y if model.num_classes else None)
        recon = likelihood_mean(model.decode(mu, y if model.num_classes else None), model.likelihood)
        samples = model.sample(z.to(device), None if z_labels is None else z_labels.to(device))
    model.train()
    tracker.image("val/reconstructions", reconstruction_grid(x, recon), step)
    tracker.image("samples/prior", samples_grid(samples), step)


def _first_batch(batches: TensorBatches | StreamingBatches, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    x, y = next(iter(batches.epoch(0)))
    return x[:n], None if y is None else y[:n]


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


def save_checkpoint(path: Path, model: VAE, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: DictConfig, *, step: int, epoch: int) -> None:
    """One dict holding model, optimizer, scaler, progress and the resolved config, written atomically."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file, fsync, then rename: a kill leaves the old file or the new, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
