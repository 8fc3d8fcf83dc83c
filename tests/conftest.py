"""Shared fixtures: real MNIST from ../shared/data when present, else a small MNIST-format set built here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vae_runner.config import config_dir, register_configs

REPO = Path(__file__).resolve().parents[1]
# VAE_RUNNER_HIDE_SHARED=1 runs the suite as on a user's fresh clone, where ../shared does not exist (CI runs both).
HIDE_SHARED_ENV = "VAE_RUNNER_HIDE_SHARED"
SHARED_DATA = REPO.parent / "shared" / "data" if os.environ.get(HIDE_SHARED_ENV, "") in ("", "0") else REPO / ".no-shared-data"


def build_fake_mnist(root: Path, n_train: int = 3000, n_test: int = 500, seed: int = 0) -> Path:
    """Write MNIST-format idx files whose class k is a bright bar at a class-dependent place, plus noise."""
    from vae_runner.data.mnist_mirror import write_idx

    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, k in enumerate(labels):
            row = 3 + 2 * int(k)
            images[i, row : row + 3, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# Tiny trained runs shared by the tests that load one (vae-sample, the Python API): 1,000 MNIST images, 2 epochs of 10 steps.
TINY_TRAINED = [
    "dataset.train_samples=1000", "dataset.val_samples=100", "eval.test_samples=100",
    "train.epochs=2", "train.batch_size=100", "eval.nll_samples=2",
]


def _tiny_run(model: str, mnist_root: Path, base: Path) -> Path:
    """A tiny run of `model` (vae or cvae) in `base`."""
    run_dir = base / f"tiny-{model}"
    proc = vae_run(f"model={model}", f"dataset.root={mnist_root}", *TINY_TRAINED, f"hydra.run.dir={run_dir}", cwd=base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture(scope="session")
def vae_dir(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained VAE run, trained once per test session."""
    return _tiny_run("vae", mnist_root, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def cvae_dir(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained CVAE run, trained once per test session."""
    return _tiny_run("cvae", mnist_root, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def classifier_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample-quality classifiers the suite's runs train are cached for the session, never in the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding MNIST/raw/: the real copy in ../shared/data, or a small fake one."""
    if (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return SHARED_DATA
    return build_fake_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def dsprites_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset.root holding the generated dSprites cache, generated once per test session (about 4 s, 377 MB)."""
    from vae_runner.data import dsprites

    root = tmp_path_factory.mktemp("dsprites")
    dsprites.load_packed(root)
    return root


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """../shared/data when it holds Fashion-MNIST (tests needing it skip otherwise)."""
    if not (SHARED_DATA / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip("Fashion-MNIST is not in ../shared/data")
    return SHARED_DATA


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The real config, composed as `vae-run` would, with overrides."""
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [], return_hydra_config=False)


def console_script(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed console script of the project as a user would."""
    exe = Path(sys.executable).with_name(name)
    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def vae_run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`vae-run ARGS` in `cwd`."""
    return console_script("vae-run", *args, cwd=cwd, timeout=timeout)


def vae_run_background(*args: str, cwd: Path) -> subprocess.Popen:
    """`vae-run ARGS` in `cwd`, started and left running, its output piped (to signal or kill it mid-run)."""
    exe = Path(sys.executable).with_name("vae-run")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def vae_eval(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`vae-eval ARGS`."""
    return console_script("vae-eval", *args, cwd=Path.cwd(), timeout=timeout)


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a TensorBoard run, read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_images(event_dir: Path) -> dict[str, list[tuple[int, int, int]]]:
    """Image tags with (step, height, width) of each logged image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [(e.step, e.height, e.width) for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
