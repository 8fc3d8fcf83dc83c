"""`vae-compare` on sweep directories built by hand: metrics.json + .hydra/overrides.yaml, no training."""

from __future__ import annotations

import csv
import errno
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest

from vae_runner import plots
from vae_runner.compare import (
    build_table,
    constant_overrides,
    default_metrics,
    find_runs,
    format_stat,
    group_runs,
    main,
    metric_names,
    summarise,
    varied_keys,
)
from vae_runner.plots import PlotData, Point, plot_data, wants_log_x

# Two configurations (beta 1 and 4) x three seeds. beta=1 has the lower val/loss but the higher val/kl,
# so sorting by one or the other gives opposite orders.
METRICS = {
    1: [
        {"val/loss": 100.0, "val/recon": 90.0, "val/kl": 10.0, "val/elbo": -100.0, "train/steps": 300},
        {"val/loss": 102.0, "val/recon": 91.0, "val/kl": 11.0, "val/elbo": -102.0, "train/steps": 300},
        {"val/loss": 104.0, "val/recon": 92.0, "val/kl": 12.0, "val/elbo": -104.0, "train/steps": 300},
    ],
    4: [
        {"val/loss": 110.0, "val/recon": 105.0, "val/kl": 5.0, "val/elbo": -110.0, "train/steps": 300},
        {"val/loss": 110.0, "val/recon": 104.0, "val/kl": 6.0, "val/elbo": -110.0, "train/steps": 300},
        {"val/loss": 113.0, "val/recon": 106.0, "val/kl": 7.0, "val/elbo": -113.0, "train/steps": 300},
    ],
}


@pytest.fixture(autouse=True)
def plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich output without colour codes, whatever the environment running the tests says."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


def make_run(root: Path, name: str, overrides: list[str], metrics: dict[str, float] | None) -> Path:
    """A run directory as `vae-run` leaves it; `metrics=None` is a run that has not finished."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """outputs/sweeps/<time>/ with 2 x 3 finished runs, one unfinished run and a multirun.yaml."""
    root = tmp_path / "sweeps" / "2026-01-01_00-00-00"
    for beta, runs in METRICS.items():
        for seed, metrics in enumerate(runs, start=1):
            overrides = [
                f"model.beta={beta}",
                f"seed={seed}",
                "model=beta_vae",
                "train.epochs=5",
                f"dataset.root=/scratch/node{seed}/data",  # where the data was: differs per run, is not a configuration
            ]
            make_run(root, f"model.beta={beta},seed={seed}", overrides, metrics)
    make_run(root, "model.beta=4,seed=4", ["model.beta=4", "seed=4", "model=beta_vae", "train.epochs=5"], None)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def table_rows(out: str) -> list[list[str]]:
    """The body cells of the rich table printed to stdout."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]


def table_header(out: str) -> list[str]:
    """The column names of the rich table printed to stdout."""
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_two_configurations_of_three_seeds_give_two_rows_of_mean_and_sample_std(sweep: Path) -> None:
    runs = find_runs(sweep)
    assert len(runs) == 7 and sum(r.finished for r in runs) == 6
    groups = group_runs(runs)
    rows = summarise(groups)
    assert len(rows) == 2
    by_beta = {row.config["model.beta"]: row for row in rows}
    assert by_beta[1].n == 3 and by_beta[4].n == 3
    loss = by_beta[1].stats["val/loss"]
    assert (loss.mean, loss.std) == (102.0, 2.0)  # 100, 102, 104
    assert by_beta[1].stats["val/kl"].std == 1.0  # 10, 11, 12
    loss4 = by_beta[4].stats["val/loss"]
    assert loss4.mean == 111.0 and loss4.std == pytest.approx(math.sqrt(3))  # 110, 110, 113: ddof=1
    assert by_beta[4].stats["train/steps"].std == 0.0


def test_unfinished_run_is_not_averaged_and_is_listed(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = summarise(group_runs(find_runs(sweep)))
    beta4 = next(row for row in rows if row.config["model.beta"] == 4)
    assert beta4.n == 3 and beta4.stats["val/loss"].mean == 111.0
    assert all("seed=4" not in str(path) for path in beta4.runs)

    assert main([str(sweep)]) == 0
    footnote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("unfinished")]
    assert footnote == ["unfinished (no metrics.json, not averaged): 1 run: model.beta=4,seed=4"]


