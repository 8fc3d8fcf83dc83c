"""The typed config schema, its registration with Hydra, and the checks Hydra's types cannot express."""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vae_runner import choices
from vae_runner.choices import OBJECTIVES, POSTERIORS, PRIORS
from vae_runner.errors import UserError

ARCH_CHOICES = ("auto", *choices.ARCHS)
LIKELIHOOD_CHOICES = ("auto", *choices.LIKELIHOODS)
DATASETS = ("mnist", "fashion_mnist", "cifar10", "image_folder", "dsprites")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KL_SCHEDULES = ("linear", "cyclical")
BINARIZE = ("none", "static", "dynamic")
NOISES = ("none", "gaussian", "salt_pepper")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class ModelConfig:
    """Maps one-to-one onto `vae_runner.model.VAE` plus the objective and its weights."""

    name: str = "vae"
    arch: str = "auto"  # mlp, conv or resnet; auto: conv for colour images, mlp for greyscale
    latent_dim: int = 20
    hidden_dims: list[int] = field(default_factory=lambda: [512])
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    conditional: bool = False  # CVAE: condition encoder and decoder on the one-hot label
    # bernoulli, continuous_bernoulli, gaussian or discretized_logistic; auto: bernoulli for greyscale, discretized_logistic for colour
    likelihood: str = "auto"
    posterior: str = "gaussian"  # gaussian, planar or iaf (flow_steps steps of the flow)
    flow_steps: int = 4
    flow_hidden: int = 256  # iaf: width of each step's MADE hidden layers
    prior: str = "normal"  # normal, vamp (prior_components pseudo-inputs) or mog (prior_components Gaussians)
    prior_components: int = 500
    objective: str = "elbo"  # elbo, iwae, beta_tc or capacity
    iwae_samples: int = 5  # iwae: the k samples per image of the bound
    beta: float = 1.0  # elbo: the KL's weight; beta_tc: the total correlation's
    alpha: float = 1.0  # beta_tc: the index-code mutual information's weight
    gamma: float = 1.0  # beta_tc: the dimension-wise KL's weight; capacity: the weight of |KL - C|
    capacity_max: float = 25.0  # capacity: C's final value, nats
    capacity_steps: Optional[int] = None  # capacity: steps for C to rise from 0 to capacity_max; null: the whole run
    kl_warmup_steps: int = 0  # linear ramp of the KL weight from 0 to beta
    kl_schedule: str = "linear"  # linear (warm-up, then beta) or cyclical (Fu et al. 2019)
    kl_cycles: int = 4  # cyclical: number of cycles over the whole run
    kl_cycle_ratio: float = 0.5  # cyclical: fraction of each cycle spent ramping up
    free_bits: float = 0.0  # floor on each latent dimension's KL in the loss, nats (Kingma et al. 2016)


@dataclass
class DatasetConfig:
    """Where the images come from and how much of them to use."""

    name: str = "mnist"
    root: str = "data"  # torchvision datasets live (or are downloaded) under here
    path: Optional[str] = None  # image_folder: the folder of images
    image_size: Optional[int] = None  # resize to this square size; null keeps the native size
    channels: Optional[int] = None  # image_folder: 1 (greyscale) or 3 (RGB, the default)
    train_samples: Optional[int] = None  # use only N training images, drawn across classes with a fixed seed
    val_samples: Optional[int] = None  # use only N validation images, drawn the same way
    val_fraction: float = 0.1  # share of the training images held out for validation (a flat folder: for test too)
    max_memory_mb: int = 4096  # larger image folders stream from disk through a DataLoader
    num_workers: int = 2  # DataLoader workers for decoding image folders
    binarize: str = "none"  # none, static (sampled once), dynamic (resampled every batch, as in the IWAE paper)
    holdout_classes: list[int] = field(default_factory=list)  # train without these; they are the anomalies at test time
    noise: str = "none"  # none, gaussian or salt_pepper: corrupt the inputs, keep clean targets (denoising)
    noise_level: float = 0.0  # gaussian: standard deviation; salt_pepper: fraction of pixels


