"""TensorBoard: scalars as `split/name`, image grids, and the HParams entry, all in the run's own writer; the pictures also as PNG files."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

import torch
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from vae_runner.atomic import atomic_write
from vae_runner.priors import Prior

log = logging.getLogger(__name__)

# Metric columns of the HParams table; a run without one (no held-out class, say) leaves it blank.
HPARAM_METRICS = (
    "val/loss", "val/elbo", "val/recon", "val/kl", "val/active_units",
    "test/nll", "test/elbo", "test/bits_per_dim", "test/nll_given_label", "test/elbo_given_label", "test/bits_per_dim_given_label",
    "test/anomaly_auroc", "test/psnr_recon", "test/mig", "test/dci_disentanglement", "test/factorvae_score", "test/sap", "test/fd",
    "test/cvae_label_accuracy",
)


class Tracker:
    """Writes everything into the run directory's own event file, so TensorBoard shows one run per run directory, by its name.

    Given a `pictures` folder, every image is also saved there as `<tag>.png`
    (`samples/prior` -> `samples_prior.png`), the latest one of each tag, with
    the very pixels TensorBoard gets; inside `copies_in(name)` also into
    `pictures/<name>/`.
    """

    def __init__(self, log_dir: Optional[Path], purge_step: Optional[int] = None, pictures: Optional[Path] = None):
        # purge_step: TensorBoard discards this run's earlier events at steps >= it (used on resume).
        # log_dir None: a tracker that writes nothing (the ranks other than 0 of a torchrun job), no PNG either.
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=10, purge_step=purge_step) if log_dir else None
        self.pictures = pictures if self.writer is not None else None
        self._copies: Optional[Path] = None  # a second folder for the pictures, while `copies_in` is active
        self._warned: set[str] = set()  # tags already warned about non-finite values: one warning each, not one per step

    def _warn_once(self, tag: str, message: str, *args: object) -> None:
        """Log a warning about `tag` the first time only."""
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning(message, *args)

    def scalars(self, split: str, values: Mapping[str, float | Tensor], step: int) -> None:
        """Log each value as `split/name` at this step; a NaN or Inf is skipped (TensorBoard's charts cannot draw it)."""
        if self.writer is None:
            return
        for name, value in values.items():
            tag = f"{split}/{name}"
            number = float(value.item() if isinstance(value, Tensor) else value)
            if not math.isfinite(number):
                self._warn_once(tag, "%s is %s at step %d; not written to TensorBoard (later non-finite values of it are skipped silently)", tag, number, step)
                continue
            self.writer.add_scalar(tag, number, step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of a tensor's finite values; nothing when none is finite (add_histogram raises on NaN or Inf)."""
        if self.writer is None:
            return
        values = values.detach().float().cpu().reshape(-1)
        finite = values[torch.isfinite(values)]
        if finite.numel() < values.numel():
            self._warn_once(tag, "%s has %d non-finite values of %d at step %d; the histogram shows the finite ones only", tag, values.numel() - finite.numel(), values.numel(), step)
        if finite.numel() == 0:
            return
        try:
            self.writer.add_histogram(tag, finite, step)
        except ValueError:  # finite but near the float range's end (a diverging model): no bins can hold them
            self._warn_once(f"{tag}:range", "%s spans a range too wide to bin at step %d (largest |value| %.3g); not written", tag, step, finite.abs().max().item())

    def layout(self) -> None:
        """A Custom Scalars page with each run's reconstruction and KL terms side by side on one chart."""
        if self.writer is None:
            return
        self.writer.add_custom_scalars(
            {
                "ELBO terms": {  # tags are regular expressions, anchored
                    "train: recon and kl": ["Multiline", ["^train/recon$", "^train/kl$"]],
                    "val: recon and kl": ["Multiline", ["^val/recon$", "^val/kl$"]],
                }
            }
        )

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        """Log one (C, H, W) image in [0, 1], and save it as `<tag>.png` in the pictures folder(s); NaN pixels become 0 and +-Inf the nearest end of the range."""
        if self.writer is None:
            return
        grid = grid.detach().float().cpu()
        if not bool(torch.isfinite(grid).all()):
            self._warn_once(tag, "%s has non-finite pixels at step %d; NaN is drawn black, +Inf white", tag, step)
        pixels = image_bytes(grid)  # one rounding for TensorBoard and the PNG: the same picture in both
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        for folder in (self.pictures, self._copies):
            if folder is not None:
                write_png(folder / png_name(tag), pixels)

    @contextmanager
    def copies_in(self, name: Optional[str]) -> Iterator[None]:
        """Inside the block, each image also goes to `pictures/<name>/` (e.g. `epoch_003`); None: no copies."""
        self._copies = self.pictures / name if self.pictures is not None and name else None
        try:
            yield
        finally:
            self._copies = None

    def hparams(self, hparams: Mapping[str, object], shown: Sequence[str] = (), metrics: Sequence[str] = HPARAM_METRICS) -> None:
        """Declare this run's hyper-parameters for the HParams tab, with `shown` among the columns displayed by default.

        Written into this run's own event file: `SummaryWriter.add_hparams` would
        create an extra timestamped run instead. The metric columns read the
        last value of the run's own scalar tags (`val/loss`, ...), so they fill
        in as training goes and survive a crash.
        """
        if self.writer is None:
            return
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        # No discrete domains: TensorBoard takes one run's experiment summary for all, and a
        # domain listing only that run's value would filter the other runs of a sweep out.
        exp, ssi, sei = hparams_summary(clean, {m: math.nan for m in metrics})
        # TensorBoard displays the hparams marked `differs` first, five by default.
        plugin_data = exp.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in shown
        plugin_data.content = data.SerializeToString()
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is None:
            return
        self.writer.close()


def finite_pixels(image: Tensor) -> Tensor:
    """Pixels in [0, 1] whatever came in: NaN becomes 0, +Inf 1, -Inf 0 (torch.nan_to_num, then a clamp)."""
    return torch.nan_to_num(image.float()).clamp(0, 1)


def image_bytes(image: Tensor) -> np.ndarray:
    """A (C, H, W) image in [0, 1] as (H, W, 3) uint8 pixels, rounded to the nearest level; grey becomes RGB."""
    pixels = (finite_pixels(image.detach().cpu()) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, *pixels.shape[1:])
    return pixels.permute(1, 2, 0).contiguous().numpy()


def png_name(tag: str) -> str:
    """The file a TensorBoard tag's picture is saved as: `samples/prior` -> `samples_prior.png`."""
    return tag.replace("/", "_") + ".png"


def write_png(path: Path, pixels: np.ndarray, elsewhere: str = "output folder (hydra.run.dir=...)") -> None:
    """(H, W, 3) uint8 pixels as an RGB PNG, or (H, W) as a grey one, written whole or not at all (a temporary file, then a rename)."""
    from PIL import Image

    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    atomic_write(path, lambda f: image.save(f, format="PNG"), elsewhere)


def image_grid(images: Tensor, per_row: int) -> Tensor:
    """(N, C, H, W) tiled `per_row` to a row with white 2 px gutters: (C', H', W') on the CPU, C' = 3 for grey.

    The layout of torchvision's make_grid, except that one image is framed
    like any other (make_grid returns a lone image bare, without gutters or
    RGB), and non-finite pixels are made drawable with `finite_pixels`.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"an image grid needs (N, C, H, W) images with N >= 1, got shape {tuple(images.shape)}")
    if per_row < 1:
        raise ValueError(f"an image grid needs per_row >= 1, got {per_row}")
    images = finite_pixels(images.detach().cpu())
    n, c, h, w = images.shape
    if c == 1:
        images, c = images.expand(n, 3, h, w), 3  # grey as RGB, as make_grid does
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    cells = torch.ones(rows * cols, c, h + 2, w + 2)  # each tile with its right and bottom gutter; spare cells stay white
    cells[:n, :, :h, :w] = images
    # (R * K, C, H + 2, W + 2) -> (C, R, H + 2, K, W + 2) -> (C, R * (H + 2), K * (W + 2)), then the top and left gutter.
    grid = cells.view(rows, cols, c, h + 2, w + 2).permute(2, 0, 3, 1, 4).reshape(c, rows * (h + 2), cols * (w + 2))
    return torch.nn.functional.pad(grid, (2, 0, 2, 0), value=1.0)


def reconstruction_grid(x: Tensor, recon: Tensor, n: int = 8) -> Tensor:
    """Inputs on the top row, their reconstructions below: (C, H', W')."""
    n = min(n, x.shape[0], recon.shape[0])
    if n < 1:
        raise ValueError(f"reconstruction_grid needs at least 1 image, got x of shape {tuple(x.shape)} and recon of shape {tuple(recon.shape)}")
    return image_grid(torch.cat([x[:n].float().cpu(), recon[:n].float().cpu()]), n)


def samples_grid(samples: Tensor, per_row: int = 8) -> Tensor:
    """Samples from the prior laid out `per_row` to a row (for a CVAE: one row per class)."""
    if samples.shape[0] == 0:
        raise ValueError("samples_grid needs at least 1 sample, got 0")
    return image_grid(samples, per_row)


def prior_latents(prior: Prior, num_classes: int, per_row: int = 8, seed: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """Fixed draws from the prior for the sample grid, on the CPU, the same every epoch for a fixed prior; for a CVAE the same z down each column."""
    g, cpu = torch.Generator().manual_seed(seed), torch.device("cpu")
    if num_classes:
        z = prior.sample(per_row, g, device=cpu).repeat(num_classes, 1)  # (K * per_row, D)
        y = torch.arange(num_classes).repeat_interleave(per_row)  # row k is class k
        return z, y
    return prior.sample(per_row * per_row, g, device=cpu), None
