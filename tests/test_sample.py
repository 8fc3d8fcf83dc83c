"""`vae-sample` as a user runs it: the grid's shape, a CVAE's rows, seeded bytes, and one sentence for each bad argument."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import console_script

CELL = 28 + 2  # an MNIST tile with its gutter


def vae_sample(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`vae-sample ARGS` in `cwd`: exit status, stdout, stderr."""
    proc = console_script("vae-sample", *args, cwd=cwd, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def grid_size(n: int, per_row: int, side: int = 28) -> tuple[int, int]:
    """(width, height) of tracking.image_grid's picture: 2 px gutters around and between side x side tiles."""
    cols = min(per_row, n)
    rows = -(-n // cols)
    return cols * (side + 2) + 2, rows * (side + 2) + 2


def tiles(png: Path, rows: int, cols: int) -> torch.Tensor:
    """The grid's tiles as (rows * cols, 28, 28) floats in [0, 1], row by row."""
    pixels = torch.from_numpy(np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255)
    return torch.stack([pixels[2 + r * CELL : r * CELL + CELL, 2 + c * CELL : c * CELL + CELL] for r in range(rows) for c in range(cols)])


def latents(n: int, temperature: float, seed: int, latent_dim: int = 20) -> torch.Tensor:
    """The z README promises for `seed`: temperature * randn from a CPU generator seeded with it."""
    return temperature * torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "per_row"), [(1, 1), (10, 4), (64, 8)])
