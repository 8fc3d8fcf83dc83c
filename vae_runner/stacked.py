"""A sweep over loss weights trained in one process as one stacked model (`hydra/launcher=stacked`).

The jobs ("members") differ only in the objective's weights (`WEIGHT_KEYS`), so
they share everything else: the data, the batches, the initial weights and the
noise of every step. Each member keeps its own optimizer, schedules, skipped
steps, TensorBoard, checkpoint and metrics, written as if it had run alone, so
a member's run folder is an ordinary run (`vae-eval`, `vae-compare`, and
`vae-run resume=` on that folder alone all work).

Two ways to take a step:
- vectorized (`torch.func.vmap` over parameters stacked along a leading member
  dimension): one batched forward and backward for all members, which fills a GPU
  that one small model leaves idle;
- one after another: each member's steps exactly as its single run takes them,
  `CHUNK_STEPS` at a time. On the CPU this is faster (vmap's batched matmuls cost
  a 5-member MLP step 46 ms against 36 ms for five plain ones on this 2-core
  machine), and all that stacking saves there is each job's data loading and
  model build (and, against separate processes, the start-up).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vae_runner.build import Built, build, make_objective, resolve_device
from vae_runner.checkpoint import rng_state, save_checkpoint, set_rng_state
from vae_runner.data import TensorBatches, corrupt
from vae_runner.errors import UserError
from vae_runner.model import VAEOutput
from vae_runner.objective import objective_terms
from vae_runner.progress import Meter, set_job
from vae_runner.run_dir import RunDir
from vae_runner.train import (
    Interrupted,
    Session,
    StopSignals,
    TrainingDiverged,
    advance,
    apply_gradients,
    checkpoint_state,
    finish,
    record,
    report_epoch,
    start,
    train_batch,
)

log = logging.getLogger(__name__)

# The keys a stacked sweep may vary: the objective's weights and their schedules (and the preset's name).
WEIGHT_KEYS = (
    "model.name", "model.beta", "model.alpha", "model.gamma", "model.capacity_max", "model.capacity_steps",
    "model.kl_warmup_steps", "model.kl_schedule", "model.kl_cycles", "model.kl_cycle_ratio", "model.free_bits",
)
PENDING_SUFFIX = ".next"  # a member's new checkpoint, written before any member's is replaced
# Taking steps one member after another, each takes this many before the next: its weights, gradients and
# optimizer state stay in the CPU's caches (5 MLP members: 6.4 ms a member-step, against 7.5 ms taking turns every step).
CHUNK_STEPS = 50


def differing_key(cfgs: Sequence[DictConfig]) -> Optional[tuple[str, object, object]]:
    """The first key outside `WEIGHT_KEYS` on which a job differs from the first: (key, first's value, its value); None if none."""
    flat = [_flatten(OmegaConf.to_container(OmegaConf.masked_copy(c, [k for k in c if k != "hydra"]), resolve=True)) for c in cfgs]
    for other in flat[1:]:
        for key in sorted(flat[0].keys() | other.keys()):
            if key not in WEIGHT_KEYS and flat[0].get(key) != other.get(key):
                return key, flat[0].get(key), other.get(key)
    return None


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """{"model.beta": 4.0, ...} from a nested config; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def check_stackable(cfgs: Sequence[DictConfig]) -> None:
    """Refuse, in one sentence, jobs the stacked launcher cannot train together."""
    differs = differing_key(cfgs)
    if differs is not None:
        key, first, other = differs
        raise UserError(
            f"hydra/launcher=stacked trains jobs that differ only in loss weights ({', '.join(k for k in WEIGHT_KEYS if k != 'model.name')}), "
            f"but {key} differs ({first} and {other}); run this sweep without hydra/launcher=stacked, one job after another."
        )


# ------------------------------------------------------------------ the members' steps


class Members:
    """The sessions trained together, and how one step is taken for all of them."""

    def __init__(self, sessions: list[Session], vectorize: bool):
        self.sessions = sessions
        self._numbers = {id(s): i for i, s in enumerate(sessions)}  # not list.index: Sessions compare field by field
        self.failed: dict[int, BaseException] = {}  # member -> why it stopped (divergence)
        self.vectorize = vectorize
        if vectorize:
            self._stack()

    @property
    def alive(self) -> list[Session]:
        return [s for i, s in enumerate(self.sessions) if i not in self.failed]

    def number(self, s: Session) -> int:
        """The member's place in the sweep, from 0."""
        return self._numbers[id(s)]

    def _stack(self) -> None:
        """Parameters stacked along a leading member dimension; each member's parameters become views into the stack."""
        from torch.func import stack_module_state

        models = [s.model for s in self.sessions]
        self.params, self.buffers = stack_module_state(models)  # (M, ...) each
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                p.data = self.params[name][i]  # shares the stack's storage: the member's optimizer updates the stack
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture, for functional_call

    def train_chunk(self, epoch: int, start: int, k: int) -> int:
        """`k` steps of every living member from batch `start` of `epoch`; returns the images each trained.

        Vectorized, or with batches streamed from disk, every step takes all members at
        once. Otherwise each member takes its `k` steps before the next, from the same
        random state, so that each draws the noise (and dynamic binarisation) its
        single run would, and its weights stay in the CPU's caches meanwhile.
        """
        batches = self.sessions[0].built.train
        if self.vectorize or not isinstance(batches, TensorBatches):
            images = 0
            for x, y in itertools.islice(batches.epoch(epoch, start_batch=start), k):
                self.record(self.step(x, y), x.shape[0])
                images += x.shape[0]
            return images
        start_state, end_state, images = rng_state(), None, 0
        for s in self.alive:
            set_rng_state(start_state)
            trained = 0
            for x, y in itertools.islice(batches.epoch(epoch, start_batch=start), k):
                self.record([self.step_one(s, x, y)], x.shape[0], [s])
                if self.number(s) in self.failed:
                    break
                trained += x.shape[0]
            else:
                end_state, images = rng_state(), trained
        if end_state is not None:
            set_rng_state(end_state)
        return images

    def step(self, x: Tensor, y: Optional[Tensor]) -> list[Optional[dict[str, Tensor]]]:
        """One optimizer step of every living member on this batch, with the same noise; their terms (None: skipped)."""
        s0 = self.sessions[0]
        alive = self.alive
        if not self.vectorize:
            return [self.step_one(s, x, y) for s in alive]
        d = s0.cfg.dataset
        x_in = corrupt(x, d.noise, d.noise_level) if d.noise != "none" else x  # denoising: noisy in, clean target
        # The noise a single run's model draws in its forward pass, drawn once for all members.
        eps = torch.randn(s0.built.objective.samples, x.shape[0], s0.model.latent_dim, device=x.device)
        for s in alive:
            s.progress.step += 1
        return self._vectorized_step(x, x_in, y if s0.model.num_classes else None, eps, alive)

    def step_one(self, s: Session, x: Tensor, y: Optional[Tensor]) -> Optional[dict[str, Tensor]]:
        """One optimizer step of one member, exactly as its single run takes it."""
        return train_batch(s, x, y)

    def _vectorized_step(self, x: Tensor, x_in: Tensor, y: Optional[Tensor], eps: Tensor, alive: list[Session]) -> list[Optional[dict[str, Tensor]]]:
        """All members' forward and backward as one vmap over the stack, then each member's own clipping and optimizer step."""
        from torch.func import functional_call, vmap

        s0, samples = self.sessions[0], self.sessions[0].built.objective.samples

        def forward(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> tuple[Optional[Tensor], ...]:
            out = functional_call(self.base, (params, buffers), (x_in, y), {"eps": eps, "samples": samples})
            return tuple(getattr(out, f) for f in VAEOutput.__dataclass_fields__)

        for p in self.params.values():
            p.grad = None
        with torch.autocast(x.device.type, dtype=s0.built.amp_dtype or torch.float32, enabled=s0.built.amp_dtype is not None):
            stacked = vmap(forward, randomness="error")(self.params, self.buffers)
        terms = []
        for s in alive:  # the objective in fp32, outside autocast, with each member's own weights
            i = self.number(s)
            out = VAEOutput(*(None if t is None else t[i] for t in stacked))
            terms.append(objective_terms(x, out, s.model.likelihood, s.built.objective, s.weights_at(s.progress.step - 1)))
        torch.stack([t["loss"] for t in terms]).sum().backward()  # members are independent: each gets its own gradient
        results = []
        for s, t in zip(alive, terms):
            i = self.number(s)
            for name, p in s.model.named_parameters():
                p.grad = self.params[name].grad[i]
            results.append(apply_gradients(s.model, s.optimizer, s.scaler, t, s.cfg.train.grad_clip))
        return results

    def record(self, results: list[Optional[dict[str, Tensor]]], n: int, sessions: Optional[list[Session]] = None) -> None:
        """Each living member (or those of `sessions`) counts or logs its step; one that diverges stops, the others go on."""
        for s, terms in zip(sessions or self.alive, results):
            try:
                record(s, terms, n)
            except TrainingDiverged as err:
                log.error("%s: %s", s.run.root.name, err)
                self.failed[self.number(s)] = err

    def save(self, batches_done: int) -> None:
        """Checkpoint every living member at this step: all new checkpoints are written first, then each replaces its member's.

        A run killed while writing keeps every old checkpoint; one killed while
        replacing has every new one written, and `settle_checkpoints` finishes the
        replacing before the next session resumes.
        """
        alive = self.alive
        for s in alive:
            s.progress.batches_done = batches_done
            state = checkpoint_state(s)
            if self.vectorize:  # the weights are views into the stack, which torch.save would write whole
                state["model"] = {k: v.clone() for k, v in state["model"].items()}
            save_checkpoint(_pending(s.run), state, s.model)
        for s in alive:
            if _pending(s.run).exists():
                os.replace(_pending(s.run), s.run.checkpoint)


def _pending(run: RunDir) -> Path:
    """Where a member's new checkpoint waits until every member's is written."""
    return run.checkpoint.with_name(run.checkpoint.name + PENDING_SUFFIX)


def settle_checkpoints(runs: Sequence[RunDir]) -> None:
    """Finish or undo a group checkpoint cut short: the members write their new checkpoints in order, then replace theirs in order.

    So the last member's new checkpoint exists only once all are written: then every
    waiting one replaces its member's; otherwise the waiting ones are removed.
    """
    pending = [_pending(r) for r in runs]
    complete = bool(pending) and pending[-1].exists()
    for run, path in zip(runs, pending):
        if path.exists():
            if complete:
                os.replace(path, run.checkpoint)
            else:
                path.unlink()


@contextmanager
def speaking(member: int, console: bool = True) -> Iterator[None]:
    """While one member reports, its lines go to its own log file only (and to the terminal unless `console` is false)."""
    global _speaker, _console
    _speaker, _console = member, console
    try:
        yield
    finally:
        _speaker, _console = None, True


_speaker: Optional[int] = None  # the member whose report is being logged (None: lines for every member)
_console = True  # False while a member repeats what the terminal has already shown for the first


class MemberFilter(logging.Filter):
    """Passes the lines of one member's reports and the lines every member shares, to that member's log file."""

    def __init__(self, member: int):
        super().__init__()
        self.member = member

    def filter(self, record: logging.LogRecord) -> bool:
        return _speaker is None or _speaker == self.member


class ConsoleFilter(logging.Filter):
    """Keeps a line off the terminal while the members repeat it one by one (each has it in its log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _console


def _log_to(run: RunDir, member: int) -> Optional[logging.Handler]:
    """Each member's log file gets the lines every member shares and its own reports; returns the handler opened (Hydra opened the first's)."""
    root = logging.getLogger()
    path = run.log.absolute()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            handler.addFilter(MemberFilter(member))
            return None
    handler = logging.FileHandler(path, encoding="utf-8")
    template = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    if template is not None:
        handler.setFormatter(template.formatter)
    handler.addFilter(MemberFilter(member))
    root.addHandler(handler)
    return handler


# ------------------------------------------------------------------ the loop


def start_members(cfgs: Sequence[DictConfig], runs: Sequence[RunDir]) -> list[Session]:
    """Build the data and the model once; each member gets its own copy of the initial weights, objective, optimizer and records, resumed from its checkpoint."""
    built = build(cfgs[0], device=resolve_device(cfgs[0].device))
    after_build = rng_state()  # what each member's single run would hold here
    sessions = []
    for i, (cfg, run) in enumerate(zip(cfgs, runs)):
        set_rng_state(after_build)
        own: Built = replace(built, model=copy.deepcopy(built.model), objective=make_objective(cfg.model, len(built.data.train)))
        with speaking(i, console=i == 0):  # the model's description once on the terminal, in every member's log
            sessions.append(start(cfg, run, own))
        sessions[-1].label = run.root.name
    steps = {s.run.root.name: s.progress.step for s in sessions}
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{name} at step {step}" for name, step in steps.items())
        raise UserError(f"the stacked jobs stand at different steps ({listed}); resume them without hydra/launcher=stacked, one after another.")
    return sessions


def train_members(cfgs: Sequence[DictConfig], runs: Sequence[RunDir], vectorize: bool) -> tuple[list[Optional[dict[str, float]]], dict[int, BaseException]]:
    """Train the members together, resuming from their checkpoints; returns each one's final metrics (None if it failed) and the failures."""
    settle_checkpoints(runs)
    with StopSignals(at_once="before training started; nothing was saved.") as stop:
        members = Members(start_members(cfgs, runs), vectorize)
        set_job(f"{len(runs)} stacked jobs")
        try:
            return _train(members, stop)
        finally:
            for s in members.sessions:
                s.tracker.close()


def _train(members: Members, stop: StopSignals) -> tuple[list[Optional[dict[str, float]]], dict[int, BaseException]]:
    """Epochs until the members are done, each ending in every member's report and one group checkpoint; then each one's final evaluation."""
    stop.at_once = None
    last_vals: dict[int, Optional[dict[str, float]]] = {}
    while members.alive and not members.alive[0].finished():
        images, seconds, done = run_epoch(members, stop)
        for s in members.alive:
            with speaking(members.number(s)):
                last_vals[id(s)] = report_epoch(s, images, seconds)
        members.save([advance(s, done) for s in members.alive][-1] if members.alive else done)
        if stop.signum is not None:
            _stop(members, stop)
    metrics: list[Optional[dict[str, float]]] = []
    for i, s in enumerate(members.sessions):
        if i in members.failed:
            metrics.append(None)
            continue
        stop.at_once = f"during the final evaluation; training is complete in {s.run.checkpoint}. Compute the metrics with: vae-eval {s.run.root}"
        with speaking(i):
            metrics.append(finish(s, last_vals.get(id(s)), s.loop_seconds()))
    return metrics, members.failed


@contextmanager
def member_logs(runs: Sequence[RunDir]) -> Iterator[None]:
    """Every member's log file open for the duration (Hydra opened the first's), each taking the shared lines and its own."""
    root = logging.getLogger()
    opened = [h for h in (_log_to(run, i) for i, run in enumerate(runs)) if h is not None]
    terminals = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    quiet = ConsoleFilter()
    for handler in terminals:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in terminals:
            handler.removeFilter(quiet)
        for handler in opened:
            root.removeHandler(handler)
            handler.close()


def run_epoch(members: Members, stop: StopSignals) -> tuple[int, float, int]:
    """Train every member from the saved position to the epoch's end (or `train.max_steps`); returns images per member, seconds, batches done."""
    lead = members.alive[0]
    p, t = lead.progress, lead.cfg.train
    for s in members.alive:
        s.model.train()
    started, images, done = time.perf_counter(), 0, p.batches_done
    total = lead.built.steps_per_epoch if t.max_steps is None else min(lead.built.steps_per_epoch, p.batches_done + t.max_steps - p.step)
    with Meter(f"epoch {p.epoch}/{t.epochs}", total, done=p.batches_done) as meter:
        while done < total and members.alive:
            k = chunk_length(members.alive[0].progress.step, total - done, t.checkpoint_every_steps)
            trained = members.train_chunk(p.epoch, done, k)
            images, done = images + trained, done + k
            meter.advance(k, trained)
            meter.note("loss " + " ".join(f"{s.running_loss:.1f}" for s in members.alive if s.running_loss is not None))
            if stop.signum is not None and members.alive:
                members.save(done)
                _stop(members, stop)
            if t.checkpoint_every_steps and members.alive and members.alive[0].progress.step % t.checkpoint_every_steps == 0:
                members.save(done)
    if lead.built.device.type == "cuda":
        torch.cuda.synchronize(lead.built.device)
    seconds = time.perf_counter() - started
    for s in members.alive:
        s.progress.step_seconds, s.progress.images_seen = s.progress.step_seconds + seconds, s.progress.images_seen + images
        if images:
            s.tracker.scalars("train", {"images_per_s": images / seconds}, s.progress.step)
    return images, seconds, done


def chunk_length(step: int, left: int, checkpoint_every: int) -> int:
    """Steps the members take before the next check for a signal: `CHUNK_STEPS`, fewer at the epoch's end or a checkpoint."""
    until_checkpoint = checkpoint_every - step % checkpoint_every if checkpoint_every else left
    return max(1, min(CHUNK_STEPS, left, until_checkpoint))


def _stop(members: Members, stop: StopSignals) -> None:
    """Every member's checkpoint is saved: hand the signal on and stop with the command that resumes the sweep."""
    import shlex
    import signal
    import sys

    stop.forward()
    signum = stop.signum or signal.SIGTERM
    command = shlex.join(["vae-run", *(a for a in sys.argv[1:] if a != "resume=true"), "resume=true"])
    raise Interrupted(
        signum,
        f"stopped by {signal.Signals(signum).name} at step {members.alive[0].progress.step}; every job's checkpoint is saved. Resume with: {command}",
    )
