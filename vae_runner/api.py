"""Use vae-runner from Python: `load_run(path)` for a trained run's model, config and metrics; `run(overrides)` to train one.

```python
from vae_runner import load_run, run

metrics = run(["model=beta_vae", "model.beta=4", "train.epochs=2"])  # what `vae-run ...` runs
r = load_run(metrics.run_dir)  # or load_run("outputs/runs/<run>")
x_hat = r.reconstruct(x)  # x: (N, C, H, W) floats in [0, 1]
```
"""

from __future__ import annotations

import math
import numbers
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vae_runner.build import build_model, resolve_device
from vae_runner.checkpoint import check_layout, load_checkpoint, load_model_state
from vae_runner.config import MAX_SEED, STAMP_ENV, Config, run_stamp
from vae_runner.data import DatasetInfo
from vae_runner.data.idx import FORMATS
from vae_runner.errors import UserError
from vae_runner.model import VAE, evaluating
from vae_runner.priors import Prior
from vae_runner.run_dir import RunDir, read_metrics

Labels = Union[int, Sequence[int], Tensor, None]

# The image side when `dataset.image_size` is unset: the dataset's own (an image folder is resized to 64).
NATIVE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "image_folder": 64}
CHUNK = 1024  # images through the model at once: memory stays bounded for any n


# ------------------------------------------------------------------ a trained run


