"""`hydra/launcher=stacked`: a sweep's jobs, which differ only in loss weights, trained in this process as one stacked model.

Hydra imports this module whenever it scans for plugins, so it imports nothing heavy
at the top; the training is `vae_runner.cli.run_members`.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, _save_config, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


class StackedLauncher(Launcher):
    """Prepares each job's run folder and records as Hydra's own launchers do, then trains all the jobs at once."""

    def __init__(self, vectorize: Any = "auto") -> None:
        self.vectorize = vectorize
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vae_runner.cli import run_members

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs as one stacked model", len(job_overrides))
        prepared = [self._prepare(list(overrides), idx) for idx, overrides in enumerate(job_overrides, initial_job_idx)]
        jobs = [job for job, _ in prepared]
        for idx, job in enumerate(jobs, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(job.overrides or [])))
        first = prepared[0][1]
        HydraConfig.instance().set_config(first)
        configure_log(first.hydra.job_logging, self.config.hydra.verbose)  # the console, and the first job's log file
        values = run_members([j.cfg for j in jobs], [Path(str(j.hydra_cfg.hydra.runtime.output_dir)) for j in jobs], self.vectorize)
        for job, value in zip(jobs, values):
            job.return_value, job.status = value, JobStatus.COMPLETED
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return jobs

    def _prepare(self, overrides: list[str], idx: int) -> tuple[JobReturn, DictConfig]:
        """One job's config, its run folder (named as Hydra names it) and its `.hydra/` records; the job, and its whole config."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)  # the folder's name resolves from the job's overrides
        output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(config)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            records = Path(output_dir) / str(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", records)
            _save_config(hydra_cfg, "hydra.yaml", records)
            _save_config(config.hydra.overrides.task, "overrides.yaml", records)
        job = JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=hydra_cfg, working_dir=os.getcwd(), task_name=str(config.hydra.job.name))
        return job, config
