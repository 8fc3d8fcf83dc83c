"""How good prior samples are, offline: Fréchet distances between feature sets, a CVAE's label accuracy, and FID.

`test/fd` is the Fréchet distance of Heusel et al. (2017) computed on the features of
the small classifier of `vae_runner.classifier` rather than on Inception's:
comparable across runs on the same training split, not with published FIDs.
`test/fid` is the standard FID (Inception-v3 pool features, 2048-d), computed only
when a local copy of the Inception weights is given (`eval.inception_weights`),
since nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from vae_runner.classifier import LabelNet, apply_in_chunks, first_line
from vae_runner.errors import UserError

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's name; torch-fidelity's weights-inception-2015-12-05-6726825d.pth loads too
# Keys every FID Inception state dict holds; its fc layer has 1008 classes where torchvision's ImageNet Inception has 1000.
_INCEPTION_KEYS = ("Mixed_7c.branch_pool.conv.weight", "fc.weight")
_GET_WEIGHTS = (
    f"pass the path of a local copy of {INCEPTION_FILE} (the FID Inception weights of pytorch-fid and torch-fidelity), "
    "or leave eval.inception_weights unset to skip test/fid"
)


# ------------------------------------------------------------------ the Fréchet distance


def gaussian_moments(features: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean (F,) and unbiased covariance (F, F), in float64, of features (N, F) with N >= 2."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {tuple(x.shape)}")
    mean = x.mean(0)
    centred = x - mean
    # ddof=1, as pytorch-fid and torch-fidelity: their FIDs and ours agree on the same features.
    return mean, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance_from_moments(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)): the squared 2-Wasserstein distance of two Gaussians.

    Dowson & Landau (1982) give the closed form; Heusel et al. (2017) use it as FID.
    The trace of (sigma1 sigma2)^(1/2) is computed as the sum of the square roots of
    the eigenvalues of the symmetric sqrt(sigma1) sigma2 sqrt(sigma1), a matrix similar
    to sigma1 sigma2: symmetric eigensolvers need no complex arithmetic and no
    `scipy.linalg.sqrtm` iterations, and eigenvalues that rounding pushes below zero
    (singular covariances, e.g. fewer samples than features) are clipped at 0.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        shapes = ", ".join(str(tuple(t.shape)) for t in (mu1, sigma1, mu2, sigma2))
        raise ValueError(f"moments of different dimensions (mean, covariance, mean, covariance): {shapes}")
    values, vectors = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T  # sqrt(sigma1), symmetric
    inner = root1 @ sigma2 @ root1
    trace_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_covmean
    # Mathematically >= 0; rounding can leave -1e-12 for identical sets, which would read as a bug.
    return max(float(distance), 0.0)


def frechet_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """The Fréchet distance of feature sets a (N, F) and b (M, F), each summarised by its mean and unbiased covariance, in float64."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"feature sets of different widths: {tuple(a.shape)} and {tuple(b.shape)}")
    return frechet_distance_from_moments(*gaussian_moments(a), *gaussian_moments(b))


