"""What a model learned, end to end: disentanglement metrics on dsprites and sample quality through the cached classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import read_scalars, vae_eval, vae_run
from vae_runner.evaluate import Factors, captured_factors, fd_sample_count, prior_samples
from vae_runner.model import VAE

DISENTANGLEMENT = ("test/mig", "test/dci_disentanglement", "test/dci_completeness", "test/dci_informativeness", "test/factorvae_score", "test/sap")
SMALL_DSPRITES = [
    "dataset=dsprites", "dataset.train_samples=2048", "dataset.val_samples=256", "eval.test_samples=400", "eval.disentanglement_images=300",
    "train.epochs=1", "train.batch_size=128", "eval.nll_samples=2", "model.latent_dim=6",
    "eval.sample_quality=false",  # its classifier on 64x64 images costs 20 s here; test/fd is checked on MNIST below
]


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def dsprites_run(dsprites_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VAE run on dsprites, trained once for this module."""
    base = tmp_path_factory.mktemp("dsprites-run")
    proc = vae_run(f"dataset.root={dsprites_root}", *SMALL_DSPRITES, f"hydra.run.dir={base / 'run'}", cwd=base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base / "run"


def test_a_dsprites_run_records_every_disentanglement_metric_with_its_counts(dsprites_run: Path) -> None:
    metrics = _metrics(dsprites_run)
    for name in DISENTANGLEMENT:
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["test/disentanglement_images"] == 300
    assert metrics["test/dci_train_images"] + metrics["test/dci_test_images"] == 300
    assert metrics["test/factorvae_train_votes"] == 10_000 and metrics["test/factorvae_eval_votes"] == 5_000
    scalars = read_scalars(dsprites_run)
    assert scalars["test/mig"][-1][1] == pytest.approx(metrics["test/mig"], abs=1e-6)
    assert "test/fd" not in metrics  # eval.sample_quality=false


def test_the_same_checkpoint_gives_the_same_figures(dsprites_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(dsprites_run, copy)
    proc = vae_eval(str(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = _metrics(dsprites_run), _metrics(copy)
    for name in DISENTANGLEMENT:
        assert after[name] == before[name], name


def test_the_same_cvae_checkpoint_gives_the_same_sample_quality(cvae_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(cvae_dir, copy)
    proc = vae_eval(str(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("test/fd", "test/classifier_accuracy", "test/cvae_label_accuracy"):
        assert _metrics(copy)[name] == _metrics(cvae_dir)[name], name


def test_the_traversal_names_the_factor_each_dimension_captures() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.stack([torch.randint(0, 3, (2000,), generator=g), torch.randint(0, 32, (2000,), generator=g)], dim=1)  # shape, posX
    codes = torch.stack([values[:, 1].double() + 0.01 * torch.randn(2000, generator=g, dtype=torch.float64),
                         torch.randn(2000, generator=g, dtype=torch.float64), values[:, 0].double()], dim=1)
    notes = captured_factors(codes, Factors(["shape", "posX"], values))
    assert notes[0].startswith("posX ") and float(notes[0].split()[1]) > 0.8  # 20 bins of 32 positions: ln 20 / ln 32 = 0.86
    assert notes[2] == "shape 1.00"
    assert float(notes[1].split()[1]) < 0.1  # noise captures nothing


def test_a_cvae_on_dsprites_is_not_scored_on_the_shape_its_label_gives_it(dsprites_root: Path, tmp_path: Path) -> None:
    proc = vae_run(f"dataset.root={dsprites_root}", *SMALL_DSPRITES, "model=cvae", "eval.sample_quality=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "disentanglement scored against scale, orientation, posX, posY on 300 test images" in (tmp_path / "run" / "vae-run.log").read_text()
    assert "test/mig" in _metrics(tmp_path / "run")


def test_a_cvae_run_records_its_label_accuracy_and_fd(cvae_dir: Path) -> None:
    metrics = _metrics(cvae_dir)
    assert 0.0 <= metrics["test/cvae_label_accuracy"] <= 1.0
    assert metrics["test/fd"] > 0
    assert metrics["test/fd_samples"] == 100  # eval.fd_samples=auto: as many as the 100 test images
    assert "test/fid skipped: eval.inception_weights is not set" in (cvae_dir / "vae-run.log").read_text()


def test_fd_samples_never_exceed_the_test_images() -> None:
    assert fd_sample_count("auto", 60_000) == 10_000
    assert fd_sample_count("auto", 400) == 400
    assert fd_sample_count(5000, 400) == 400
    assert fd_sample_count(50, 400) == 50


def test_prior_samples_follow_the_classes_and_binarisation_asked_for() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=8, latent_dim=3, hidden_dims=[16], num_classes=4)
    images, intended = prior_samples(model, 10, seed=1, classes=[0, 2, 3], binary=True)
    assert intended.tolist() == [0, 2, 3, 0, 2, 3, 0, 2, 3, 0]
    assert images.shape == (10, 1, 8, 8) and set(images.unique().tolist()) <= {0.0, 1.0}
    again, _ = prior_samples(model, 10, seed=1, classes=[0, 2, 3], binary=True)
    assert torch.equal(images, again)
