"""`vae-run` end to end, as a subprocess, on small real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import read_images, read_scalars, vae_run

SMALL = ["train.epochs=2", "dataset.train_samples=2000", "dataset.val_samples=500", "eval.test_samples=500", "train.log_every_steps=2"]


def _only_run_dir(base: Path) -> Path:
    runs = [p for p in (base / "outputs" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def mnist_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One default-model run on 2,000 MNIST images for 2 epochs, from an unrelated working directory."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = vae_run(f"dataset.root={mnist_root}", *SMALL, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _only_run_dir(cwd), proc.stdout


def test_run_lowers_val_loss(mnist_run: tuple[Path, str]) -> None:
    run_dir, _ = mnist_run
    val = read_scalars(run_dir)["val/loss"]
    assert [step for step, _ in val] == [16, 32]  # 2,000 images / batch 128 = 16 steps an epoch
    assert val[1][1] < val[0][1] < 784 * np.log(2)  # below the untrained model's ~543 nats and falling
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/loss"] == pytest.approx(val[1][1], rel=1e-5)
    assert metrics["val/loss"] == pytest.approx(metrics["val/recon"] + metrics["val/kl"], rel=1e-5)
    assert metrics["train/seconds"] > 0 and metrics["train/images_per_s"] > 100


def test_run_writes_tensorboard_scalars_per_step(mnist_run: tuple[Path, str]) -> None:
    run_dir, _ = mnist_run
    scalars = read_scalars(run_dir)
    for tag in ("train/loss", "train/recon", "train/kl", "train/beta", "val/loss", "val/recon", "val/kl"):
        assert tag in scalars, tag
    steps = [s for s, _ in scalars["train/recon"]]
    assert steps[:3] == [1, 2, 4] and steps[-1] == 32
    assert all(value == 1.0 for _, value in scalars["train/beta"])


def test_run_writes_image_grids(mnist_run: tuple[Path, str]) -> None:
    run_dir, _ = mnist_run
    images = read_images(run_dir)
    # 8 inputs over 8 reconstructions: 2 rows of 28 px with 2 px padding
    assert images["val/reconstructions"][-1] == (32, 2 * 30 + 2, 8 * 30 + 2)
    assert images["samples/prior"][-1] == (32, 8 * 30 + 2, 8 * 30 + 2)  # 8x8 samples
    assert len(images["samples/prior"]) == 2  # one per epoch


def test_run_declares_hparams_in_its_own_run(mnist_run: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, _ = mnist_run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # in the run directory: TensorBoard names the run by it
    assert not list(run_dir.glob("*/**/events.out.tfevents.*"))  # no extra timestamped run below it
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    core = {"model", "dataset", "model.beta", "model.latent_dim", "optim.lr"}
    assert {h.name for h in experiment.hparam_infos} >= core | {"train.batch_size", "seed"}
    assert {h.name for h in experiment.hparam_infos if h.differs} == core  # TensorBoard shows these five first
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/loss", "val/elbo"}


def test_run_directory_holds_config_checkpoint_and_metrics(mnist_run: tuple[Path, str]) -> None:
    run_dir, stdout = mnist_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 32 and (checkpoint["epoch"], checkpoint["batches_done"]) == (3, 0)  # next: epoch 3, batch 0
    assert checkpoint["config"]["model"]["name"] == "vae"
    assert {"model", "optimizer", "scaler"} <= checkpoint.keys()
    assert "final metrics" in stdout and "val/loss" in stdout
    assert "train.epochs=2" in run_dir.name  # named after the overrides


def test_beta_multirun_writes_one_named_directory_per_value(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(
        "-m", "model=beta_vae", "model.beta=1,4", f"dataset.root={mnist_root}",
        "train.max_steps=5", "dataset.train_samples=1000", "dataset.val_samples=200", "eval.test_samples=200", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["model.beta=1", "model.beta=4"]
    for name, beta in (("model.beta=1", 1.0), ("model.beta=4", 4.0)):
        scalars = read_scalars(sweep / name)
        assert scalars["train/beta"][-1][1] == beta
        assert (sweep / name / "metrics.json").is_file()


def _write_image_folder(root: Path, n_per_class: int = 40, size: int = 40) -> Path:
    """Two classes of RGB images: red-ish squares and blue-ish circles-ish blobs, in class subfolders."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["red", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            pixels[8:32, 8:32, 0 if k == 0 else 2] = 230
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def test_cvae_on_an_image_folder_uses_the_conv_architecture(tmp_path: Path) -> None:
    folder = _write_image_folder(tmp_path / "images")
    proc = vae_run(
        "model=cvae", "dataset=image_folder", f"dataset.path={folder}", "dataset.image_size=32",
        "train.epochs=2", "train.batch_size=16", "dataset.num_workers=0", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cvae (conv" in proc.stdout
    run_dir = _only_run_dir(tmp_path)
    images = read_images(run_dir)
    height, width = images["samples/prior"][-1][1:]
    assert height == 2 * 34 + 2 + 8  # one row per class (2 px gutters), in the figure's 4 px margins
    assert width > 8 * 34 + 2 + 12  # 8 samples a row, and the class names' column left of them
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["val/loss"])


def test_missing_dataset_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    proc = vae_run("dataset=fashion_mnist", f"dataset.root={tmp_path / 'empty'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "fashion_mnist could not be found or downloaded" in out and str(tmp_path / "empty") in out


def test_cvae_on_unlabelled_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    proc = vae_run("model=cvae", "dataset=image_folder", f"dataset.path={folder}", "dataset.num_workers=0", "train.batch_size=2", cwd=tmp_path)
    assert proc.returncode == 2
    assert "has no labels" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