def test_varied_key_is_a_column_and_constant_overrides_go_to_the_caption(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    groups = group_runs(find_runs(sweep))
    assert varied_keys(groups) == ["model.beta"]
    assert constant_overrides(groups) == {"model": "beta_vae", "train.epochs": 5}  # seed and dataset.root left out

    assert main([str(sweep), "--metrics", "all"]) == 0
    out = capsys.readouterr().out
    assert table_header(out) == ["model.beta", "n", "val/loss", "val/recon", "val/kl", "val/elbo", "train/steps"]
    assert "constant: model=beta_vae, train.epochs=5" in out
    assert "dataset.root" not in out and "seed" not in " ".join(table_header(out))


def test_main_prints_the_table_sorted_by_val_loss(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--metrics", "all"]) == 0
    out = capsys.readouterr().out
    assert "2 configurations, 6 finished runs, sorted by val/loss (ascending)" in out
    assert table_rows(out) == [
        ["1", "3", "102.000 ± 2.000", "91.000 ± 1.000", "11.000 ± 1.000", "-102.000 ± 2.000", "300 ± 0"],
        ["4", "3", "111.000 ± 1.732", "105.000 ± 1.000", "6.000 ± 1.000", "-111.000 ± 1.732", "300 ± 0"],
    ]


def test_sort_by_another_metric_or_a_varied_key(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orders = {}
    for flags in (["--sort", "val/kl"], ["--sort", "val/kl", "--desc"], ["--sort", "model.beta", "--desc"]):
        assert main([str(sweep), *flags]) == 0
        orders[" ".join(flags)] = [row[0] for row in table_rows(capsys.readouterr().out)]
    assert orders == {"--sort val/kl": ["4", "1"], "--sort val/kl --desc": ["1", "4"], "--sort model.beta --desc": ["4", "1"]}

    assert main([str(sweep), "--sort", "val/nope"]) == 2
    assert "--sort val/nope" in capsys.readouterr().err


def test_csv_and_json_hold_the_same_numbers(sweep: Path, tmp_path: Path) -> None:
    csv_path, json_path = tmp_path / "out.csv", tmp_path / "out.json"
    assert main([str(sweep), "--sort", "val/kl", "--desc", "--csv", str(csv_path), "--json", str(json_path)]) == 0

    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["model.beta", "n"] + [f"{m}_{s}" for m in ("val/loss", "val/recon", "val/kl", "val/elbo", "train/steps") for s in ("mean", "std")]
    assert [r["model.beta"] for r in table] == ["1", "4"]  # val/kl 11 before 6
    assert [int(r["n"]) for r in table] == [3, 3]
    assert [(float(r["val/loss_mean"]), float(r["val/loss_std"])) for r in table] == [(102.0, 2.0), (111.0, pytest.approx(math.sqrt(3)))]

    records = json.loads(json_path.read_text())
    assert [r["model.beta"] for r in records] == [1, 4]
    for record, row in zip(records, table):
        for key, value in row.items():
            assert record[key] == pytest.approx(float(value)), key
    assert sorted(Path(p).name for p in records[0]["runs"]) == ["model.beta=1,seed=1", "model.beta=1,seed=2", "model.beta=1,seed=3"]
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, which is gone


def test_metrics_flag_limits_columns_in_table_and_csv(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "out.csv"
    assert main([str(sweep), "--metrics", "val/kl,val/loss", "--csv", str(csv_path)]) == 0
    assert table_header(capsys.readouterr().out) == ["model.beta", "n", "val/kl", "val/loss"]
    assert csv_path.read_text().splitlines()[0] == "model.beta,n,val/kl_mean,val/kl_std,val/loss_mean,val/loss_std"

    assert main([str(sweep), "--metrics", "val/kl,test/nll"]) == 2
    assert "test/nll" in capsys.readouterr().err


def test_single_seed_shows_the_mean_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", ["model.beta=1", "seed=0"], {"val/loss": 98.76543, "val/kl": 0.000123, "train/images_per_s": 12345.6})
    make_run(tmp_path, "b", ["model.beta=2", "seed=0"], {"val/loss": 1234.5, "val/kl": 2.0, "train/images_per_s": 999.0})
    csv_path = tmp_path / "out.csv"
    assert main([str(tmp_path), "--metrics", "all", "--csv", str(csv_path)]) == 0
    assert table_rows(capsys.readouterr().out) == [["1", "1", "98.765", "0.000123", "12,346"], ["2", "1", "1,234.500", "2.000", "999"]]
    assert csv_path.read_text().splitlines()[1] == "1,1,98.76543,,0.000123,,12345.6,"


def test_metric_order_puts_loss_recon_kl_first_then_recording_order(tmp_path: Path) -> None:
    recorded = {"train/seconds": 3.0, "val/kl": 1.0, "test/nll": 90.0, "val/loss": 80.0, "val/active_units": 7, "val/recon": 79.0, "ok": True}
    make_run(tmp_path, "a", ["seed=0"], recorded)
    assert metric_names(find_runs(tmp_path)) == ["val/loss", "val/recon", "val/kl", "train/seconds", "test/nll", "val/active_units"]  # bool "ok" is no metric


def test_location_and_resume_keys_do_not_split_configurations(tmp_path: Path) -> None:
    make_run(tmp_path, "a", ["optim.lr=1e-3", "seed=1", "device=cuda:0", "hydra.launcher.partition=gpu", "dataset.path=/a"], {"val/loss": 1.0})
    make_run(tmp_path, "b", ["optim.lr=0.001", "+seed=2", "device=cpu", "hydra/launcher=submitit_slurm", "+resume=ckpt.pt", "dataset.path=/b"], {"val/loss": 3.0})
    groups = group_runs(find_runs(tmp_path))
    assert len(groups) == 1 and groups[0].config == {"optim.lr": 0.001}
    assert summarise(groups)[0].stats["val/loss"].mean == 2.0


def test_corrupt_metrics_json_is_skipped_with_a_warning_naming_it(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = make_run(sweep, "model.beta=1,seed=9", ["model.beta=1", "seed=9"], None)
    (bad / "metrics.json").write_text('{"val/loss": 1')
    with caplog.at_level(logging.WARNING, logger="vae_runner.compare"):
        runs = find_runs(sweep)
    assert len(runs) == 7 and bad not in [r.path for r in runs]
    assert [r.levelname for r in caplog.records if "seed=9" in r.getMessage()] == ["WARNING"]
    assert str(bad / "metrics.json") in caplog.text


def test_nonexistent_path_exits_2_with_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "outputs" / "sweeps" / "no-such-sweep"
    assert main([str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "does not exist" in lines[0]


def test_folder_without_run_directories_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    assert main([str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path} holds no run directories" in lines[0]


def test_sweep_with_only_unfinished_runs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", ["seed=1"], None)
    assert main([str(tmp_path)]) == 2
    assert "none has a readable metrics.json" in capsys.readouterr().err


def test_csv_into_a_missing_folder_exits_2_before_printing(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-folder" / "out.csv"
    assert main([str(sweep), "--csv", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(target.parent) in captured.err and not target.exists()


def test_a_link_or_a_device_as_output_is_refused_and_left_as_it_was(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = tmp_path / "kept.csv"
    kept.write_text("keep")
    link = tmp_path / "link.csv"
    link.symlink_to(kept)
    for flag, target in (("--csv", link), ("--json", Path("/dev/null")), ("--plot", link)):
        assert main([str(sweep), flag, str(target)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "exists and is not a regular file" in captured.err
    assert link.is_symlink() and kept.read_text() == "keep" and Path("/dev/null").is_char_device()


def test_an_ascii_terminal_gets_the_table_without_a_crash(sweep: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "vae_runner.compare", str(sweep)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.beta" in proc.stdout and "Traceback" not in proc.stderr


def test_list_valued_override_is_shown_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", ["model.hidden_dims=[512]", "seed=0"], {"val/loss": 90.0})
    make_run(tmp_path, "b", ["model.hidden_dims=[b,a]", "seed=0"], {"val/loss": 80.0})
    assert main([str(tmp_path)]) == 0
    assert [row[0] for row in table_rows(capsys.readouterr().out)] == ["[b,a]", "[512]"]  # 80 before 90


# ---------------------------------------------------------------- default columns, --metrics all


def make_beta_sweep(root: Path, nll: str = "test/nll", scale: float = 1.0) -> Path:
    """5 β values x 2 seeds with every metric a real run records; `scale` 20 gives CIFAR-10-sized nats."""
    for beta in (0.5, 1, 2, 4, 8):
        for seed in (1, 2):
            kl, recon = scale * 30 / beta**0.5 + 0.3 * seed, scale * (70 + 8 * beta**0.7) - 0.4 * seed
            metrics = {
                "val/loss": recon + beta * kl, "val/recon": recon, "val/kl": kl, "val/elbo": -(recon + kl), "val/active_units": 20 - 2 * beta + seed,
                nll: recon + kl - 4, "test/elbo": -(recon + kl) - 1, "test/recon": recon + 1.5, "test/kl": kl - 0.5, "test/bits_per_dim": 0.2,
                "test/seconds": 3.2, "train/seconds": 120.5, "train/images_per_s": 25000.0, "train/steps": 4690, "train/epochs": 10.0,
                "train/skipped_steps": 0, "data/train_images": 55000, "data/val_images": 5000, "data/test_images": 10000,
            }
            make_run(root, f"model.beta={beta},seed={seed}", ["model=beta_vae", f"model.beta={beta}", f"seed={seed}", "dataset.root=../shared/data"], metrics)
    return root


@pytest.mark.parametrize("nll", ["test/nll", "test/nll_given_label"])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_default_table_fits_120_columns_untruncated(tmp_path: Path, nll: str, scale: float) -> None:
    from rich.console import Console

    groups = group_runs(find_runs(make_beta_sweep(tmp_path, nll, scale)))
    rows = summarise(groups)
    metrics = default_metrics(metric_names([run for g in groups for run in g.runs]))
    assert metrics == ["val/loss", nll, "val/recon", "val/kl", "val/active_units"]
    console = Console(width=120, record=True, color_system=None)
    table = build_table(rows, metrics, groups, "val/loss", False)
    console.print(table)
    text = console.export_text()
    assert console.measure(table, options=console.options.update_width(1000)).maximum <= 120  # fits without squeezing
    assert max(len(line) for line in text.splitlines()) <= 120 and "…" not in text
    assert table_header(text) == ["model.beta", "n", *metrics]
    printed = table_rows(text)
    assert len(printed) == 5  # one line per configuration: no cell folded onto a second line
    assert [cells[2:] for cells in printed] == [[format_stat(m, row.stats[m]) for m in metrics] for row in rows]


def test_metrics_all_shows_every_metric_and_the_default_says_how_many_it_hides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_beta_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert table_header(out) == ["model.beta", "n", "val/loss", "test/nll", "val/recon", "val/kl", "val/active_units"]
    assert "(14 more metrics recorded: --metrics all shows every one)" in out

    assert main([str(sweep), "--metrics", "all"]) == 0
    out = capsys.readouterr().out
    assert len(table_header(out)) == 2 + 19 and "more metrics recorded" not in out
    assert main([str(sweep), "--metrics", "val/kl"]) == 0
    assert table_header(capsys.readouterr().out) == ["model.beta", "n", "val/kl"]


def test_without_any_default_metric_every_metric_is_a_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", ["optim.lr=0.1"], {"train/seconds": 3.0, "custom/score": 0.5})
    make_run(tmp_path, "b", ["optim.lr=0.2"], {"train/seconds": 4.0, "custom/score": 0.7})
    assert main([str(tmp_path)]) == 0
    assert table_header(capsys.readouterr().out) == ["optim.lr", "n", "train/seconds", "custom/score"]


# ---------------------------------------------------------------- --plot


@pytest.fixture
def handed_to_draw(monkeypatch: pytest.MonkeyPatch) -> list[PlotData]:
    """What vae-compare hands to the drawing function (which then draws nothing)."""
    handed: list[PlotData] = []
    monkeypatch.setattr(plots, "draw", lambda data, path, title="": handed.append(data))
    return handed


def test_plotted_points_are_the_table_means_and_stds(sweep: Path, tmp_path: Path, handed_to_draw: list[PlotData]) -> None:
    table = tmp_path / "table.json"
    assert main([str(sweep), "--plot", str(tmp_path / "rd.png"), "--json", str(table)]) == 0
    (data,) = handed_to_draw
    assert (data.x_metric, data.y_metric) == ("val/kl", "val/recon")  # the runs have no test/kl
    assert data.points == [Point(11.0, 91.0, 1.0, 1.0, "model.beta=1"), Point(6.0, 105.0, 1.0, 1.0, "model.beta=4")]
    records = json.loads(table.read_text())
    assert [(p.x, p.y, p.xerr, p.yerr) for p in data.points] == [(r["val/kl_mean"], r["val/recon_mean"], r["val/kl_std"], r["val/recon_std"]) for r in records]

    # One numeric key varied: a panel per column of the table, against model.beta (1 to 4: a linear axis).
    assert data.key == "model.beta" and data.log_x is False
    assert [s.metric for s in data.series] == ["val/loss", "val/recon", "val/kl"]
    loss = data.series[0]
    assert (loss.x, loss.y) == ([1.0, 4.0], [102.0, 111.0]) and loss.yerr == [2.0, pytest.approx(math.sqrt(3))]


def test_rate_distortion_uses_the_test_split_a_log_axis_for_a_tenfold_span_and_no_bar_for_one_seed(tmp_path: Path) -> None:
    groups = group_runs(find_runs(make_beta_sweep(tmp_path)))
    data = plot_data(summarise(groups), ["val/loss", "val/kl"])
    assert (data.x_metric, data.y_metric) == ("test/kl", "test/recon")
    assert data.log_x is True and [s.x for s in data.series] == [[0.5, 1.0, 2.0, 4.0, 8.0]] * 2  # 0.5 to 8: 16x

    one_seed = [run for run in find_runs(tmp_path) if run.overrides["seed"] == 1]
    points = plot_data(summarise(group_runs(one_seed)), []).points
    assert len(points) == 5 and all(p.xerr is None and p.yerr is None for p in points)
    assert wants_log_x([1, 4]) is False and wants_log_x([0, 1, 100]) is False and wants_log_x([1e-4, 1e-3]) is True


def test_two_varied_keys_give_labelled_points_and_no_panels(tmp_path: Path) -> None:
    for i, (beta, latent) in enumerate([(1, 8), (1, 16), (4, 8)]):
        make_run(tmp_path, str(i), [f"model.beta={beta}", f"model.latent_dim={latent}"], {"val/kl": 10.0 / beta, "val/recon": 90.0 + latent})
    data = plot_data(summarise(group_runs(find_runs(tmp_path))), ["val/kl"])
    assert [p.label for p in data.points] == ["model.beta=1, model.latent_dim=8", "model.beta=1, model.latent_dim=16", "model.beta=4, model.latent_dim=8"]
    assert data.key is None and data.series == []


def test_plot_is_a_png_of_three_by_two_panels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    png = tmp_path / "rd.png"
    assert main([str(make_beta_sweep(tmp_path / "sweep")), "--plot", str(png)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"rate–distortion plot: {png}"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1440, 840)  # rate–distortion + 5 metrics: 3 x 2 panels of 480 x 420
        assert len(image.getcolors(maxcolors=1_000_000) or []) > 10  # drawn, not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rd.png", "sweep"]  # and no temporary file


@pytest.mark.parametrize("where", ["missing folder", "a folder", "under a file"])
def test_unwritable_plot_path_exits_2_before_printing(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    target = {"missing folder": tmp_path / "no-such" / "rd.png", "a folder": tmp_path, "under a file": tmp_path / "notes.txt" / "rd.png"}[where]
    assert main([str(sweep), "--plot", str(target)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: --plot ") and str(target) in lines[0]
    assert lines[0].endswith({"missing folder": "does not exist; create the folder or choose another path.", "a folder": f"e.g. --plot {tmp_path / 'compare.png'}.",
                              "under a file": "is a file, not a folder; create the folder or choose another path."}[where])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sweeps"]


def test_a_failed_plot_write_leaves_no_file(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def full_disk(self: FigureCanvasAgg, f: BinaryIO, **kwargs: object) -> None:
        f.write(b"\x89PNG half a picture")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", full_disk)
    target = tmp_path / "out" / "rd.png"
    target.parent.mkdir()
    assert main([str(sweep), "--plot", str(target)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --plot {target} could not be written (No space left on device); choose another path or free some space (a previous file there is intact)."
    assert list(target.parent.iterdir()) == []  # neither the picture nor its temporary file


def test_plot_without_kl_or_recon_is_refused_before_printing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", ["seed=0"], {"val/loss": 1.0})
    assert main([str(tmp_path), "--plot", str(tmp_path / "rd.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: --plot needs test/kl and test/recon") and not (tmp_path / "rd.png").exists()
