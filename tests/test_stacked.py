"""`hydra/launcher=stacked`: a loss-weight sweep trained as one stacked model equals its jobs run alone, resumes exactly, refuses other sweeps."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config, read_scalars, vae_run, vae_run_background
from tests.test_faults import _wait_for_checkpoint
from vae_runner.run_dir import RunDir
from vae_runner.stacked import differing_key, settle_checkpoints

# 1,000 images in batches of 100: 2 epochs of 10 steps, every step logged; a warm-up so that beta's schedule matters too.
SMALL = [
    "dataset.train_samples=1000", "dataset.val_samples=100", "eval.test_samples=100", "eval.nll_samples=4",
    "train.epochs=2", "train.batch_size=100", "train.log_every_steps=1", "model.kl_warmup_steps=8", "threads=1",
    "dataset.binarize=dynamic",  # each batch draws from the random state too, between the steps' noise
]
BETAS = ("0.5", "4")


def _curve(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    return read_scalars(run_dir)[tag]


def _assert_close(a: list[tuple[int, float]], b: list[tuple[int, float]], rel: float) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, rel=rel), step


@pytest.fixture(scope="module")
def solo(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each beta's job run alone."""
    base = tmp_path_factory.mktemp("solo")
    runs = {}
    for beta in BETAS:
        runs[beta] = base / beta
        proc = vae_run(f"dataset.root={mnist_root}", *SMALL, f"model.beta={beta}", f"hydra.run.dir={runs[beta]}", cwd=base)
        assert proc.returncode == 0, proc.stderr
    return runs


