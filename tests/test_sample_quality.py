"""The sample-quality measures: Fréchet distances with known answers, the CVAE label accuracy, the classifier cache, FID's weights."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from vae_runner import classifier as classifier_module
from vae_runner.classifier import MIN_IMAGE_SIZE, LabelNet, classify, fingerprint, load_or_train, train_classifier
from vae_runner.data import Split, load_dataset, stratified_subset
from vae_runner.errors import UserError
from vae_runner.sample_quality import (
    classifier_features, frechet_distance, frechet_distance_from_moments, inception_fid, label_accuracy,
)

CPU = torch.device("cpu")


# ------------------------------------------------------------------ the Fréchet distance


def test_fd_of_a_set_with_itself_is_zero() -> None:
    a = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a.numpy(), a.numpy())) < 1e-6  # numpy arrays too


def test_fd_grows_with_the_noise_added_to_one_side() -> None:
    g = torch.Generator().manual_seed(1)
    a, noise = torch.randn(5000, 8, generator=g), torch.randn(5000, 8, generator=g)
    stds = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    distances = [frechet_distance(a, a + std * noise) for std in stds]
    assert distances[0] < 1e-6
    assert all(lo < hi for lo, hi in zip(distances, distances[1:])), distances
    # Independent unit noise of std s on N(0, I) in 8-d: 8 (sqrt(1 + s^2) - 1)^2, about 52.4 at s = 4.
    assert distances[-1] == pytest.approx(8 * (17**0.5 - 1) ** 2, rel=0.05)


def test_fd_of_gaussians_matches_the_closed_form_from_population_moments() -> None:
    f64 = torch.float64
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0], dtype=f64), torch.tensor([1.0, 1.0, 0.5], dtype=f64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5], dtype=f64), torch.tensor([3.0, 2.0, 0.1], dtype=f64)  # standard deviations
    # Diagonal: ||mu1 - mu2||^2 + sum (s1 - s2)^2 = 7.25 + 4.16 = 11.41.
    assert frechet_distance_from_moments(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(11.41, abs=1e-10)
    # The same, rotated into a shared eigenbasis Q: the covariances are no longer diagonal, the distance is unchanged.
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=f64))
    rotated = [q @ torch.diag(s**2) @ q.T for s in (s1, s2)]
    assert frechet_distance_from_moments(q @ mu1, rotated[0], q @ mu2, rotated[1]) == pytest.approx(11.41, abs=1e-10)


def test_fd_matches_scipy_sqrtm_and_torchmetrics_on_covariances_that_do_not_commute() -> None:
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(32, 32, generator=g, dtype=torch.float64), torch.randn(32, 32, generator=g, dtype=torch.float64)
    sigma1, sigma2 = a @ a.T / 32 + 0.1 * torch.eye(32, dtype=torch.float64), b @ b.T / 32
    mu1, mu2 = torch.randn(32, generator=g, dtype=torch.float64), torch.zeros(32, dtype=torch.float64)
    ours = frechet_distance_from_moments(mu1, sigma1, mu2, sigma2)
    covmean = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy()).real  # pytorch-fid's way
    reference = float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace()) - 2 * float(np.trace(covmean))
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours == pytest.approx(float(_compute_fid(mu1, sigma1, mu2, sigma2)), rel=1e-9)


def test_fd_of_gaussian_samples_is_near_the_closed_form() -> None:
    g = torch.Generator().manual_seed(4)
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.0]), torch.tensor([1.0, 1.0, 0.5, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([3.0, 2.0, 0.1, 1.0])
    a = mu1 + s1 * torch.randn(50_000, 4, generator=g)
    b = mu2 + s2 * torch.randn(50_000, 4, generator=g)
    assert frechet_distance(a, b) == pytest.approx(11.41, rel=0.02)  # 7.25 + 4.16


# ------------------------------------------------------------------ the label accuracy


def test_label_accuracy_is_the_mean_recall_over_the_classes_asked_for() -> None:
    intended = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 0, 2])
    # Class 0: 2/3, class 1: 1/2, class 2: 1/1; class 3 is never asked for and does not count: 13/18, not 4/6.
    assert label_accuracy(predicted, intended, num_classes=4) == pytest.approx(13 / 18, abs=1e-12)


def test_label_accuracy_of_real_test_images_is_the_classifiers_test_accuracy(mnist_root: Path) -> None:
    data = load_dataset("mnist", root=str(mnist_root))
    counts = torch.bincount(data.test.labels, minlength=10)
    balanced = stratified_subset(data.test, 10 * min(int(counts.min()), 50), seed=0)  # the same number of each class
    assert torch.bincount(balanced.labels, minlength=10).unique().numel() == 1
    net, test_accuracy = train_classifier(data.train, balanced, num_classes=10, seed=0, device=CPU, max_images=3000)
    # 138 steps (MIN_STEPS): 97.6% on the real MNIST, which gets 12 of the 500 wrong, so the equality below is no 1 == 1 there.
    assert test_accuracy > 0.5
    assert label_accuracy(classify(net, balanced.images), balanced.labels, 10) == pytest.approx(test_accuracy, abs=1e-12)
    assert classifier_features(net, balanced.images).shape == (len(balanced), 128)


# ------------------------------------------------------------------ the classifier and its cache


def toy_splits(seed: int = 0, n_train: int = 1200, n_test: int = 90) -> tuple[Split, Split]:
    """Three classes of 16x16 images: a bright bar at row 2, 7 or 12, plus noise."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> Split:
        labels = torch.arange(n) % 3
        images = (torch.rand(n, 1, 16, 16, generator=g) * 60).to(torch.uint8)
        for k in range(3):
            images[labels == k, :, 2 + 5 * k : 4 + 5 * k, 2:14] = 255
        return Split(images, labels)

    return make(n_train), make(n_test)


