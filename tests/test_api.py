"""The Python API: `load_run` against the run's own TensorBoard picture, its refusals, `run` as the command line, and README's example."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from vae_runner.errors import UserError

CELL = 28 + 2


def test_import_vae_runner_loads_neither_torch_nor_hydra() -> None:
    code = (
        "import sys, vae_runner; print('torch' in sys.modules, 'hydra' in sys.modules); "
        "vae_runner.load_run; print('torch' in sys.modules, sorted(set(vae_runner.__all__) & set(dir(vae_runner))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "False False"
    assert out[1] == "True ['LoadedRun', 'RunFailed', 'RunMetrics', '__version__', 'load_run', 'run']"


def tensorboard_picture(run_dir: Path, tag: str, step: int) -> torch.Tensor:
    """The image TensorBoard shows for `tag` at `step`, decoded from the event file: (H, W) floats in [0, 1] (the first channel)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    (event,) = [e for e in acc.Images(tag) if e.step == step]
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)), dtype=np.float32)[..., 0] / 255
    return torch.from_numpy(pixels)


def test_reconstruct_is_what_the_run_s_reconstruction_picture_shows(vae_dir: Path) -> None:
    from vae_runner import load_run
    from vae_runner.build import build
    from vae_runner.evaluate import fixed_examples

    r = load_run(vae_dir, device="cpu")
    cfg = r.config
    built = build(cfg, device=torch.device("cpu"))  # the run's validation split, as training drew it
    x = fixed_examples(built.data.val, built.val, cfg.dataset.noise, cfg.dataset.noise_level, cfg.seed).x  # (8, 1, 28, 28)
    picture = tensorboard_picture(vae_dir, "val/reconstructions", r.step)  # inputs over reconstructions, at the checkpoint's step
    assert picture.shape == (2 * CELL + 2, 8 * CELL + 2)
    inputs, recons = ([picture[2 + row * CELL : row * CELL + CELL, 2 + c * CELL : c * CELL + CELL] for c in range(8)] for row in (0, 1))
    inputs, recons = torch.stack(inputs), torch.stack(recons)  # each (8, 28, 28)
    # TensorBoard truncates to 8 bits: a pixel shows floor(255 v) / 255, within 1/255 of v.
    assert (inputs - x[:, 0]).abs().max().item() <= 1 / 255 + 1e-6  # the same eight images
    x_hat = r.reconstruct(x)
    assert x_hat.shape == (8, 1, 28, 28) and x_hat.device.type == "cpu"
    assert (recons - x_hat[:, 0]).abs().max().item() <= 1 / 255 + 1e-4
    # ... and a tolerance that tells images apart: each tile is at least 5x it from its neighbour's reconstruction
    assert (recons - x_hat.roll(1, dims=0)[:, 0]).abs().amax(dim=(1, 2)).min().item() > 5 / 255


