"""Seeing inside a run: likelihood, collapse, latent pictures, anomaly detection and denoising, in TensorBoard and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import read_images, read_scalars, vae_eval, vae_run
from vae_runner.data import Split, TensorBatches, binarize_split, corrupt, select_classes
from vae_runner.model import VAEOutput
from vae_runner.gaussian import kl_to_standard_normal
from vae_runner.likelihoods import Bernoulli
from vae_runner.objective import Objective, kl_weight, objective_terms

SMALL = ["dataset.train_samples=3000", "dataset.val_samples=1000", "eval.test_samples=1000", "train.epochs=2", "eval.nll_samples=20"]


def _run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()
    return run_dir


def _histogram_tags(event_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"histograms": 0})
    acc.Reload()
    return set(acc.Tags()["histograms"])


@pytest.fixture(scope="module")
def latent2_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-d latent VAE on dynamically binarised MNIST without the digit 0, keeping each epoch's pictures."""
    cwd = tmp_path_factory.mktemp("latent2")
    proc = vae_run(
        f"dataset.root={mnist_root}", *SMALL, "model.latent_dim=2", "dataset.binarize=dynamic", "dataset.holdout_classes=[0]",
        "train.pictures_every_epochs=1", cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _run_dir(cwd)


def test_likelihood_metrics_are_recorded(latent2_run: Path) -> None:
    metrics = json.loads((latent2_run / "metrics.json").read_text())
    # IWAE with K=20 is a tighter bound than the ELBO: the NLL estimate lies below -ELBO, by a few nats
    assert 0 < -metrics["test/elbo"] - metrics["test/nll"] < 20
    assert metrics["test/bits_per_dim"] == pytest.approx(metrics["test/nll"] / (784 * math.log(2)), rel=1e-9)
    assert 1 <= metrics["val/active_units"] <= 2


def test_holding_out_a_digit_gives_an_auroc_well_above_chance(latent2_run: Path) -> None:
    metrics = json.loads((latent2_run / "metrics.json").read_text())
    assert metrics["test/anomaly_auroc"] > 0.7
    assert {"test/anomaly_score/normal", "test/anomaly_score/held_out"} <= _histogram_tags(latent2_run)


def test_collapse_is_visible_per_dimension(latent2_run: Path) -> None:
    scalars = read_scalars(latent2_run)
    assert {"val_kl_per_dim/00", "val_kl_per_dim/01", "val/active_units", "test/nll", "test/anomaly_auroc"} <= scalars.keys()
    # TensorBoard lists sections alphabetically: the per-dimension curves come after val/loss, val/recon, val/kl
    assert max(t for t in scalars if t.startswith("val/")) < min(t for t in scalars if t.startswith("val_kl_per_dim/"))
    kl_sum = scalars["val_kl_per_dim/00"][-1][1] + scalars["val_kl_per_dim/01"][-1][1]
    assert kl_sum == pytest.approx(scalars["val/kl"][-1][1], rel=1e-4)
    assert {"val_kl_per_dim/all", "val/posterior_mean", "val/posterior_std"} <= _histogram_tags(latent2_run)


def test_latent_pictures_have_the_right_shapes(latent2_run: Path) -> None:
    images = read_images(latent2_run)
    assert images["latent/manifold"][-1][1:] == (20 * 28 + 56, 20 * 28 + 82)  # the 560 px grid on axes giving z
    assert images["latent/scatter"][-1][1:] == (420, 520)
    height, width = images["latent/traversal"][-1][1:]
    assert height == 2 * 30 + 2 + 46 and 11 * 30 + 2 < width <= 800  # both dims, 11 steps from -3 to 3, labelled
    assert images["latent/interpolation"][-1][1:] == (4 * 30 + 2, 10 * 30 + 2)  # 4 pairs, 10 steps
    assert images["test/anomaly_scores"][-1][1:] == (320, 520)
    assert len(images["latent/manifold"]) == 2  # every epoch
    assert max(w for tag in images for _, _, w in images[tag]) <= 800  # each fits a TensorBoard card opened at actual size


EPOCH_PICTURES = {"latent_interpolation.png", "latent_manifold.png", "latent_scatter.png", "latent_traversal.png", "samples_prior.png", "val_reconstructions.png"}


def test_the_run_saves_its_pictures_as_the_pngs_tensorboard_shows(latent2_run: Path) -> None:
    from PIL import Image

    pictures = latent2_run / "pictures"
    assert {p.name for p in pictures.iterdir()} == EPOCH_PICTURES | {"test_anomaly_scores.png", "epoch_001", "epoch_002"}
    assert {p.name for p in (pictures / "epoch_001").iterdir()} == EPOCH_PICTURES  # train.pictures_every_epochs=1
    images = read_images(latent2_run)
    for name in EPOCH_PICTURES:
        tag = name.removesuffix(".png").replace("_", "/", 1)
        (first_h, first_w), (last_h, last_w) = images[tag][0][1:], images[tag][-1][1:]
        assert Image.open(pictures / "epoch_001" / name).size == (first_w, first_h), name
        assert Image.open(pictures / name).size == Image.open(pictures / "epoch_002" / name).size == (last_w, last_h), name
    assert Image.open(pictures / "latent_manifold.png").size == (560 + 82, 560 + 56)


def test_custom_scalars_put_recon_and_kl_side_by_side(latent2_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = EventAccumulator(str(latent2_run), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("custom_scalars__config__")  # the layout proto travels as the tensor's string value
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["val: recon and kl"] == ["^val/recon$", "^val/kl$"]  # anchored: these tags exactly


def test_vae_eval_recomputes_metrics_with_more_samples(latent2_run: Path, mnist_root: Path) -> None:
    before = json.loads((latent2_run / "metrics.json").read_text())
    proc = vae_eval(str(latent2_run), "eval.nll_samples=200", f"dataset.root={mnist_root}")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((latent2_run / "metrics.json").read_text())
    assert after["val/loss"] == pytest.approx(before["val/loss"], rel=1e-6)  # the same model, data and evaluation noise
    assert after["test/nll"] <= before["test/nll"] + 0.5  # K=200 is at least as tight as K=20, up to noise
    assert after["test/nll"] != before["test/nll"] and after["train/steps"] == before["train/steps"]
    assert "test/nll" in proc.stdout and "test/anomaly_auroc" in proc.stdout


def test_vae_eval_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = vae_eval(str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path} is not a vae-run run directory" in proc.stderr
    assert vae_eval(str(tmp_path.parent), "eval.nll_sampels=3").returncode == 2


def test_denoising_reports_psnr_above_the_noisy_input(mnist_root: Path, tmp_path: Path) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *SMALL, "model=cvae", "dataset.noise=gaussian", "dataset.noise_level=0.4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = _run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/psnr_recon"] > metrics["test/psnr_noisy"] + 0.5  # dB, after 2 short epochs
    images = read_images(run_dir)
    assert images["test/denoising"][-1][1] == 3 * 30 + 2 + 8  # noisy, reconstructed, clean, named beside the rows
    assert images["val/denoising"][-1][1] == 3 * 30 + 2 + 8
    assert images["samples/prior"][-1][1] == 10 * 30 + 2 + 8  # a CVAE: one row per class, named
    assert "latent/manifold" not in images  # latent_dim 20
    pngs = {p.name for p in (run_dir / "pictures").iterdir()}
    assert {"test_denoising.png", "val_denoising.png", "samples_prior.png"} <= pngs and not any(p.startswith("epoch_") for p in pngs)


def test_free_bits_floor_each_dimension_in_the_loss_only() -> None:
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    mu[:, 0] = 2.0  # dimension 0 has KL 2 nats; 1 and 2 have 0
    zero = torch.zeros(1, 4)  # log q and log p: unused when the closed-form KL is given
    out = VAEOutput(torch.zeros(4, 1, 2, 2), mu[None], zero, zero, mu, logvar, kl_to_standard_normal(mu, logvar))
    x = torch.full((4, 1, 2, 2), 0.5)
    plain = objective_terms(x, out, Bernoulli())
    floored = objective_terms(x, out, Bernoulli(), Objective(free_bits=0.5))
    assert plain["kl"].item() == floored["kl"].item() == pytest.approx(2.0)
    assert floored["loss"].item() - plain["loss"].item() == pytest.approx(1.0)  # two dims raised to 0.5 nats


def test_cyclical_schedule_ramps_within_each_cycle() -> None:
    weights = [kl_weight(s, beta=2.0, schedule="cyclical", total_steps=400, cycles=4, ratio=0.5) for s in (0, 25, 50, 99, 100, 125)]
    assert weights == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0]


def test_static_binarisation_keeps_the_mean_and_dynamic_resamples() -> None:
    images = torch.full((200, 1, 10, 10), 64, dtype=torch.uint8)
    static = binarize_split(Split(images, None), seed=0)
    assert set(static.images.unique().tolist()) == {0, 255}
    assert static.images.float().mean().item() / 255 == pytest.approx(64 / 255, abs=0.01)
    batches = TensorBatches(Split(images, None), 200, torch.device("cpu"), shuffle=False, binarize=True)
    (a, _), (b, _) = next(iter(batches.epoch(0))), next(iter(batches.epoch(0)))
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)


def test_select_classes_and_corruption() -> None:
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    assert select_classes(split, [0, 3], keep=False).labels.tolist() == [1, 2, 4, 5, 6, 7, 8, 9]
    x = torch.full((2000, 1, 8, 8), 0.5)
    assert (corrupt(x, "gaussian", 0.1) - x).std().item() == pytest.approx(0.1, rel=0.05)
    hit = (corrupt(x, "salt_pepper", 0.2) != 0.5).float().mean().item()
    assert hit == pytest.approx(0.2, abs=0.01)
