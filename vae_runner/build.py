"""Everything a run is made of, built from its config: device, precision, data, batches, model, optimizer.

Training (`vae_runner.train`) and `vae-eval` (`vae_runner.evaluate`) both start here,
so they see the same data, the same model and the same batches.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from vae_runner.data import (
    DatasetInfo,
    LoadedData,
    Split,
    StreamingBatches,
    TensorBatches,
    available_memory,
    binarize_split,
    load_dataset,
    make_batches,
    select_classes,
)
from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.objective import Objective, Weights, capacity_at, kl_weight

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Validation and test images are binarised with one seed for every run, as in the IWAE paper's
# code: runs with different seeds are then scored on the same images.
EVAL_BINARIZE_SEED = 0

Batches = TensorBatches | StreamingBatches


@dataclass
class Built:
    """What a run trains and evaluates, on its device."""

    device: torch.device
    precision: str
    data: LoadedData
    model: VAE
    objective: Objective
    train: Batches
    val: Batches
    test: Batches

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return AMP_DTYPES[self.precision]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train)


def build(cfg: DictConfig, device: Optional[torch.device] = None) -> Built:
    """Seed, then resolve the device and precision, load the data and build the model and batches for this config."""
    seed_everything(cfg.seed)
    device = device or resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = load_data(cfg)
    if cfg.train.batch_size > len(data.train):
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(data.train)} images); use a smaller batch size."
        )
    model = build_model(cfg.model, data.info, pixel_stats(data.train)).to(device)
    _check_decoding_fits(cfg, data.info, model)
    d = cfg.dataset
    objective = make_objective(cfg.model, len(data.train))
    make = partial(make_batches, batch_size=cfg.train.batch_size, device=device, seed=cfg.seed, num_workers=d.num_workers)
    return Built(
        device, precision, data, model, objective,
        train=make(data.train, shuffle=True, binarize=d.binarize == "dynamic"),
        val=make(data.val, shuffle=False), test=make(data.test, shuffle=False),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): the same seed gives the same run on the CPU."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device={name} is not a device vae-runner trains on; use auto, cpu, cuda, cuda:N or mps.")
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


def load_data(cfg: DictConfig) -> LoadedData:
    """The dataset's train, validation and test splits, binarised and with classes held out as the config asks.

    The test split (the final evaluation's) keeps the held-out classes: they are
    the anomalies. Dynamic binarisation resamples the training pixels in every
    batch; the validation and test images are binarised once, with one seed for every run.
    """
    d = cfg.dataset
    data = load_dataset(
        d.name, root=d.root, path=d.path, image_size=d.image_size, channels=d.channels,
        train_samples=d.train_samples, val_samples=d.val_samples, test_samples=cfg.eval.test_samples,
        val_fraction=d.val_fraction, max_memory_mb=d.max_memory_mb, num_workers=d.num_workers,
    )
    if (d.binarize != "none" or d.holdout_classes) and not isinstance(data.train, Split):
        raise UserError("dataset.binarize and dataset.holdout_classes need the images in memory; raise dataset.max_memory_mb.")
    if d.binarize != "none":
        data.val = binarize_split(data.val, EVAL_BINARIZE_SEED)
        data.test = binarize_split(data.test, EVAL_BINARIZE_SEED + 1)
        if d.binarize == "static":
            data.train = binarize_split(data.train, cfg.seed + 1)
    if d.holdout_classes:
        held = list(d.holdout_classes)
        if not data.info.num_classes:
            raise UserError(f"dataset.holdout_classes={held} needs labelled images, and {d.name} has none; use class subfolders, or drop the key.")
        unknown = sorted(set(held) - set(range(data.info.num_classes)))
        if unknown:
            raise UserError(f"dataset.holdout_classes={held} names classes {unknown} that {d.name} lacks; use 0..{data.info.num_classes - 1}.")
        data.train = select_classes(data.train, held, keep=False)
        data.val = select_classes(data.val, held, keep=False)
        if not len(data.train) or not len(data.val):
            raise UserError(f"dataset.holdout_classes={held} leaves no images to train or validate on; hold out fewer classes.")
    return data


def resolved_choices(model_cfg: DictConfig, channels: int) -> tuple[str, str]:
    """`model.arch` and `model.likelihood`, with `auto` settled for images with this many channels.

    auto: conv and the discretized logistic (exact 8-bit probabilities, bits/dim as papers report them)
    for colour images; mlp and the Bernoulli (the MNIST tradition) for greyscale.
    """
    colour = channels > 1
    arch = model_cfg.arch if model_cfg.arch != "auto" else ("conv" if colour else "mlp")
    likelihood = model_cfg.likelihood if model_cfg.likelihood != "auto" else ("discretized_logistic" if colour else "bernoulli")
    return arch, likelihood


def pixel_stats(split: Any, images: int = 10_000) -> tuple[float, float]:
    """Mean and standard deviation of the pixels in [0, 1] of (at most `images` of) an in-memory split; (0.5, 0.25) for a streamed folder."""
    if not isinstance(split, Split) or not len(split):
        return 0.5, 0.25
    x = split.images[:images].float().div(255)
    return x.mean().item(), x.std().item() if x.numel() > 1 else 0.25


def make_objective(model_cfg: DictConfig, train_images: int) -> Objective:
    """The run's objective and its fixed settings (the weights change by step: `weights_schedule`)."""
    m = model_cfg
    return Objective(m.objective, m.iwae_samples if m.objective == "iwae" else 1, m.free_bits, train_images)


def planned_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    """The optimizer steps the config asks for: `train.max_steps`, else every epoch's."""
    return cfg.train.max_steps or cfg.train.epochs * steps_per_epoch


def weights_schedule(cfg: DictConfig, total: int) -> Callable[[int], Weights]:
    """The objective's weights as a function of the step: beta's warm-up or cycles, and capacity's C(t), over a run of `total` steps.

    `total` is the run's first plan (`Progress.schedule_steps`): a resume that trains longer
    holds C at capacity_max and keeps the cycles' period, rather than moving them back.
    """
    m = cfg.model
    beta = partial(
        kl_weight, beta=m.beta, warmup_steps=m.kl_warmup_steps, schedule=m.kl_schedule, total_steps=total, cycles=m.kl_cycles, ratio=m.kl_cycle_ratio
    )
    capacity = partial(capacity_at, capacity_max=m.capacity_max, capacity_steps=m.capacity_steps or total)
    return lambda step: Weights(beta(step), m.alpha, m.gamma, capacity(step))


def validation_weights(cfg: DictConfig, total: int, step: int) -> Weights:
    """The weights validation reports with: the run's target beta (not its warm-up's value) and capacity's C at this step."""
    return replace(weights_schedule(cfg, total)(step), beta=cfg.model.beta)


def build_model(model_cfg: DictConfig, info: DatasetInfo, stats: tuple[float, float] = (0.5, 0.25)) -> VAE:
    """The VAE for these images (`auto` settled by `resolved_choices`); `stats` (pixel mean, std) start a learned likelihood scale."""
    arch, likelihood = resolved_choices(model_cfg, info.channels)
    if model_cfg.conditional and info.num_classes == 0:
        raise UserError(
            f"model={model_cfg.name} is conditional but dataset={info.name} has no labels; "
            f"use class subfolders in the image folder, or model=vae."
        )
    make = partial(
        VAE, in_channels=info.channels, image_size=info.image_size, latent_dim=model_cfg.latent_dim, arch=arch,
        hidden_dims=list(model_cfg.hidden_dims), conv_channels=list(model_cfg.conv_channels),
        num_classes=info.num_classes if model_cfg.conditional else 0, likelihood=likelihood,
        posterior=model_cfg.posterior, flow_steps=model_cfg.flow_steps, flow_hidden=model_cfg.flow_hidden,
        prior=model_cfg.prior, prior_components=model_cfg.prior_components, data_mean=stats[0], data_std=stats[1],
    )
    _check_model_fits(make, info)
    return make()


def _check_model_fits(make: Any, info: DatasetInfo) -> None:
    """Build the model without memory first (the meta device): its weights, gradients and Adam's two moments must fit."""
    with torch.device("meta"):
        model = make()
    n_params = sum(p.numel() for p in model.parameters())
    needed, free = 4 * 4 * n_params, available_memory()
    if needed > free:
        parts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
        remedy = {
            "prior": "use a smaller model.prior_components", "posterior": "use fewer model.flow_steps or a smaller model.flow_hidden",
        }.get(max(parts, key=parts.get), "use a smaller dataset.image_size or model.hidden_dims, or model.arch=conv")
        raise UserError(
            f"the model for {info.channels}x{info.image_size}x{info.image_size} images has {n_params:,} parameters and would need "
            f"{needed / 2**30:.1f} GiB for weights, gradients and optimizer state, but {free / 2**30:.1f} GiB is available; {remedy}."
        )


def _check_decoding_fits(cfg: DictConfig, info: DatasetInfo, model: VAE) -> None:
    """Refuse, before training, a batch of decodes that cannot fit: the NLL's `eval.nll_chunk` samples of a batch, or iwae's k per image in a step.

    A mixture prior adds its (samples x components) float64 distances, about four such matrices at once.
    """
    if model.arch == "mlp":
        widths = sum(cfg.model.hidden_dims)
    else:  # each transposed convolution's output: channels x (side / 2^depth)^2
        widths = sum(c * (info.image_size // 2 ** (i + 1)) ** 2 for i, c in enumerate(cfg.model.conv_channels))
    # Per decoded image, in fp32: the repeated input, the decoder's output and the per-pixel loss, plus the hidden layers.
    outputs = 2 + model.likelihood.params_per_channel
    components = cfg.model.prior_components if cfg.model.prior != "normal" else 0
    per_image, free = 4 * (outputs * info.channels * info.image_size**2 + 2 * widths) + 4 * 8 * components, available_memory()
    batch = cfg.train.batch_size
    evaluation = min(cfg.eval.nll_chunk, cfg.eval.nll_samples) * batch
    if evaluation * per_image > free:
        raise UserError(
            f"eval.nll_chunk={cfg.eval.nll_chunk} decodes {evaluation:,} images at once (x train.batch_size={batch}), "
            f"about {evaluation * per_image / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB is available; "
            + (f"use a smaller eval.nll_chunk or model.prior_components (now {components:,})." if components
               else "use a smaller eval.nll_chunk, e.g. 10.")
        )
    training = (cfg.model.iwae_samples if cfg.model.objective == "iwae" else 1) * batch
    if 2 * training * per_image > free:  # twice: the backward pass keeps the activations
        raise UserError(
            f"model.iwae_samples={cfg.model.iwae_samples} decodes {training:,} images in every training step (x train.batch_size={batch}), "
            f"about {2 * training * per_image / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB is available; use fewer samples or a smaller batch."
        )


def make_optimizer(optim_cfg: DictConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer `optim._target_` names, with the other `optim.*` keys as its arguments.

    `fused` is dropped for optimizers that lack it; an argument the optimizer does
    not take, or a target that is not a torch optimizer, is one sentence.
    """
    target = str(optim_cfg._target_)
    module, _, name = target.rpartition(".")
    try:  # not hydra.utils.get_class: it logs its own multi-line error before raising
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"optim._target_={target} is not a torch optimizer class; use e.g. torch.optim.Adam, torch.optim.AdamW or torch.optim.SGD.")
    kwargs = {k: v for k, v in OmegaConf.to_container(optim_cfg, resolve=True).items() if not str(k).startswith("_")}
    accepted = inspect.signature(cls).parameters
    if "fused" not in accepted:
        kwargs.pop("fused", None)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = ", ".join(p for p in accepted if p != "params")
        raise UserError(f"optim.{unknown[0]} is not an argument of {target} (it takes {takes}); remove it, or choose an optimizer that takes it.")
    try:
        return cls(params, **kwargs)
    except Exception as err:  # the optimizer's own checks: ValueError, TypeError, IndexError (betas=[0.9]) ...
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        settings = " ".join(f"optim.{k}={v}" for k, v in kwargs.items())
        raise UserError(f"{target} refused {settings} ({detail}); change the value it names.") from None


def check_optimizer(optim_cfg: DictConfig) -> None:
    """Refuse a bad `optim` group before any work, by building the optimizer over one throwaway parameter."""
    make_optimizer(optim_cfg, [torch.nn.Parameter(torch.zeros(1))])
