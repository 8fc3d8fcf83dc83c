"""DDP under torchrun: two CPU processes (gloo) with the same global batch follow the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_scalars, vae_run

ARGS = ["device=cpu", "dataset.train_samples=1000", "dataset.val_samples=200", "eval.test_samples=200", "train.max_steps=8", "train.log_every_steps=1",
        "train.batch_size=100", "eval.nll_samples=2"]


# Free bits floor each dimension's KL averaged over the whole batch, not over each rank's shard:
# 0.5 nats sits inside the range the per-dimension KLs cross in these 8 steps. The CVAE with an
# IAF posterior, a VampPrior and the IWAE bound draws k samples per image, sharded like one.
@pytest.mark.parametrize(
    "model",
    [["model.free_bits=0.0"], ["model.free_bits=0.5"],
     ["model=cvae", "model.posterior=iaf", "model.prior=vamp", "model.objective=iwae", "model.iwae_samples=3", "model.prior_components=20"]],
    ids=["elbo", "free_bits", "cvae_iaf_vamp_iwae"],
)
def test_two_gloo_processes_match_one_process(mnist_root: Path, tmp_path: Path, model: list[str]) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [*ARGS, *model]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vae_runner.cli",
         f"dataset.root={mnist_root}", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    (ddp_dir,) = (tmp_path / "outputs" / "runs").iterdir()  # both ranks agreed on one run directory
    one = vae_run(f"dataset.root={mnist_root}", *args, f"hydra.run.dir={tmp_path / 'single'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]

    curve_ddp = read_scalars(ddp_dir)["train/loss"]
    curve_one = read_scalars(tmp_path / "single")["train/loss"]
    assert [s for s, _ in curve_ddp] == [s for s, _ in curve_one] == list(range(1, 9))
    for (_, a), (_, b) in zip(curve_ddp, curve_one):
        assert a == pytest.approx(b, rel=1e-5)  # floating-point tolerance: the gradient is summed in another order
    val_ddp = json.loads((ddp_dir / "metrics.json").read_text())["val/loss"]
    val_one = json.loads((tmp_path / "single" / "metrics.json").read_text())["val/loss"]
    assert val_ddp == pytest.approx(val_one, rel=1e-5)
    assert two.stdout.count("final metrics") == 1  # rank 0 alone reports


def test_more_processes_than_gpus_is_refused_on_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vae_runner import distributed
    from vae_runner.errors import UserError

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0's GPU exists, and it refuses too: no rank waits on another
    with pytest.raises(UserError, match=r"2 processes on this machine but it has 1 CUDA GPU.*--nproc_per_node=1, or device=cpu"):
        distributed.device_for_rank(torch.device("cuda"))
    assert distributed.device_for_rank(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 0)