@pytest.mark.parametrize("vectorize,rel", [("false", 0.0), ("true", 1e-5)])
def test_stacked_members_equal_their_jobs_run_alone(mnist_root: Path, tmp_path: Path, solo: dict[str, Path], vectorize: str, rel: float) -> None:
    sweep = tmp_path / "sweep"
    proc = vae_run(  # checkpoints every 3 steps: members one after another take their steps in chunks of 3 or fewer
        "-m", "hydra/launcher=stacked", f"hydra.launcher.vectorize={vectorize}", f"dataset.root={mnist_root}", *SMALL,
        "train.checkpoint_every_steps=3", f"model.beta={','.join(BETAS)}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for beta in BETAS:
        member = sweep / f"model.beta={beta}"
        # One after another, a member's steps are the single run's, bit for bit; one vmap over the stack, to rounding.
        _assert_close(_curve(member), _curve(solo[beta]), rel)
        _assert_close(_curve(member, "train/beta"), _curve(solo[beta], "train/beta"), 0.0)
        mine, alone = (json.loads((d / "metrics.json").read_text()) for d in (member, solo[beta]))
        for key in ("val/loss", "val/kl", "test/nll", "test/elbo", "val/active_units"):
            assert mine[key] == pytest.approx(alone[key], rel=max(rel, 1e-12)), key
        assert mine["train/steps"] == 20
        saved = torch.load(member / "checkpoints" / "last.pt", weights_only=True)
        assert saved["config"]["model"]["beta"] == float(beta) and saved["step"] == 20
        alone_saved = torch.load(solo[beta] / "checkpoints" / "last.pt", weights_only=True)
        for name, weight in saved["model"].items():  # a member's own weights, not views into the whole stack
            assert weight.untyped_storage().nbytes() == alone_saved["model"][name].untyped_storage().nbytes(), name
        log = (member / "vae-run.log").read_text()
        assert f"model.beta={beta}  epoch 2/2  step 20" in log and "vae-run: final metrics" in log
        other = next(b for b in BETAS if b != beta)
        assert f"model.beta={other}" not in log  # each member's log holds its own reports
    # The two members really differ: beta moves the KL.
    kl = {b: json.loads((sweep / f"model.beta={b}" / "metrics.json").read_text())["val/kl"] for b in BETAS}
    assert kl["0.5"] > kl["4"] + 1


def test_stacked_sweep_resumes_exactly_after_sigkill(mnist_root: Path, tmp_path: Path, solo: dict[str, Path]) -> None:
    sweep = tmp_path / "sweep"
    args = ("-m", "hydra/launcher=stacked", f"dataset.root={mnist_root}", *SMALL, "train.checkpoint_every_steps=1",
            f"model.beta={','.join(BETAS)}", f"hydra.sweep.dir={sweep}")
    proc = vae_run_background(*args, cwd=tmp_path)
    killed_after = _wait_for_checkpoint(sweep / f"model.beta={BETAS[-1]}" / "checkpoints" / "last.pt", proc, min_step=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = vae_run(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for beta in BETAS:
        member = sweep / f"model.beta={beta}"
        _assert_close(_curve(member), _curve(solo[beta]), 0.0)  # each step once, continuing exactly
        assert json.loads((member / "metrics.json").read_text())["val/loss"] == json.loads((solo[beta] / "metrics.json").read_text())["val/loss"], killed_after


def test_a_member_whose_step_is_not_finite_skips_only_its_own(mnist_root: Path, tmp_path: Path, solo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_runner import train
    from vae_runner.stacked import train_members

    real = train.objective_terms
    calls = {"n": 0}

    def poisoned(x, out, likelihood, objective, weights, *rest):  # type: ignore[no-untyped-def]
        terms = real(x, out, likelihood, objective, weights, *rest)
        if torch.is_grad_enabled() and weights.beta == 1.0:  # beta=4's third step, at 2/8 of its warm-up (beta=0.5 never weighs 1)
            calls["n"] += 1
            terms["loss"] = terms["loss"] * math.nan
        return terms

    monkeypatch.setattr(train, "objective_terms", poisoned)
    cfgs = [compose_config([f"dataset.root={mnist_root}", *SMALL, f"model.beta={b}"]) for b in BETAS]
    runs = [RunDir(tmp_path / b) for b in BETAS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the solo runs' threads=1: the same sums in the same order
    try:
        metrics, failed = train_members(cfgs, runs, vectorize=False)
    finally:
        torch.set_num_threads(threads)
    assert not failed and calls["n"] == 1
    assert metrics[1]["train/skipped_steps"] == 1 and metrics[0]["train/skipped_steps"] == 0
    _assert_close(_curve(runs[0].root), _curve(solo["0.5"]), 0.0)  # the other member never noticed
    assert [s for s, _ in _curve(runs[1].root)] == [s for s in range(1, 21) if s != 3]


def test_a_sweep_over_anything_but_loss_weights_is_refused(mnist_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = vae_run("-m", "hydra/launcher=stacked", f"dataset.root={mnist_root}", "model.latent_dim=10,20", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "hydra/launcher=stacked trains jobs that differ only in loss weights" in line
    assert "model.latent_dim differs (10 and 20)" in line and "without hydra/launcher=stacked" in line
    assert not sweep.exists()  # refused before anything was written
    proc = vae_run("-m", "hydra/launcher=stacked", "hydra.launcher.vectorize=maybe", "model.beta=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: hydra.launcher.vectorize='maybe' is not a choice; use auto, true or false."
    assert not sweep.exists()


def test_differing_key_names_the_first_non_weight_key() -> None:
    base = compose_config([])
    assert differing_key([base, compose_config(["model.beta=4", "model.free_bits=0.5", "model.kl_warmup_steps=10"])]) is None
    assert differing_key([base, compose_config(["model=beta_vae"])]) is None  # a preset that changes only beta (and its name)
    assert differing_key([base, compose_config(["optim.lr=0.01"])]) == ("optim.lr", 0.001, 0.01)
    assert differing_key([base, compose_config(["model=iwae"])]) == ("model.iwae_samples", 5, 50)


def test_a_group_checkpoint_cut_short_is_finished_or_undone(tmp_path: Path) -> None:
    runs = [RunDir(tmp_path / name) for name in "abc"]
    for run in runs:
        run.checkpoint.parent.mkdir(parents=True)
        run.checkpoint.write_text("old")
    pending = [run.checkpoint.with_name("last.pt.next") for run in runs]
    # Killed while writing: the last member's new checkpoint is missing, so the written ones are dropped.
    pending[0].write_text("new")
    settle_checkpoints(runs)
    assert [r.checkpoint.read_text() for r in runs] == ["old"] * 3 and not pending[0].exists()
    # Killed while replacing: every new one was written (a's already in place), so the replacing is finished.
    runs[0].checkpoint.write_text("new")
    pending[1].write_text("new")
    pending[2].write_text("new")
    settle_checkpoints(runs)
    assert [r.checkpoint.read_text() for r in runs] == ["new"] * 3 and not any(p.exists() for p in pending)


@pytest.mark.parametrize("preset,swept", [("beta_tcvae", ("model.beta=2", "model.beta=6")), ("beta_vae_b", ("model.capacity_max=5", "model.capacity_max=25"))])
def test_vectorized_members_follow_their_objectives_terms(mnist_root: Path, tmp_path: Path, preset: str, swept: tuple[str, str]) -> None:
    from vae_runner.stacked import train_members

    small = [f"dataset.root={mnist_root}", f"model={preset}", *[o for o in SMALL if not o.startswith("model.kl_warmup")], "train.epochs=1"]
    results = {}
    for vectorize in (False, True):
        cfgs = [compose_config([*small, o]) for o in swept]
        runs = [RunDir(tmp_path / str(vectorize) / o) for o in swept]
        results[vectorize], failed = train_members(cfgs, runs, vectorize=vectorize)
        assert not failed
    for plain, vectorized in zip(results[False], results[True]):
        for key in ("val/loss", "val/kl", "test/elbo"):
            assert vectorized[key] == pytest.approx(plain[key], rel=1e-4), key
    assert results[True][0]["val/kl"] != pytest.approx(results[True][1]["val/kl"], rel=1e-3)  # the weights took effect