@dataclass
class TrainConfig:
    """The training loop's length, batch and logging cadence."""

    epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimizer steps, whatever the epoch
    batch_size: int = 128
    log_every_steps: int = 10
    image_every_epochs: int = 1
    pictures_every_epochs: int = 0  # also keep every N-th epoch's pictures in pictures/epoch_NNN/; 0: only the latest, in pictures/
    checkpoint_every_steps: int = 500  # also at every epoch's end; 0: only there
    grad_clip: Optional[float] = None  # clip the gradient's global norm to this
    max_skipped_steps: int = 20  # stop after this many non-finite steps in a row


@dataclass
class OptimConfig:
    """A partially applied torch optimizer: `instantiate(cfg.optim)(model.parameters())`."""

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    # One fused kernel for the whole update: 1.4x faster training steps for the default
    # MLP on a 2-core CPU (8.4k -> 11.5k images/s); set false for optimizers without it.
    fused: bool = True


@dataclass
class EvalConfig:
    """The evaluation at the end of a run (and of `vae-eval`)."""

    nll_samples: int = 100  # importance samples K for test/nll (1: the ELBO; papers use 5000)
    # test/nll over N test images drawn across classes with a fixed seed, with its standard error: a number,
    # `all`, or `auto` (enough images that the NLL decodes a fifth as many images as training did; 100 at least).
    nll_images: Any = "auto"
    nll_chunk: int = 10  # samples decoded at once: memory, and speed (larger temporaries are page-faulted again on every chunk)
    test_samples: Optional[int] = None  # evaluate only N test images, drawn across classes with a fixed seed
    # On a dataset with known factors (dsprites): MIG, DCI, SAP and the FactorVAE score from the posterior means of
    # N test images, the same fixed draw for every run.
    disentanglement_images: int = 10_000
    # test/fd and a CVAE's test/cvae_label_accuracy, through a small classifier trained once per training split and cached.
    sample_quality: bool = True
    # Prior samples for test/fd and the label accuracy: a number, or `auto` (as many as the test images, at most 10,000).
    fd_samples: Any = "auto"
    inception_weights: Optional[str] = None  # a local copy of the FID Inception weights (pt_inception-2015-12-05-6726825d.pth): adds test/fid
    cache_dir: Optional[str] = None  # where the classifiers are cached; null: $XDG_CACHE_HOME/vae-runner, else ~/.cache/vae-runner


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    # torch's CPU threads: a number, or `auto` (the cores this process may use, shared among the jobs a
    # launcher runs side by side: joblib's n_jobs, submitit's cpus_per_task, torchrun's local processes).
    threads: Any = "auto"