def classifier_features(
    net: LabelNet, images: Tensor | Iterable[Tensor], device: Optional[torch.device] = None, batch: int = 1000
) -> Tensor:
    """The classifier's penultimate features (N, F) on the CPU, of images (N, C, H, W) or an iterable of such batches, uint8 or float in [0, 1]."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    out = apply_in_chunks(lambda x: net.features(x).float(), images, device, batch)
    if not out:
        raise ValueError("classifier_features got no images")
    return torch.cat(out)


# ------------------------------------------------------------------ a CVAE's samples against their labels


def label_accuracy(predicted: Tensor, intended: Tensor, num_classes: int) -> float:
    """Mean over the classes present in `intended` of the share of samples meant as class k that are predicted k.

    Each class weighs the same whatever its number of samples (the mean per-class
    recall), so a CVAE that draws classes unevenly is not scored on its easiest
    class; on a class-balanced set it equals plain accuracy.
    """
    predicted, intended = torch.as_tensor(predicted).cpu().long(), torch.as_tensor(intended).cpu().long()
    if predicted.shape != intended.shape or predicted.dim() != 1 or predicted.numel() == 0:
        raise ValueError(f"predicted and intended labels must be two (N,) tensors, N >= 1; got {tuple(predicted.shape)} and {tuple(intended.shape)}")
    total = torch.bincount(intended, minlength=num_classes).double()
    hits = torch.bincount(intended[predicted == intended], minlength=num_classes).double()
    present = total > 0
    return float((hits[present] / total[present]).mean())


# ------------------------------------------------------------------ FID with local Inception weights


def inception_fid(weights: Path, real: Tensor, fake: Tensor, *, device: torch.device, batch: int = 32) -> float:
    """The standard FID (Inception-v3 pool features, 2048-d) of `fake` against `real` images (N, C, H, W), uint8 or float in [0, 1].

    The network is torchmetrics' `FrechetInceptionDistance` loading the FID Inception
    weights from `weights` (never from the internet), with torch-fidelity's
    TensorFlow-1 compatible resize to 299x299 (antialias=False), so the numbers
    agree with torch-fidelity's and the original TTUR code's. Greyscale becomes 3 equal
    channels. The distance is taken from the metric's accumulated moments with
    `frechet_distance_from_moments`: the same formula as its `compute()`, whose
    general eigensolver takes seconds longer on a 2048x2048 matrix.
    """
    metric = inception_metric(weights, device)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, images.shape[0], batch):
            metric.update(inception_input(images[start : start + batch]).to(device), real=is_real)
    moments = []
    for side in ("real", "fake"):
        n = getattr(metric, f"{side}_features_num_samples").double()
        if n < 2:
            raise ValueError(f"FID needs at least 2 {side} images, got {int(n)}")
        mean = getattr(metric, f"{side}_features_sum") / n
        covariance = (getattr(metric, f"{side}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)
        moments += [mean, covariance]
    return frechet_distance_from_moments(*moments)


def inception_metric(weights: Path, device: torch.device) -> torch.nn.Module:
    """torchmetrics' FrechetInceptionDistance with the Inception weights at `weights`, on `device`; a UserError when they are unusable."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # imported here: the import costs a second, and only FID needs it

    weights = check_inception_weights(weights)
    try:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    except (RuntimeError, KeyError, ValueError) as err:  # a state dict of other shapes or keys
        raise UserError(f"eval.inception_weights={weights} does not fit the FID Inception-v3 ({first_line(err)}); {_GET_WEIGHTS}.") from None
    return metric.to(device)


def check_inception_weights(weights: Path | str) -> Path:
    """The path of usable FID Inception weights, with torchmetrics and torch-fidelity installed; else a UserError in one sentence.

    Called when the config is checked, so a bad `eval.inception_weights` is refused before training, not after it.
    """
    missing = [name for name in ("torchmetrics", "torch_fidelity") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"eval.inception_weights needs {' and '.join(missing)}, which are not installed; pip install 'vae-runner[fid]', "
            f"or leave eval.inception_weights unset."
        )
    weights = Path(weights).expanduser()
    if not weights.is_file():
        raise UserError(f"eval.inception_weights={weights} is not a file; {_GET_WEIGHTS}.")
    # Read once with weights_only=True: a file that holds anything but tensors is refused before torch-fidelity
    # unpickles it without that guard (torch_fidelity.feature_extractor_inceptionv3 loads with weights_only=False).
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds (pickle, zip, EOF, RuntimeError) on a bad file
        raise UserError(f"eval.inception_weights={weights} could not be read as PyTorch weights ({first_line(err)}); {_GET_WEIGHTS}.") from None
    if not isinstance(state, dict) or not all(key in state for key in _INCEPTION_KEYS) or tuple(state["fc.weight"].shape) != (1008, 2048):
        raise UserError(f"eval.inception_weights={weights} does not hold the FID Inception-v3 weights; {_GET_WEIGHTS}.")
    return weights


def inception_input(images: Tensor) -> Tensor:
    """Images (N, C, H, W) as the Inception expects them: uint8, 3 channels (greyscale repeated); floats are taken as [0, 1]."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs images (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)  # rounded: truncation would darken every pixel by half a level
    return images.expand(-1, 3, -1, -1)  # greyscale: the same plane in all three channels, without a copy