@dataclass
class LoadedRun:
    """A trained run: its model (eval mode, on `device`), resolved config, and metrics; every method returns CPU tensors."""

    run_dir: Path
    model: VAE
    config: DictConfig
    device: torch.device
    step: int  # the optimizer step the checkpoint was saved at
    class_names: Optional[list[str]]  # MNIST's and Fashion-MNIST's (label k is class_names[k]); None where only the data knows them

    @property
    def metrics(self) -> dict[str, float]:
        """The run's metrics.json, read now ({} while the run has none yet)."""
        path = RunDir(self.run_dir).metrics
        return read_metrics(path) if path.is_file() else {}

    @property
    def num_classes(self) -> int:
        """The classes a CVAE is conditioned on; 0 for an unconditional model."""
        return self.model.num_classes

    @property
    def prior(self) -> Prior:
        """p(z) on the CPU, detached from the model's parameters, with `log_prob(z)` and `sample(n)`."""
        with evaluating(self.model):
            return self.model.prior_distribution().to(torch.device("cpu"))

    @property
    def latent_dim(self) -> int:
        """The size of z."""
        return self.model.latent_dim

    def encode(self, x: Tensor, labels: Labels = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x)'s Gaussian stage (all of q without a flow), each (N, latent_dim).

        For images (N, C, H, W) or (C, H, W) in [0, 1].
        """
        x = self._images(x)
        y = self._labels(labels, x.shape[0])
        mus, logvars = [], []
        with evaluating(self.model):
            for start in range(0, x.shape[0], CHUNK):
                mu, logvar = self.model.encode(x[start : start + CHUNK], _rows(y, start))
                mus.append(mu.float().cpu())
                logvars.append(logvar.float().cpu())
        return torch.cat(mus), torch.cat(logvars)

    def code(self, x: Tensor, labels: Labels = None) -> Tensor:
        """The latent code of each image, (N, latent_dim) on the CPU: the posterior mean, through the flow (noise 0) if there is one."""
        x = self._images(x)
        y = self._labels(labels, x.shape[0])
        return self._chunked(lambda start: self.model.code(x[start : start + CHUNK], _rows(y, start)), x.shape[0])

    def reconstruct(self, x: Tensor, labels: Labels = None) -> Tensor:
        """The decoder's mean image at the latent code (`code`), (N, C, H, W) in [0, 1]: what the run's `val/reconstructions` picture shows."""
        from vae_runner.evaluate import reconstruct  # the picture's own code (it imports TensorBoard, hence here)

        x = self._images(x)
        y = self._labels(labels, x.shape[0])
        return self._chunked(lambda start: reconstruct(self.model, x[start : start + CHUNK], _rows(y, start)), x.shape[0])

    def decode(self, z: Tensor, labels: Labels = None) -> Tensor:
        """The decoder's mean image for latents z (N, latent_dim) or (latent_dim,): (N, C, H, W) in [0, 1] (probabilities for a Bernoulli likelihood)."""
        z = self._latents(z)
        y = self._labels(labels, z.shape[0])
        return self._chunked(lambda start: self.model.sample(z[start : start + CHUNK], _rows(y, start)), z.shape[0])

    def sample(self, n: int, labels: Labels = None, temperature: float = 1.0, seed: Optional[int] = None) -> Tensor:
        """n images decoded from z drawn from the prior (`draw_latents`): (n, C, H, W) in [0, 1]; a CVAE needs `labels` (one class, or n)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n={n!r} must be a whole number of images >= 1.")
        self._labels(labels, n)  # refused before any work
        return self.decode(draw_latents(n, self.prior, temperature, seed), labels)

    def _chunked(self, images: Callable[[int], Tensor], n: int) -> Tensor:
        """`images(start)` for each chunk of CHUNK rows, in eval mode without gradients, joined on the CPU."""
        with evaluating(self.model):
            return torch.cat([images(start).float().cpu() for start in range(0, n, CHUNK)])

    def _images(self, x: Tensor) -> Tensor:
        """x as an (N, C, H, W) float batch on the model's device; anything that cannot be this run's images is one sentence."""
        c, s = self.model.in_channels, self.model.image_size
        x = torch.as_tensor(x)
        shape = tuple(x.shape)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s) or x.shape[0] == 0:
            raise ValueError(f"this run's model takes images of shape (N, {c}, {s}, {s}) or ({c}, {s}, {s}) with N >= 1, got {shape}.")
        if not x.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1], got {x.dtype}; divide uint8 images by 255.")
        if not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons
            raise ValueError(f"images must lie in [0, 1], got values from {x.min().item():g} to {x.max().item():g} (or NaN); scale them to [0, 1].")
        return x.to(self.device, torch.float32)

    def _latents(self, z: Tensor) -> Tensor:
        """z as an (N, latent_dim) float batch on the model's device."""
        z = torch.as_tensor(z)
        shape = tuple(z.shape)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.shape[1] != self.latent_dim or z.shape[0] == 0 or not z.is_floating_point():
            raise ValueError(f"this run's model decodes float latents of shape (N, {self.latent_dim}) or ({self.latent_dim},) with N >= 1, got {z.dtype} {shape}.")
        if not bool(torch.isfinite(z).all()):  # NaN or Inf (a temperature past float32's range) would decode to NaN pixels
            raise ValueError("latents must be finite numbers; got NaN or Inf (is the temperature too large?).")
        return z.to(self.device, torch.float32)

    def _labels(self, labels: Labels, n: int) -> Optional[Tensor]:
        """Class indices (n,) on the model's device for a CVAE, None for a VAE; a missing, extra or out-of-range label is one sentence."""
        k = self.num_classes
        if not k:
            if labels is not None:
                raise ValueError(f"this run's model ({self.config.model.name}) is not conditional and takes no labels; drop labels=.")
            return None
        if labels is None:
            raise ValueError(f"this run's model is a CVAE over {k} classes and needs labels=: a class index 0..{k - 1}, or one per image.")
        y = torch.as_tensor(labels)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"labels must be whole class indices 0..{k - 1}, got {y.dtype}.")
        if y.dim() == 0:
            y = y.expand(n)
        if tuple(y.shape) != (n,):
            raise ValueError(f"labels must be one class index or {n} of them (one per image), got shape {tuple(y.shape)}.")
        if bool(((y < 0) | (y >= k)).any()):
            bad = sorted({int(v) for v in y[(y < 0) | (y >= k)].tolist()})
            raise ValueError(f"labels {bad} are out of range: this run's CVAE has {k} classes, 0..{k - 1}.")
        return y.to(self.device, torch.long)


def _rows(y: Optional[Tensor], start: int) -> Optional[Tensor]:
    """The labels of the chunk starting at `start`."""
    return None if y is None else y[start : start + CHUNK]