def test_a_vae_grid_is_ceil_sqrt_n_to_a_row(vae_dir: Path, tmp_path: Path, n: int, per_row: int) -> None:
    code, out, err = vae_sample(str(vae_dir), f"n={n}", "device=cpu", cwd=tmp_path)
    assert code == 0, out + err
    png = tmp_path / "samples.png"
    image = Image.open(png)
    assert image.size == grid_size(n, per_row)  # n=10: 4 * 30 + 2 = 122 wide, 3 rows: 92 high
    assert image.mode == "L"  # MNIST is greyscale
    assert out.strip() == f"wrote {png}: {n} sample{'s' * (n > 1)}, {per_row} to a row (temperature 1, seed 0, step 20 of {vae_dir})"
    cells = tiles(png, -(-n // per_row), per_row)
    spare = cells[n:]  # n=10: the last row's 2 empty cells stay white
    assert len(spare) == per_row * -(-n // per_row) - n and bool((spare == 1.0).all())


def test_a_vae_grid_holds_the_decoded_seeded_latents(vae_dir: Path, tmp_path: Path) -> None:
    from vae_runner import load_run

    code, out, err = vae_sample(str(vae_dir), "n=9", "seed=11", "temperature=0.5", "out=nine.png", "device=cpu", cwd=tmp_path)
    assert code == 0, out + err
    expected = load_run(vae_dir, device="cpu").decode(latents(9, 0.5, 11))[:, 0]  # (9, 28, 28)
    got = tiles(tmp_path / "nine.png", 3, 3)
    assert (got - expected).abs().max().item() <= 1 / 255  # PNG rounds to 1/255
    assert (got[0] - got[1]).abs().max().item() > 0.1  # nine different images, not one


def test_a_cvae_grid_has_one_row_per_class_with_the_same_z_down_each_column(cvae_dir: Path, tmp_path: Path) -> None:
    from vae_runner import load_run

    code, out, err = vae_sample(str(cvae_dir), "n=16", "seed=5", "temperature=0.8", "device=cpu", cwd=tmp_path)
    assert code == 0, out + err
    assert Image.open(tmp_path / "samples.png").size == (4 * CELL + 2, 10 * CELL + 2)  # 10 classes x ceil(sqrt(16)) = 4
    assert "10 rows (classes 0 to 9) of 4, the same z down each column" in out
    run = load_run(cvae_dir, device="cpu")
    z = latents(4, 0.8, 5)
    got = tiles(tmp_path / "samples.png", 10, 4).view(10, 4, 28, 28)
    for k in range(10):
        expected = run.decode(z, labels=k)[:, 0]  # row k: class k
        assert (got[k] - expected).abs().max().item() <= 1 / 255, k
    row_gaps = [(got[k] - got[k + 1]).abs().max().item() for k in range(9)]
    assert min(row_gaps) > 4 / 255  # the label changes each row's images, beyond PNG rounding


def test_a_cvae_class_gives_n_images_of_that_class(cvae_dir: Path, tmp_path: Path) -> None:
    from vae_runner import load_run

    code, out, err = vae_sample(str(cvae_dir), "class=3", "n=6", "seed=2", "out=threes.png", "device=cpu", cwd=tmp_path)
    assert code == 0, out + err
    assert Image.open(tmp_path / "threes.png").size == grid_size(6, 3) == (92, 62)
    assert "6 samples of class 3 (3 - three), 3 to a row" in out
    expected = load_run(cvae_dir, device="cpu").decode(latents(6, 1.0, 2), labels=3)[:, 0]
    assert (tiles(tmp_path / "threes.png", 2, 3) - expected).abs().max().item() <= 1 / 255


def test_the_same_seed_gives_the_same_bytes(vae_dir: Path, tmp_path: Path) -> None:
    for name, seed in (("a.png", 7), ("b.png", 7), ("c.png", 8)):
        code, out, err = vae_sample(str(vae_dir), f"seed={seed}", "n=16", f"out={name}", "device=cpu", cwd=tmp_path)
        assert code == 0, out + err
    a, b, c = ((tmp_path / name).read_bytes() for name in ("a.png", "b.png", "c.png"))
    assert a == b and len(a) > 500
    assert a != c


def test_help_shows_usage(tmp_path: Path) -> None:
    code, out, _ = vae_sample("--help", cwd=tmp_path)
    assert code == 0 and out.startswith("usage: vae-sample RUN_DIR [n=64] [class=K] [temperature=1.0] [seed=0] [out=samples.png] [device=auto]")
    code, out, _ = vae_sample(cwd=tmp_path)
    assert code == 2 and out.startswith("usage: vae-sample")


BAD = [
    (["nn=3"], "nn is not a vae-sample key; use one of n, class, temperature, seed, out, device"),
    (["n"], "n is not key=value"),
    (["=3"], "=3 is not key=value"),
    (["n=0"], "n=0 is out of range; use 1 to 4096 images"),
    (["n=100000"], "n=100000 is out of range; use 1 to 4096 images"),
    (["n=2.5"], "n=2.5 is not a whole number"),
    (["n=3", "n=4"], "n is given twice (n=3 and n=4)"),
    (["temperature=0"], "temperature=0 must be a positive number up to 100"),
    (["temperature=-1"], "temperature=-1 must be a positive number up to 100"),
    (["temperature=nan"], "temperature=nan must be a positive number up to 100"),
    (["temperature=inf"], "temperature=inf must be a positive number up to 100"),
    (["temperature=warm"], "temperature=warm must be a positive number up to 100"),
    (["temperature=1e39"], "temperature=1e39 must be a positive number up to 100"),  # past float32: NaN pixels
    (["device=meta"], "device=meta is not a device vae-runner trains on"),
    (["seed=-1"], "seed=-1 is out of range; use an integer from 0 to 2**32 - 1 (4294967295)"),
    (["seed=4294967296"], "seed=4294967296 is out of range"),
    (["class=-1"], "class=-1 is out of range"),
    (["class=three"], "class=three is not a whole number"),
    (["out=missing/x.png"], "out=missing/x.png: the folder"),
    (["out=x.jpg"], "out=x.jpg must name a .png file"),
    (["device=foo"], "device=foo is not a device; use auto, cpu, cuda, cuda:N or mps"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_argument_is_one_sentence_and_exit_2(vae_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = vae_sample(str(vae_dir), *args, cwd=tmp_path)
    assert code == 2, out + err
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out + err
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []  # no PNG, no temporary file


def test_class_is_refused_for_a_vae_and_past_a_cvae_s_classes(vae_dir: Path, cvae_dir: Path, tmp_path: Path) -> None:
    for run_dir, arg, message in (
        (vae_dir, "class=3", f"class=3 needs a conditional model, but {vae_dir} holds model=vae, which is not; drop class=."),
        (cvae_dir, "class=10", "class=10 is out of range: this run's CVAE has 10 classes; use class=0 to class=9."),
    ):
        code, out, err = vae_sample(str(run_dir), arg, cwd=tmp_path)
        assert (code, (out + err).strip()) == (2, f"error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    for folder in (tmp_path / "absent", tmp_path):
        code, out, err = vae_sample(str(folder), cwd=tmp_path)
        assert code == 2 and (out + err).strip().startswith(f"error: {folder} is not a vae-run run directory with a checkpoint")
    code, out, err = vae_sample("n=3", cwd=tmp_path)  # the run directory forgotten
    assert code == 2 and "vae-sample needs the run directory first" in err


def test_a_link_or_a_device_as_out_is_refused_and_left_as_it_was(vae_dir: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"keep")
    (tmp_path / "link.png").symlink_to(kept)
    for target in (tmp_path / "link.png", Path("/dev/null")):
        code, out, err = vae_sample(str(vae_dir), f"out={target}", cwd=tmp_path)
        assert code == 2 and "exists and is not a regular file" in err, out + err
    assert (tmp_path / "link.png").is_symlink() and kept.read_bytes() == b"keep" and Path("/dev/null").is_char_device()


def test_an_unwritable_folder_leaves_the_previous_png_intact(vae_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere: /proc takes no new files, for anyone
        if not sys.platform.startswith("linux"):
            pytest.skip("needs Linux's /proc as root")
        target, message = Path("/proc/samples.png"), "could not write /proc/samples.png (No such file or directory)"
        remedy = "choose another file (out=...)"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target, message = locked / "samples.png", f"the folder {locked} is not writable"
        remedy = "choose another out="
    code, out, err = vae_sample(str(vae_dir), f"out={target}", cwd=tmp_path)
    assert code == 2 and message in err and remedy in err, out + err
    assert not target.exists()
    # A refused run leaves an earlier PNG as it was, and no temporary file beside it.
    assert vae_sample(str(vae_dir), "n=4", cwd=tmp_path)[0] == 0
    before = (tmp_path / "samples.png").read_bytes()
    assert vae_sample(str(vae_dir), "n=4", "class=1", cwd=tmp_path)[0] == 2
    assert (tmp_path / "samples.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "locked") == ["samples.png"]