def same_weights(a: LabelNet, b: LabelNet) -> bool:
    """Every parameter and buffer equal, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_label_net_takes_the_usual_image_sizes() -> None:
    for channels, size in ((1, 28), (3, 32), (1, 64)):
        net = LabelNet(channels=channels, image_size=size, num_classes=10).eval()
        x = torch.rand(2, channels, size, size)
        assert net(x).shape == (2, 10) and net.features(x).shape == (2, 128)


def test_label_net_takes_images_of_4_px_and_refuses_3() -> None:
    assert MIN_IMAGE_SIZE == 4  # two 2x2 poolings bring 4 px to 1
    net = LabelNet(channels=1, image_size=MIN_IMAGE_SIZE, num_classes=3)
    assert net(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="at least 4x4 px, got 3x3"):
        LabelNet(channels=1, image_size=3, num_classes=3)


def test_the_fingerprint_hashes_the_images_without_copying_them() -> None:
    images = torch.randint(0, 256, (1000, 1, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))  # 65.5 MB
    train = Split(images, torch.arange(1000) % 3)
    tracemalloc.start()
    try:
        key = fingerprint(train, seed=0, max_images=60_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # bytes: a .tobytes() copy of the images would be 65.5 MB
    # The digest of the copying version it replaced: caches written before stay valid.
    h = hashlib.sha256(f"vae-runner LabelNet v{classifier_module.VERSION} seed=0 max_images=60000\n".encode())
    for t in (train.images, train.labels):
        h.update(f"{t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes())
    assert key == h.hexdigest()


def test_the_second_call_reads_the_cache_and_gets_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = toy_splits()
    first = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    assert first.path is not None and first.path.parent == tmp_path / "classifiers" and first.path.name.startswith("toy-")
    assert first.test_accuracy > 0.9  # three bars are easy
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert len(record["sha256"]) == 64 and record["images"] == 1200 and record["epochs"] == 14  # 9 steps an epoch: 14 epochs make MIN_STEPS = 120

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the cache holds the classifier")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    second = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    assert second.path == first.path and second.test_accuracy == first.test_accuracy
    assert same_weights(first.net, second.net) and not second.net.training


def test_a_cached_classifier_is_scored_on_the_test_split_of_this_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = toy_splits()
    first = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    monkeypatch.setattr(classifier_module, "train_classifier", None)  # a second training would fail
    shifted = Split(test.images, (test.labels + 1) % 3)  # every label moved to the next class
    second = load_or_train(train, shifted, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    # 1.0 then 0.0 here: each prediction right against a label is wrong against the moved one.
    assert first.test_accuracy > 0.9 and second.test_accuracy < 0.1
    assert second.path == first.path
    # The cache keeps the accuracy measured when it was trained.
    assert json.loads(first.path.with_suffix(".json").read_text())["test_accuracy"] == first.test_accuracy


def test_a_corrupted_cache_file_is_retrained_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, test = toy_splits()
    first = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    assert first.path is not None
    data = bytearray(first.path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    first.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vae_runner.classifier"):
        again = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(first.path) in warnings[0] and "sha256" in warnings[0]
    assert same_weights(first.net, again.net)  # the same images and seed train the same weights again
    assert again.path is not None and load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU).path == again.path


def test_different_images_get_a_different_cache_file(tmp_path: Path) -> None:
    train, test = toy_splits()
    changed = Split(train.images.clone(), train.labels)
    changed.images[0, 0, 0, 0] ^= 1  # one pixel, one grey level
    a = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    b = load_or_train(changed, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU)
    assert a.path is not None and b.path is not None and a.path != b.path
    assert len(list((tmp_path / "classifiers").glob("toy-*.pt"))) == 2


def test_an_unwritable_cache_folder_trains_anyway_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(classifier_module, "_warned_uncached", set())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder below a file cannot be made, even by root
    train, test = toy_splits()
    with caplog.at_level(logging.WARNING, logger="vae_runner.classifier"):
        result = load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=blocker / "cache", device=CPU)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert result.path is None and result.test_accuracy > 0.9
    assert len(warnings) == 1 and "eval.cache_dir" in warnings[0] and str(blocker / "cache") in warnings[0]


def test_two_processes_at_once_train_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_train = classifier_module.train_classifier

    def slow_train(*args: object, **kwargs: object) -> tuple[LabelNet, float]:
        calls.append(1)
        time.sleep(0.5)  # long enough that the other caller arrives while this one trains
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train_classifier", slow_train)
    train, test = toy_splits()
    results = []

    def run() -> None:
        results.append(load_or_train(train, test, dataset="toy", num_classes=3, cache_dir=tmp_path, device=CPU))

    threads = [threading.Thread(target=run) for _ in range(2)]  # separate lock handles, as two processes have
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert same_weights(results[0].net, results[1].net)


# ------------------------------------------------------------------ FID's Inception weights


def test_missing_inception_weights_are_a_user_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pt_inception-2015-12-05-6726825d.pth"
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match="eval.inception_weights") as err:
        inception_fid(missing, images, images, device=CPU)
    assert str(missing) in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        inception_fid(junk, images, images, device=CPU)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="does not hold the FID Inception"):
        inception_fid(other, images, images, device=CPU)


def test_fid_with_random_inception_weights_is_zero_for_equal_sets_and_positive_for_noise(tmp_path: Path) -> None:
    import torchvision

    # torchvision's Inception-v3 with 1008 classes and no auxiliary head has the FID Inception's state-dict keys
    # (pytorch-fid builds it so); Kaiming-normal convolutions keep the random features from fading over 90 layers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for m in inception.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    weights = tmp_path / "random-inception.pth"
    torch.save(inception.state_dict(), weights)
    real, _ = toy_splits(n_train=6, n_test=3)
    noise = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(5))  # floats in [0, 1]
    same = inception_fid(weights, real.images, real.images, device=CPU)
    apart = inception_fid(weights, real.images, noise, device=CPU)
    assert same < 1e-6 and apart > 0.1, (same, apart)