def draw_latents(n: int, prior: Prior, temperature: float = 1.0, seed: Optional[int] = None) -> Tensor:
    """n draws of z from a model's prior (`model.prior_distribution()`), (n, latent_dim) on the CPU.

    The generator is seeded with `seed` (torch's global one when None).

    `temperature` scales the standard deviation: N(0, temperature² I) for the normal prior, each component's for a mixture.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a positive, finite number (1.0 samples the prior itself).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed={seed!r} is out of range; use an integer from 0 to 2**32 - 1 ({MAX_SEED}), or None.")
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return prior.sample(int(n), generator, float(temperature), device=torch.device("cpu"))


def load_run(path: Union[str, os.PathLike], device: Union[str, torch.device] = "auto") -> LoadedRun:
    """A run directory's model (from checkpoints/last.pt, in eval mode, on `device`: `auto` is CUDA, then MPS, then the CPU), config and metrics."""
    run = RunDir(Path(path).expanduser())
    if not run.checkpoint.is_file() or not run.config.is_file():
        raise UserError(
            f"{path} is not a vae-run run directory (it needs .hydra/config.yaml and checkpoints/last.pt); "
            f"pass a folder under outputs/runs/ or outputs/sweeps/<time>/."
        )
    cfg = saved_config(run)
    try:
        target = resolve_device(str(device))
    except RuntimeError:  # torch.device's own refusal of a name it does not know
        raise UserError(f"device={device} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    saved = load_checkpoint(run.checkpoint)
    info = dataset_info(cfg, saved["model"], run.checkpoint)
    with torch.random.fork_rng(devices=[]):  # building initialises weights randomly: the caller's random stream stays as it was
        model = build_model(cfg.model, info)
    load_model_state(model, saved["model"], run.checkpoint)
    model.to(target).eval()
    return LoadedRun(run.root, model, cfg, target, int(saved["step"]), info.class_names or None)


def saved_config(run: RunDir) -> DictConfig:
    """The run's resolved config (.hydra/config.yaml) over the schema's defaults, as `vae-eval` reads it."""
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run.config))
    except Exception as err:  # YAML errors, keys the schema lacks, wrong types: OmegaConf's errors
        raise UserError(f"{run.config} is not a readable vae-run config ({str(err).splitlines()[0]}); restore it from the run's checkpoint.") from None


def dataset_info(cfg: DictConfig, state: dict[str, Tensor], path: Path) -> DatasetInfo:
    """What the model was built for, without reading the data: the image side from the config, channels and classes from the weights.

    The weights settle what the config may leave open (`arch=auto`, a folder's
    channels, the number of class subfolders): the first encoder layer's input
    is C (conv) or C * side² (MLP), and the decoder's first layer takes
    latent_dim + num_classes inputs.
    """
    d, m = cfg.dataset, cfg.model
    check_layout(state, path)
    side = d.image_size or NATIVE_SIZE.get(d.name, 0)
    first = next((v for k, v in state.items() if k.startswith("encoder.") and k.endswith(".weight")), None)  # (C_out, C, 4, 4) or (W, C * side²)
    decoder_in = state.get("decoder.0.weight")
    if decoder_in is None or not side or first is None:
        raise UserError(f"{path} does not hold a vae-run model for dataset={d.name} (no encoder or decoder weights); delete it to start over.")
    channels = first.shape[1] if first.dim() == 4 else first.shape[1] // side**2
    names = list(FORMATS[d.name][3]) if d.name in FORMATS else []
    num_classes = decoder_in.shape[1] - m.latent_dim if m.conditional else len(names)
    return DatasetInfo(d.name, channels, side, num_classes, names)


# ------------------------------------------------------------------ training, as the command line does


class RunFailed(Exception):
    """`vae-run` stopped without finishing; the message is its own error sentence, `exit_code` its exit status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class RunMetrics(dict):
    """A finished run's final metrics ({name: number}, its metrics.json), with `run_dir` where it was written."""

    def __init__(self, metrics: dict[str, float], run_dir: Path):
        super().__init__(metrics)
        self.run_dir = run_dir


