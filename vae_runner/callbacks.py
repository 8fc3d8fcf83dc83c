"""Hydra callbacks, registered under `hydra.callbacks` in configs/config.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class CompareSweep(Callback):
    """At the end of a multirun: print the sweep's `vae-compare` table and write its rate–distortion plot."""

    def __init__(self, plot: str = "compare.png") -> None:
        self.plot = plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Runs in the launching process once every job has returned; never fails the sweep."""
        from vae_runner.compare import compare

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            compare([str(sweep_dir), "--plot", str(sweep_dir / self.plot)])
        except Exception as err:  # the jobs are done and their results are on disk: a summary must not undo that
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("no vae-compare table for %s: %s", sweep_dir, reason)