def config_dir() -> str:
    """The directory holding the YAML configs, in an installed wheel or in a source checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "configs", package_dir.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"vae-runner's configs/ folder is missing next to {package_dir}; reinstall vae-runner.")


MAX_SEED = 2**32 - 1  # the seeds torch and numpy both take
SWEPT_ENV = "VAE_RUNNER_SWEPT"  # the swept keys, handed to launcher workers whose argv is not the user's
STAMP_ENV = "VAE_RUNNER_STAMP"  # the run directory's stamp, shared by the ranks of a torchrun job


def run_stamp() -> str:
    """`<date>_<time>-<6 random hex>`: runs launched in the same second get different directories; torchrun's ranks share rank 0's."""
    return os.environ.get(STAMP_ENV) or f"{datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(3)}"


def register_configs() -> None:
    """Register the schema and the run-naming resolvers with Hydra (idempotent)."""
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("vae_runner.run_name"):
        OmegaConf.register_new_resolver("vae_runner.run_name", run_name)
    if not OmegaConf.has_resolver("vae_runner.stamp"):
        # Cached per config, and Hydra copies the cache into each job's config: one value per launch.
        OmegaConf.register_new_resolver("vae_runner.stamp", run_stamp, use_cache=True)


# Keys that say where things are, not what was tried: left out of run names.
_UNNAMED_KEYS = ("dataset.root", "dataset.path", "device", "hydra.")


def run_name(overrides: Any, swept_only: bool = False, sweeper_params: Any = None) -> str:
    """Name a run directory after its overrides, e.g. `model.beta=4,model=beta_vae`.

    With `swept_only`, keep just the swept keys: those given several values on the
    command line (`model.beta=0.5,1,2`) and those a sweeper searches
    (`hydra.sweeper.params`), so a sweep's runs are labelled by what varied. A
    name too long for a folder is cut and given a hash of the whole, so two runs
    never share a folder.
    """
    pairs = [str(o) for o in overrides if not str(o).lstrip("+~").startswith(_UNNAMED_KEYS)]
    if swept_only:
        swept = swept_keys() | set(sweeper_params or {})
        if swept:
            pairs = [p for p in pairs if p.split("=", 1)[0].lstrip("+~") in swept]
    name = re.sub(r"[^\w.,=+\-]", "_", ",".join(sorted(pairs)) or "defaults")
    if len(name) > 120:
        name = f"{name[:110]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def swept_keys(argv: Optional[list[str]] = None) -> set[str]:
    """The keys given several values on the command line (Hydra's sweep syntax), e.g. {"model.beta"}."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if argv is None and SWEPT_ENV in os.environ:
        return {k for k in os.environ[SWEPT_ENV].split(",") if k}
    args = [a for a in (sys.argv[1:] if argv is None else argv) if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # an unparsable argv is Hydra's to report, not ours
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def validate(cfg: DictConfig) -> None:
    """Refuse keys the schema does not know and values its types allow but a run cannot use, with one sentence each."""
    check_known_keys(cfg)
    _choice("precision", cfg.precision, PRECISIONS)
    if not DEVICE_PATTERN.match(str(cfg.device)):
        raise UserError(f"device={cfg.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps.")
    if cfg.threads != "auto" and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise UserError(f"threads={cfg.threads!r} is not a thread count; use a positive integer or auto (the cores this process may use).")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed={cfg.seed} is out of range; use an integer from 0 to 2**32 - 1 ({MAX_SEED}).")
    _check_model(cfg.model, cfg.train.batch_size)
    _check_dataset(cfg.dataset)
    _check_train(cfg.train, cfg.optim, cfg.eval)


def _check_model(m: DictConfig, batch_size: int) -> None:
    _choice("model.arch", m.arch, ARCH_CHOICES)
    _choice("model.likelihood", m.likelihood, LIKELIHOOD_CHOICES)
    _choice("model.posterior", m.posterior, POSTERIORS)
    _choice("model.prior", m.prior, PRIORS)
    _choice("model.objective", m.objective, OBJECTIVES)
    _choice("model.kl_schedule", m.kl_schedule, KL_SCHEDULES)
    for key in ("latent_dim", "kl_cycles", "flow_steps", "flow_hidden", "prior_components", "iwae_samples"):
        _positive(f"model.{key}", m[key])
    for key in ("alpha", "gamma", "capacity_max"):
        if not (math.isfinite(m[key]) and m[key] >= 0):
            raise UserError(f"model.{key}={m[key]} must be a finite number >= 0.")
    if m.capacity_steps is not None:
        _positive("model.capacity_steps", m.capacity_steps)
    _check_combination(m, batch_size)
    for key in ("hidden_dims", "conv_channels"):
        if not m[key]:
            raise UserError(f"model.{key}=[] is empty; list at least one layer width, e.g. model.{key}=[{','.join(map(str, getattr(ModelConfig(), key)))}].")
        for i, width in enumerate(m[key]):
            _positive(f"model.{key}[{i}]", width)
    if not 0 < m.kl_cycle_ratio <= 1:
        raise UserError(f"model.kl_cycle_ratio={m.kl_cycle_ratio} must lie in (0, 1].")
    if not (math.isfinite(m.free_bits) and m.free_bits >= 0):
        raise UserError(f"model.free_bits={m.free_bits} must be a finite number >= 0 (nats per latent dimension).")
    if not math.isfinite(m.beta):
        raise UserError(f"model.beta={m.beta} is not a finite number; pass a finite value.")
    if m.beta < 0:
        raise UserError(f"model.beta={m.beta} is negative; use a KL weight >= 0 (1 is the plain VAE).")
    if m.kl_warmup_steps < 0:
        raise UserError(f"model.kl_warmup_steps={m.kl_warmup_steps} is negative; use 0 for no warm-up.")


def _check_combination(m: DictConfig, batch_size: int) -> None:
    """Refuse choices that do not go together, naming the keys."""
    analytic = choices.closed_form_kl(m.posterior, m.prior)
    if m.free_bits > 0 and not (analytic and m.objective == "elbo"):
        raise UserError(
            f"model.free_bits={m.free_bits} floors each latent dimension's closed-form KL, which needs model.objective=elbo, "
            f"model.posterior=gaussian and model.prior=normal (here {m.objective}, {m.posterior}, {m.prior}); set model.free_bits=0."
        )
    if m.objective == "beta_tc" and batch_size < 2:
        raise UserError(
            f"model.objective=beta_tc estimates q(z) from the other images of each batch, and train.batch_size={batch_size} has none; "
            f"use a batch of at least 2 (the larger, the closer the estimate)."
        )
    if m.objective == "beta_tc" and not analytic:
        raise UserError(
            f"model.objective=beta_tc estimates q(z) from the Gaussian posteriors of the batch and splits the KL per dimension of a "
            f"factorised prior, so it needs model.posterior=gaussian and model.prior=normal (here {m.posterior}, {m.prior})."
        )
    scheduled = m.kl_warmup_steps > 0 or m.kl_schedule == "cyclical"
    if scheduled and m.objective not in ("elbo", "beta_tc"):
        raise UserError(
            f"model.kl_warmup_steps and model.kl_schedule=cyclical schedule beta, which model.objective={m.objective} does not use; "
            f"drop them, or use model.objective=elbo."
        )
    if m.objective in ("iwae", "capacity") and m.beta != 1:
        raise UserError(f"model.beta={m.beta} is not used by model.objective={m.objective}; leave it at 1 (capacity is weighted by model.gamma).")


def _check_dataset(d: DictConfig) -> None:
    _choice("dataset.name", d.name, DATASETS)
    _choice("dataset.binarize", d.binarize, BINARIZE)
    _choice("dataset.noise", d.noise, NOISES)
    if d.noise != "none" and not (0 < d.noise_level < (1 if d.noise == "salt_pepper" else math.inf)):
        raise UserError(f"dataset.noise_level={d.noise_level} does not suit dataset.noise={d.noise}; use a level > 0 (a fraction < 1 for salt_pepper).")
    for key in ("num_workers", "max_memory_mb"):
        if d[key] < 0:
            raise UserError(f"dataset.{key}={d[key]} is negative; use 0 or more.")
    for key in ("image_size", "train_samples", "val_samples"):
        if d[key] is not None:
            _positive(f"dataset.{key}", d[key])
    if d.channels not in (None, 1, 3):
        raise UserError(f"dataset.channels={d.channels} is not supported; use 1 (greyscale) or 3 (RGB).")
    if d.channels is not None and d.name in ("mnist", "fashion_mnist", "dsprites"):
        raise UserError(f"dataset.channels={d.channels} applies to image folders and the CIFAR-10 image tree; {d.name} is greyscale: leave it unset.")
    if not (math.isfinite(d.val_fraction) and 0 < d.val_fraction < 1):
        raise UserError(f"dataset.val_fraction={d.val_fraction} must lie strictly between 0 and 1.")
    if d.name == "dsprites" and d.binarize != "none":
        raise UserError(f"dataset.binarize={d.binarize} does nothing on dsprites, whose pixels are already 0 or 1; leave it at none.")
    if d.name == "image_folder" and not d.path:
        raise UserError("dataset=image_folder needs dataset.path: pass dataset.path=/folder/of/images.")


def _check_train(t: DictConfig, o: DictConfig, e: DictConfig) -> None:
    for key in ("batch_size", "epochs", "log_every_steps", "image_every_epochs", "max_skipped_steps"):
        _positive(f"train.{key}", t[key])
    for key in ("max_steps", "grad_clip"):
        if t[key] is not None:
            _positive(f"train.{key}", t[key])
    if t.checkpoint_every_steps < 0:
        raise UserError(f"train.checkpoint_every_steps={t.checkpoint_every_steps} is negative; use 0 to checkpoint at epoch ends only.")
    if t.pictures_every_epochs < 0:
        raise UserError(f"train.pictures_every_epochs={t.pictures_every_epochs} is negative; use 0 to keep only the latest pictures, or N to keep every N-th epoch's.")
    _positive("optim.lr", o.lr)
    if not math.isfinite(o.weight_decay):
        raise UserError(f"optim.weight_decay={o.weight_decay} is not a finite number; pass a finite value.")
    if o.weight_decay < 0:
        raise UserError(f"optim.weight_decay={o.weight_decay} is negative; use 0 or more.")
    _positive("eval.nll_samples", e.nll_samples)
    _positive("eval.nll_chunk", e.nll_chunk)
    if e.test_samples is not None:
        _positive("eval.test_samples", e.test_samples)
    if e.disentanglement_images < 100:
        raise UserError(
            f"eval.disentanglement_images={e.disentanglement_images} is too few to estimate mutual information and train the DCI "
            f"and SAP classifiers; use 100 or more (10,000 is the convention)."
        )
    if e.fd_samples != "auto" and (isinstance(e.fd_samples, bool) or not isinstance(e.fd_samples, int) or e.fd_samples < 2):
        raise UserError(f"eval.fd_samples={e.fd_samples!r} is not a number of samples; use an integer of 2 or more, or auto.")
    if e.inception_weights is not None:
        from vae_runner.sample_quality import check_inception_weights  # torch loads only when the key is set

        check_inception_weights(e.inception_weights)
    if e.nll_images not in ("auto", "all"):
        if isinstance(e.nll_images, bool) or not isinstance(e.nll_images, int) or e.nll_images < 1:
            raise UserError(f"eval.nll_images={e.nll_images!r} is not a number of images; use a positive integer, all or auto.")


# Groups whose extra keys are legitimate: optim.* are the optimizer's own arguments (checked against its signature).
_OPEN_GROUPS = ("optim", "hydra")
_MISSING = object()  # OmegaConf.select's default: tells an absent key from one set to null


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse a key the schema does not know, even one added with `+` (Hydra lets `+model.betta=4` through)."""
    schema = OmegaConf.structured(Config)
    for key in _leaf_keys(cfg):
        if key.split(".", 1)[0] in _OPEN_GROUPS or OmegaConf.select(schema, key, default=_MISSING) is not _MISSING:
            continue
        known = [k for k in _leaf_keys(schema) if k.split(".", 1)[0] == key.split(".", 1)[0]]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"{key} is not a config key; {hint}README's config table lists the keys.")



def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted names of the config's non-group entries, e.g. model.beta."""
    keys = []
    for key in cfg.keys():
        node = cfg._get_node(key)
        name = f"{prefix}{key}"
        keys.extend(_leaf_keys(node, f"{name}.") if isinstance(node, DictConfig) else [name])
    return keys


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {', '.join(choices)}; pick one of those.")


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UserError(f"{key}={value!r} must be a positive, finite number.")