def run(overrides: Union[Sequence[str], str] = ()) -> RunMetrics:
    """Train exactly as `vae-run OVERRIDES` does, in a subprocess whose output goes to this process's stdout and stderr; returns the final metrics.

    One run per call: `-m` (a sweep) and Hydra's other flags are refused; a sweep
    is `vae-run -m ...` on the command line, compared with `vae-compare`. The run
    directory is the one the command line would create (outputs/runs/<time>_<overrides>
    under the current directory), `hydra.run.dir=` when given, or the folder of
    `resume=<run>`; `RunMetrics.run_dir` says which. A run that fails raises
    `RunFailed` with the command's error sentence.
    """
    args = shlex.split(overrides) if isinstance(overrides, str) else [str(o) for o in overrides]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ValueError(
            f"run() takes key=value overrides only, got {flags[0]}: it trains one run; for a sweep run "
            f"`vae-run -m ...` on the command line and compare the jobs with vae-compare."
        )
    stamp = _new_stamp()
    # The child names its folder with our stamp; vae-runner's other hand-over variables are not inherited.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_RUNNER_") or k == "VAE_RUNNER_HIDE_SHARED"}
    env.update({STAMP_ENV: stamp, "PYTHONUNBUFFERED": "1"})  # unbuffered: its lines arrive as it prints them
    code, error = _passed_through([sys.executable, "-m", "vae_runner.cli", *args], env)
    if code != 0:
        raise RunFailed(error or f"vae-run {' '.join(args)} exited with status {code}.", code)
    run_dir = _run_dir(args, stamp)
    metrics = RunDir(run_dir).metrics
    if not metrics.is_file():
        raise RunFailed(f"vae-run {' '.join(args)} finished but {run_dir} holds no metrics.json.", 1)
    return RunMetrics(read_metrics(metrics), run_dir)


def _new_stamp() -> str:
    """A fresh run stamp, even in a process that holds one (`run_stamp` hands an inherited stamp back as it is)."""
    inherited = os.environ.pop(STAMP_ENV, None)
    try:
        return run_stamp()
    finally:
        if inherited is not None:
            os.environ[STAMP_ENV] = inherited


def _passed_through(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command`, copying its stdout and stderr line by line to ours; returns its exit status and its last `error: ...` sentence (else its last stderr line)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, errors="replace", bufsize=1)
    last: dict[str, str] = {}

    def copy(source: TextIO, sink: TextIO, keep: bool) -> None:
        for line in source:
            sink.write(line)
            sink.flush()
            text = line.strip()
            if keep and text and ("error" not in last or text.startswith("error:")):
                last["error" if text.startswith("error:") else "line"] = text
        source.close()

    errors = threading.Thread(target=copy, args=(proc.stderr, sys.stderr, True), daemon=True)
    errors.start()
    try:
        copy(proc.stdout, sys.stdout, False)
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too: it checkpoints and stops; wait for it
        proc.wait()
        raise
    finally:
        errors.join()
    sentence = last.get("error") or last.get("line", "")
    return code, sentence.removeprefix("error:").strip()


def _run_dir(args: list[str], stamp: str) -> Path:
    """Where the run went: `resume=<run>`'s folder, else `hydra.run.dir`, else the folder the command line named with `stamp`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for override in OverridesParser.create().parse_overrides(args):
        values[override.get_key_element().lstrip("+")] = override.value()
    resume = values.get("resume")
    if isinstance(resume, str) and resume.lower() not in ("true", "false", ""):
        return Path(resume).expanduser().absolute()
    if "hydra.run.dir" in values:  # as the command line takes it: no ~ expansion, no ${...} resolved here
        folder = str(values["hydra.run.dir"])
        if "${" in folder:
            raise RunFailed(f"hydra.run.dir={folder} finished, but run() cannot tell which folder ${{...}} named; pass a literal folder.", 1)
        return Path(os.path.abspath(folder))
    found = sorted(Path("outputs", "runs").glob(f"{stamp}_*"))
    if len(found) != 1:
        raise RunFailed(f"vae-run {' '.join(args)} finished but its run directory outputs/runs/{stamp}_* was not found under {Path.cwd()}; pass hydra.run.dir=<folder>.", 1)
    return found[0].absolute()
