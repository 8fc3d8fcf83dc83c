"""The end of a multirun: vae-run prints the sweep's vae-compare table and writes its rate–distortion plot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.conftest import vae_run
from tests.test_compare import make_run, table_header, table_rows
from tests.test_sweeps import TINY
from vae_runner import plots
from vae_runner.callbacks import CompareSweep


def _multirun_config(sweep_dir: Path) -> DictConfig:
    """The part of the config Hydra hands to on_multirun_end that the callback reads."""
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def test_the_callback_is_registered_in_the_config() -> None:
    from hydra import compose, initialize_config_dir

    from vae_runner.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert OmegaConf.to_container(cfg.hydra.callbacks) == {"compare": {"_target_": "vae_runner.callbacks.CompareSweep", "plot": "compare.png"}}


def test_a_sweep_without_metrics_gets_one_warning_and_no_plot(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "model.beta=1", ["model.beta=1"], None)  # every job failed before writing metrics.json
    with caplog.at_level(logging.WARNING, logger="vae_runner"):
        CompareSweep().on_multirun_end(_multirun_config(tmp_path))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"no vae-compare table for {tmp_path}: {tmp_path} holds 1 run directories but none has a readable metrics.json; "
                    "wait for the sweep to finish or rerun it.")
    ]
    assert capsys.readouterr().out == "" and not (tmp_path / "compare.png").exists()


def test_a_failing_plot_is_a_warning_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path, "model.beta=1", ["model.beta=1"], {"val/loss": 1.0, "val/kl": 0.5, "val/recon": 0.5})

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the font cache is corrupt\nmore detail")

    monkeypatch.setattr(plots, "draw", broken)
    with caplog.at_level(logging.WARNING, logger="vae_runner"):
        CompareSweep(plot="rd.png").on_multirun_end(_multirun_config(tmp_path))
    assert [r.getMessage() for r in caplog.records] == [f"no vae-compare table for {tmp_path}: the font cache is corrupt"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_ends_with_the_table_and_the_plot(mnist_root: Path, tmp_path: Path, launcher: str) -> None:
    from PIL import Image

    proc = vae_run("-m", f"hydra/launcher={launcher}", "model.beta=1,2", f"dataset.root={mnist_root}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    table = proc.stdout[proc.stdout.index("vae-compare: 2 configurations, 2 finished runs, sorted by val/loss") :]
    assert table_header(table) == ["model.beta", "n", "val/loss", "test/nll", "val/recon", "val/kl", "val/active_units"]
    assert sorted(row[0] for row in table_rows(table)) == ["1", "2"] and all(row[1] == "1" for row in table_rows(table))
    assert table.rstrip().splitlines()[-1] == f"rate–distortion plot: {sweep / 'compare.png'}"
    with Image.open(sweep / "compare.png") as image:
        assert image.size == (1440, 840)  # rate–distortion + 5 metrics against model.beta
