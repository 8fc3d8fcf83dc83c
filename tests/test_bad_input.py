"""Bad input through the real `vae-run`: one sentence naming the key, value or path, exit 2, no traceback, no run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import compose_config, vae_run
from vae_runner.cli import describe_config_error
from vae_runner.config import validate
from vae_runner.errors import UserError
from vae_runner.train import train

# (overrides, text the one-line message must contain)
CASES = [
    (["model=foo"], "model=foo is not a choice for model; use one of: beta_tcvae, beta_vae, beta_vae_b, cvae, iwae, vae, vae_iaf, vae_planar, vamp"),
    (["dataset=svhn"], "dataset=svhn is not a choice for dataset"),
    (["model.betta=2"], "Key 'betta' not in 'ModelConfig'"),
    (["model.latent_dim=0"], "model.latent_dim=0 must be a positive"),
    (["model.latent_dim=2.5"], "model.latent_dim=2.5"),
    (["model.beta=-1"], "model.beta=-1.0 is negative"),
    (["model.beta=inf"], "model.beta=inf is not a finite number"),
    (["train.batch_size=0"], "train.batch_size=0 must be a positive"),
    (["train.batch_size=4096", "dataset.train_samples=500"], "train.batch_size=4096 is larger than the training set (500 images)"),
    (["optim.lr=0"], "optim.lr=0.0 must be a positive"),
    (["optim.lr=-1e-3"], "optim.lr=-0.001 must be a positive"),
    (["train.epochs=0"], "train.epochs=0 must be a positive"),
    (["precision=fp16", "device=cpu"], "precision=fp16 is not supported on the CPU"),
    (["precision=fp8"], "precision='fp8' is not one of auto, fp32, bf16, fp16"),
    (["dataset.image_size=0"], "dataset.image_size=0 must be a positive"),
    (["dataset.image_size=big"], "dataset.image_size=big"),
    (["model.arch=densenet"], "model.arch='densenet' is not one of auto, mlp, conv, resnet"),
    (["model.posterior=maf"], "model.posterior='maf' is not one of gaussian, planar, iaf"),
    (["model.prior=flow"], "model.prior='flow' is not one of normal, vamp, mog"),
    (["model.objective=vimco"], "model.objective='vimco' is not one of elbo, iwae, beta_tc, capacity"),
    (["model.free_bits=0.5", "model.posterior=iaf"], "model.free_bits=0.5 floors each latent dimension's closed-form KL"),
    (["model=beta_tcvae", "model.prior=vamp"], "model.objective=beta_tc estimates q(z) from the Gaussian posteriors"),
    (["model=iwae", "model.kl_warmup_steps=100"], "model.kl_warmup_steps and model.kl_schedule=cyclical schedule beta"),
    (["model=iwae", "model.beta=4"], "model.beta=4.0 is not used by model.objective=iwae"),
    (["model.flow_steps=0"], "model.flow_steps=0 must be a positive"),
    (["model.gamma=-1"], "model.gamma=-1.0 must be a finite number >= 0"),
    (["model=iwae", "model.iwae_samples=1000000"], "model.iwae_samples=1000000 decodes 128,000,000 images in every training step"),
    (["model=beta_tcvae", "train.batch_size=1"], "model.objective=beta_tc estimates q(z) from the other images of each batch, and train.batch_size=1 has none"),
    (["model.prior=mog", "model.prior_components=1000000"], "use a smaller eval.nll_chunk or model.prior_components (now 1,000,000)"),
    (["dataset=image_folder"], "dataset=image_folder needs dataset.path"),
    (["dataset=image_folder", "dataset.path=/no/such/folder"], "dataset.path=/no/such/folder is not a folder"),
    (["hydra.run.dir=/etc/hostname/run"], "cannot create the output folder /etc/hostname/run: /etc/hostname is a file"),
    (["resume=/tmp"], "resume=/tmp is not a vae-run run directory"),
    # Values that passed validation and then crashed (issue: a sturdy core)
    (["seed=-1"], "seed=-1 is out of range; use an integer from 0 to 2**32 - 1"),
    (["seed=4294967296"], "seed=4294967296 is out of range"),
    (["threads=0"], "threads=0 is not a thread count; use a positive integer or auto"),
    (["threads=many"], "threads='many' is not a thread count"),
    (["eval.disentanglement_images=50"], "eval.disentanglement_images=50 is too few to estimate mutual information"),
    (["eval.fd_samples=1"], "eval.fd_samples=1 is not a number of samples; use an integer of 2 or more, or auto"),
    (["eval.fd_samples=many"], "eval.fd_samples='many' is not a number of samples"),
    (["eval.inception_weights=/no/such/weights.pth"], "eval.inception_weights=/no/such/weights.pth is not a file"),
    (["dataset=dsprites", "dataset.binarize=static"], "dataset.binarize=static does nothing on dsprites"),
    (["model.arch=conv", "model.conv_channels=[]"], "model.conv_channels=[] is empty; list at least one layer width"),
    (["model.hidden_dims=[]"], "model.hidden_dims=[] is empty; list at least one layer width, e.g. model.hidden_dims=[512]"),
    (["dataset.image_size=100000"], "dataset.image_size=100000 would need"),
    (["model.hidden_dims=[100000000]"], "would need"),
    (["optim._target_=torch.optim.Nope"], "optim._target_=torch.optim.Nope is not a torch optimizer class"),
    (["optim._target_=os.system"], "optim._target_=os.system is not a torch optimizer class"),
    (["+optim.momentum=0.9"], "optim.momentum is not an argument of torch.optim.Adam"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 is negative"),
    (["model.beta=1,2"], "model.beta=1,2 gives several values, which only a sweep runs; add -m"),
    # Unknown keys, with or without +
    (["+model.betta=4"], "model.betta is not a config key; did you mean model.beta?"),
    (["+train.epoch=3"], "train.epoch is not a config key; did you mean train.epochs?"),
]
if not torch.cuda.is_available():
    CASES.append((["device=cuda"], "device=cuda was asked for but no CUDA GPU is available; use device=auto"))


def _check_one_line_exit_2(proc, expected: str, cwd: Path) -> None:  # type: ignore[no-untyped-def]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    runs = cwd / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())  # no half-written run
    assert not list(cwd.rglob("*.tmp"))  # no temporary file


@pytest.mark.parametrize(("overrides", "expected"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_sentence_and_exit_2(mnist_root: Path, tmp_path: Path, overrides: list[str], expected: str) -> None:
    proc = vae_run(f"dataset.root={mnist_root}", *overrides, cwd=tmp_path)
    _check_one_line_exit_2(proc, expected, tmp_path)


def test_image_folder_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not an image")
    for folder in ("empty", "texts"):
        proc = vae_run("dataset=image_folder", f"dataset.path={tmp_path / folder}", cwd=tmp_path)
        _check_one_line_exit_2(proc, f"dataset.path={tmp_path / folder} holds 0 image(s)", tmp_path)


NUMERIC_KEYS = {
    "model.latent_dim": st.integers(-3, 64),
    "model.beta": st.one_of(st.floats(-2, 10), st.sampled_from([float("nan"), float("inf")])),
    "model.kl_warmup_steps": st.integers(-5, 50),
    "train.batch_size": st.integers(-2, 600),
    "train.max_steps": st.integers(-1, 3),
    "optim.lr": st.floats(-1e-2, 1e-2),
    "dataset.image_size": st.integers(-1, 40),
    "train.grad_clip": st.floats(-1, 5),
}


# Derandomised: CI sees the same examples every run. The explicit examples are every case the
# search found once (train.batch_size=1 crashed the epoch-end pictures), kept for good.
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({}, optional=NUMERIC_KEYS))
@example(values={"train.batch_size": 1})
@example(values={"train.batch_size": 1, "model.latent_dim": 1})
@example(values={"model.latent_dim": 1, "dataset.image_size": 1})
@example(values={"optim.lr": 1e-2, "model.beta": 0.0, "train.grad_clip": 0.5})
def test_random_numeric_values_either_train_or_give_one_sentence(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory, values: dict) -> None:
    overrides = [f"{k}={v}" for k, v in values.items()]
    base = [f"dataset.root={mnist_root}", "dataset.train_samples=256", "dataset.val_samples=64", "eval.test_samples=64", "train.epochs=1"]
    if "train.max_steps" not in values:
        base.append("train.max_steps=2")
    try:
        cfg = compose_config(base + overrides)
    except Exception as err:  # the CLI turns these into one sentence and exit 2
        message = describe_config_error(err)
        assert "\n" not in message and message.endswith(".")
        return
    try:
        validate(cfg)
        metrics = train(cfg, tmp_path_factory.mktemp("fuzz"))
    except UserError as err:
        assert "\n" not in str(err) and "=" in str(err)
        return
    assert metrics["train/steps"] >= 1
