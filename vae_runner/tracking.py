"""TensorBoard: scalars as `split/name`, image grids, and the HParams entry, all in the run's own writer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid

# Metric columns of the HParams table; a run without one (no held-out class, say) leaves it blank.
HPARAM_METRICS = (
    "val/loss", "val/elbo", "val/recon", "val/kl", "val/active_units",
    "test/nll", "test/elbo", "test/bits_per_dim", "test/anomaly_auroc", "test/psnr_recon",
)


class Tracker:
    """Writes everything under `<run_dir>/tensorboard/`, so TensorBoard shows one run per run directory."""

    def __init__(self, log_dir: Optional[Path], purge_step: Optional[int] = None):
        # purge_step: TensorBoard discards this run's earlier events at steps >= it (used on resume).
        # log_dir None: a tracker that writes nothing (the ranks other than 0 of a torchrun job).
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=10, purge_step=purge_step) if log_dir else None

    def scalars(self, split: str, values: Mapping[str, float | Tensor], step: int) -> None:
        """Log each value as `split/name` at this step."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{split}/{name}", value.item() if isinstance(value, Tensor) else value, step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of a tensor's values."""
        if self.writer is None:
            return
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def layout(self) -> None:
        """A Custom Scalars page with each run's reconstruction and KL terms side by side on one chart."""
        if self.writer is None:
            return
        self.writer.add_custom_scalars(
            {
                "ELBO terms": {  # tags are regular expressions: anchored, or val/kl would match val/kl_per_dim/NN too
                    "train: recon and kl": ["Multiline", ["^train/recon$", "^train/kl$"]],
                    "val: recon and kl": ["Multiline", ["^val/recon$", "^val/kl$"]],
                }
            }
        )

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        """Log one (C, H, W) image in [0, 1]."""
        if self.writer is None:
            return
        self.writer.add_image(tag, grid.clamp(0, 1).cpu(), step)

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


def reconstruction_grid(x: Tensor, recon: Tensor, n: int = 8) -> Tensor:
    """Inputs on the top row, their reconstructions below: (C, H', W')."""
    n = min(n, x.shape[0])
    return make_grid(torch.cat([x[:n], recon[:n]]).float().cpu(), nrow=n, padding=2, pad_value=1.0)


def samples_grid(samples: Tensor, per_row: int = 8) -> Tensor:
    """Samples from the prior laid out `per_row` to a row (for a CVAE: one row per class)."""
    return make_grid(samples.float().cpu(), nrow=per_row, padding=2, pad_value=1.0)


def prior_latents(latent_dim: int, num_classes: int, per_row: int = 8, seed: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """Fixed latents for the sample grid, the same every epoch; for a CVAE the same z down each column."""
    g = torch.Generator().manual_seed(seed)
    if num_classes:
        z = torch.randn(per_row, latent_dim, generator=g).repeat(num_classes, 1)  # (K * per_row, D)
        y = torch.arange(num_classes).repeat_interleave(per_row)  # row k is class k
        return z, y
    return torch.randn(per_row * per_row, latent_dim, generator=g), None