def test_load_run_gives_model_config_metrics_and_samples(vae_dir: Path) -> None:
    from vae_runner import LoadedRun, load_run

    r = load_run(str(vae_dir), device="cpu")
    assert isinstance(r, LoadedRun) and r.run_dir == vae_dir and r.device == torch.device("cpu")
    assert not r.model.training and r.config.model.name == "vae" and r.config.train.batch_size == 100
    assert r.step == 20 and r.latent_dim == 20 and r.num_classes == 0  # a VAE is conditioned on no class
    assert r.class_names is not None and r.class_names[3] == "3 - three" and len(r.class_names) == 10
    assert r.metrics == json.loads((vae_dir / "metrics.json").read_text()) and r.metrics["val/loss"] < 784 * math.log(2)
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = r.encode(x)
    assert mu.shape == logvar.shape == (5, 20)
    assert torch.equal(r.code(x), mu)  # without a flow the latent code is mu
    assert r.prior.log_prob(torch.zeros(20)).item() == pytest.approx(-10 * math.log(2 * math.pi))  # N(0, I) at 0
    one = r.reconstruct(torch.rand(1, 28, 28))  # one image without the batch axis
    assert one.shape == (1, 1, 28, 28)
    a, b, c = r.sample(16, seed=3), r.sample(16, seed=3), r.sample(16, seed=4)
    assert a.shape == (16, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= a.min().item() and a.max().item() <= 1.0
    z = 0.5 * torch.randn(16, 20, generator=torch.Generator().manual_seed(3))  # the documented z for seed=3, temperature=0.5
    assert torch.allclose(r.sample(16, seed=3, temperature=0.5), r.decode(z), atol=1e-6)


def test_a_run_without_metrics_has_empty_metrics(vae_dir: Path, tmp_path: Path) -> None:
    from vae_runner import load_run

    copy = tmp_path / "copy"
    for path in (".hydra/config.yaml", "checkpoints/last.pt"):
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_bytes((vae_dir / path).read_bytes())
    assert load_run(copy, device="cpu").metrics == {}


def test_a_cvae_takes_a_label_for_all_or_one_per_image(cvae_dir: Path) -> None:
    from vae_runner import load_run

    r = load_run(cvae_dir, device="cpu")
    assert r.num_classes == 10 and r.config.model.conditional
    x = r.sample(4, labels=7, seed=0)
    per_image = r.reconstruct(x, labels=torch.tensor([7, 7, 7, 7]))
    assert torch.allclose(r.reconstruct(x, labels=7), per_image)
    assert not torch.allclose(r.reconstruct(x, labels=1), per_image, atol=1e-3)  # the label conditions the decoder
    assert r.encode(x, labels=[0, 1, 2, 3])[0].shape == (4, 20)


VAE_REFUSALS = [
    ("encode", (torch.rand(3, 28, 28),), {}, r"takes images of shape \(N, 1, 28, 28\) or \(1, 28, 28\) with N >= 1, got \(3, 28, 28\)"),
    ("encode", (torch.rand(2, 1, 32, 32),), {}, r"got \(2, 1, 32, 32\)"),
    ("encode", (torch.rand(0, 1, 28, 28),), {}, r"with N >= 1, got \(0, 1, 28, 28\)"),
    ("reconstruct", (torch.zeros(2, 1, 28, 28, dtype=torch.uint8),), {}, r"floats in \[0, 1\], got torch.uint8; divide uint8 images by 255"),
    ("reconstruct", (255 * torch.ones(2, 1, 28, 28),), {}, r"must lie in \[0, 1\], got values from 255 to 255"),
    ("reconstruct", (torch.full((1, 1, 28, 28), math.nan),), {}, r"must lie in \[0, 1\]"),
    ("reconstruct", (torch.rand(2, 1, 28, 28),), {"labels": 3}, r"\(vae\) is not conditional and takes no labels"),
    ("decode", (torch.zeros(4, 5),), {}, r"decodes float latents of shape \(N, 20\) or \(20,\) with N >= 1, got torch.float32 \(4, 5\)"),
    ("sample", (0,), {}, r"n=0 must be a whole number of images >= 1"),
    ("sample", (4,), {"temperature": 0.0}, r"temperature=0.0 must be a positive, finite number"),
    ("sample", (4,), {"seed": -1}, r"seed=-1 is out of range"),
    ("sample", (4,), {"temperature": 1e39}, r"latents must be finite numbers; got NaN or Inf \(is the temperature too large\?\)"),
    ("decode", (torch.full((2, 20), math.nan),), {}, r"latents must be finite numbers"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "message"), VAE_REFUSALS, ids=[m[3][:40] for m in VAE_REFUSALS])
def test_a_vae_refuses_bad_input_with_one_sentence(vae_dir: Path, method: str, args: tuple, kwargs: dict, message: str) -> None:
    from vae_runner import load_run

    r = load_run(vae_dir, device="cpu")
    with pytest.raises(ValueError, match=message) as caught:
        getattr(r, method)(*args, **kwargs)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")  # one sentence


CVAE_REFUSALS = [
    ({}, r"is a CVAE over 10 classes and needs labels=: a class index 0..9, or one per image"),
    ({"labels": 10}, r"labels \[10\] are out of range: this run's CVAE has 10 classes, 0..9"),
    ({"labels": [1, -1, 12]}, r"labels \[-1, 12\] are out of range"),
    ({"labels": [1, 2]}, r"one class index or 3 of them \(one per image\), got shape \(2,\)"),
    ({"labels": 2.5}, r"whole class indices 0..9, got torch.float32"),
]


@pytest.mark.parametrize(("kwargs", "message"), CVAE_REFUSALS, ids=[str(k) for k, _ in CVAE_REFUSALS])
def test_a_cvae_refuses_a_missing_or_bad_label(cvae_dir: Path, kwargs: dict, message: str) -> None:
    from vae_runner import load_run

    r = load_run(cvae_dir, device="cpu")
    with pytest.raises(ValueError, match=message):
        r.reconstruct(torch.rand(3, 1, 28, 28), **kwargs)


def test_load_run_refuses_a_folder_without_a_checkpoint_and_an_unknown_device(vae_dir: Path, tmp_path: Path) -> None:
    from vae_runner import load_run

    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path))} is not a vae-run run directory"):
        load_run(tmp_path)
    with pytest.raises(UserError, match="^device=tpu is not a device; use auto, cpu, cuda, cuda:N or mps.$"):
        load_run(vae_dir, device="tpu")


def test_run_returns_the_cli_s_error_sentence_and_refuses_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from vae_runner import RunFailed, run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFailed) as caught:
        run(["model.beta=-1"])
    assert str(caught.value) == "model.beta=-1.0 is negative; use a KL weight >= 0 (1 is the plain VAE)."
    assert caught.value.exit_code == 2
    assert "error: model.beta=-1.0 is negative" in capsys.readouterr().err  # passed through to our stderr
    assert not (tmp_path / "outputs").exists()  # refused before any folder was made
    with pytest.raises(ValueError, match=r"^run\(\) takes key=value overrides only, got -m: it trains one run"):
        run(["-m", "model.beta=1,4"])


def readme_example() -> str:
    """The fenced Python block that follows README's `<!-- example: python-api -->` marker."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: python-api -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lacks the python-api example"
    return match.group(1)


def test_readme_python_example_runs(mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(mnist_root)  # dataset.root's default, data/, as on a user's machine after the download
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    metrics, r = scope["metrics"], scope["r"]
    assert metrics.run_dir.parent == tmp_path / "outputs" / "runs"  # where vae-run would have put it
    assert metrics == json.loads((metrics.run_dir / "metrics.json").read_text())
    assert 0 < metrics["val/loss"] < 784 * math.log(2)  # trained below the untrained model's ~543 nats
    assert r.config.model.name == "cvae" and not r.model.training
    assert scope["imgs"].shape == (16, 1, 28, 28) and scope["mu"].shape == scope["logvar"].shape == (16, 20)
    assert scope["x_hat"].shape == (16, 1, 28, 28) and scope["digits"].shape == (10, 1, 28, 28)
    out = capsys.readouterr().out
    assert "run directory:" in out and f"val/loss {metrics['val/loss']:.1f}" in out  # vae-run's own output, then the example's
