"""Checkpoints and run records: written atomically, read without running code from the file."""

from __future__ import annotations

import logging
import pickle
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from vae_runner.atomic import atomic_write
from vae_runner.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "step", "epoch", "batches_done", "config")


def rng_state() -> dict[str, Any]:
    """Every random-number generator a training step draws from (torch CPU and CUDA, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Draw from a freshly seeded random state, then restore the caller's: evaluation noise that is fixed and leaves training's stream untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def all_finite(model: nn.Module) -> bool:
    """True when no parameter holds a NaN or an Inf."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save_checkpoint(path: Path, checkpoint: dict[str, Any], model: nn.Module) -> bool:
    """Write the checkpoint atomically, unless the model went non-finite: a good checkpoint is never overwritten by a bad one."""
    if not all_finite(model):
        log.warning("model parameters are not finite at step %d; keeping the previous checkpoint %s", checkpoint["step"], path)
        return False
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    return True


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, never code from the file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise UserError(
                f"{path} asks to run code while loading and was refused (weights_only=True); "
                f"only resume from checkpoints vae-run wrote, or delete it to start over."
            ) from None
        raise UserError(f"{path} is not a readable checkpoint (corrupt or truncated); delete it to start over.") from None
    except Exception as err:  # torch.load raises RuntimeError, EOFError, KeyError ... on files it cannot read
        reason = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint ({reason}); delete it to start over.") from None
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a vae-run checkpoint (missing {', '.join(CHECKPOINT_KEYS)}); delete it to start over.")
    return checkpoint


def check_layout(state: dict[str, Any], path: Path) -> None:
    """Refuse weights saved before the model was composed of parts (they have `to_posterior`), in one sentence."""
    if "to_posterior.weight" in state:
        raise UserError(
            f"{path} was saved by a vae-runner from before the composable model (posterior, prior, likelihood), whose weights "
            f"are laid out differently; train the run again (its .hydra/config.yaml holds its settings)."
        )


def load_model_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load weights, turning a shape mismatch into one sentence."""
    check_layout(state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line or "Missing" in line or "Unexpected" in line), "")
        raise UserError(
            f"{path} holds a model of a different shape than this config ({detail.rstrip('.')}); "
            f"resume with the run's own settings, or start a new run directory."
        ) from None


def environment() -> dict[str, Any]:
    """Package versions, platform and the project's git commit, for the run record."""
    packages = {}
    for name in ("vae-runner", "torch", "torchvision", "hydra-core", "omegaconf", "tensorboard", "rich", "numpy", "pillow"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "argv": sys.argv,
    }
    env.update(_git_state(Path(__file__).resolve().parent))
    return env


def _git_state(folder: Path) -> dict[str, Any]:
    """The commit (and whether the tree is dirty) when the package runs from a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
