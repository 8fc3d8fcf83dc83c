"""GPU training throughput: images/s of one training step by precision and execution mode, and whole `vae-run` processes.

For each model (`mlp`: the default `vae-run` model, 784-512-20 with a Bernoulli likelihood on
MNIST; `cifar_conv`: `dataset=cifar10`'s conv model with the discretized logistic likelihood)
and batch size, it times training steps in fp32, bf16 and fp16 (with a GradScaler), each as:

- eager: `vae_runner.train.train_step`, as `vae-run` trains (one host sync per step, its finite check);
- compiled: the same `train_step` on `torch.compile(model)` (the objective and Adam stay eager);
- graph: a whole step (forward, objective, backward, gradient norm, Adam with capturable=True)
  captured as one CUDA graph on static inputs and replayed after each batch is copied in
  (PyTorch's "whole network capture"). It skips train_step's per-step finite check, a host
  sync: the graph counts non-finite steps on the device, read every 100 steps, and reports
  the count (fp16 steps that overflow are skipped on the device by fused Adam; fp32 and bf16
  ones are applied as they are);
- compiled+graph: the compiled model inside that captured step.

Batches are drawn the project's way, index slices of a uint8 tensor on the device normalised
there, so the gather counts. `mlp` steps through the real MNIST training split; `cifar_conv`
through random uint8 images of CIFAR-10's shape (45,000 x 3 x 32 x 32), since this is a pure
step-throughput measurement and decoding 60,000 JPEGs would only add start-up time. For `mlp`
it also times the conventional recipe on the same device: torchvision's MNIST through a
shuffling DataLoader (ToTensor, pinned memory, 1 worker as in pytorch/examples' vae) into
the same model and `train_step` in fp32. Only full batches are used (one shape for graphs
and compiled code). Timing: warm-up steps first (compilation and capture fall there), then
CUDA events around the timed steps after a synchronize; on the CPU, the wall clock.

On CUDA (and unless --no-whole) it then times whole processes: `vae-run train.epochs=10`
from launch to exit, with the train/images_per_s and test/nll of its metrics.json, and the
beta sweep `vae-run -m model.beta=0.5,1,2,4,8` with and without `hydra/launcher=stacked`.

It measures and prints; it never fails on a timing. A variant that fails is a row holding
the first line of its error. On one H100:

    .venv/bin/python benchmarks/gpu.py --device cuda --json gpu.json

or in three parts, for machines that limit a command's time (compiling the 12 model, batch and
precision pairs takes most of the first two):

    .venv/bin/python benchmarks/gpu.py --device cuda --models mlp --no-whole --json gpu-mlp.json
    .venv/bin/python benchmarks/gpu.py --device cuda --models cifar_conv --no-whole --json gpu-cifar.json
    .venv/bin/python benchmarks/gpu.py --device cuda --no-step-rows --json gpu-whole.json

A smoke test on the CPU (fp16, graphs and compilation are skipped there, each with a row saying why):

    .venv/bin/python benchmarks/gpu.py --device cpu --steps 10 --warmup 2 --batches 128 --models mlp
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from vae_runner.data import DatasetInfo, Split
from vae_runner.objective import Objective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import default_root, positive  # noqa: E402  (the benchmarks folder, for its sibling)

MODELS = {"mlp": [], "cifar_conv": ["dataset=cifar10"]}  # model key -> Hydra overrides of the default config
PRECISIONS = ("fp32", "bf16", "fp16")
VARIANTS = ("eager", "compiled", "graph", "compiled+graph")
RECIPE = "DataLoader recipe"
CIFAR_TRAIN_IMAGES = 45_000  # CIFAR-10's 50,000 training images less vae-run's 10% validation split
CHECK_EVERY = 100  # graph steps between reads of the on-device non-finite count
PROCESS_TIMEOUT_S = 1800
BETAS = "0.5,1,2,4,8"
TARGET_IMAGES_PER_S, TARGET_WALL_S = 1_000_000, 15.0
TARGETS = (
    f"targets on one H100: the default model's (mlp) training loop >= {TARGET_IMAGES_PER_S:,} images/s at batch 128 "
    f"(the model is launch-bound: a step should be one CUDA graph); the default 10-epoch run under {TARGET_WALL_S:.0f} s wall"
)

Step = Callable[[Tensor, Optional[Tensor]], None]
Batch = tuple[Tensor, Optional[Tensor]]


@dataclass
class Row:
    """One timed variant of the training step, or why it has no number."""

    model: str
    batch: int
    precision: str
    variant: str
    images_per_s: Optional[float] = None
    note: str = ""


@dataclass
class Process:
    """One timed `vae-run` process: its wall time and (mean over its runs) metrics, or why it failed."""

    name: str
    command: str
    wall_s: Optional[float] = None
    runs: int = 0
    images_per_s: Optional[float] = None
    test_nll: Optional[float] = None
    note: str = ""


@dataclass
class Workload:
    """A model's config and dataset description, and the uint8 training images its steps draw from."""

    name: str
    cfg: DictConfig
    info: DatasetInfo
    stats: tuple[float, float]
    train: Split


def choice_list(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of some of `allowed`."""
    allowed = tuple(allowed)

    def parse(text: str) -> list[str]:
        items = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [item for item in items if item not in allowed]
        if not items or unknown:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {', '.join(allowed)}")
        return items

    return parse


def batch_list(text: str) -> list[int]:
    """`128,512` as [128, 512]; each a positive whole number."""
    parts = text.split(",")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive batch sizes, e.g. 128,512")
    return [int(part) for part in parts]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available (default: %(default)s)")
    parser.add_argument("--steps", type=positive, default=300, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before them (default: %(default)s)")
    parser.add_argument("--batches", type=batch_list, default=[128, 512], help="batch sizes, comma-separated (default: 128,512)")
    parser.add_argument("--models", type=choice_list(MODELS), default=list(MODELS), help=f"of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--precisions", type=choice_list(PRECISIONS), default=list(PRECISIONS), help="of fp32, bf16, fp16 (default: all)")
    parser.add_argument("--variants", type=choice_list(VARIANTS), default=list(VARIANTS), help=f"of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument(
        "--compile-mode", choices=("default", "max-autotune-no-cudagraphs"), default="default", help="torch.compile's mode (default: %(default)s)"
    )
    parser.add_argument("--compile-on-cpu", action="store_true", help="also compile on the CPU (each compilation takes minutes there)")
    parser.add_argument("--workers", type=int, default=1, help="the DataLoader recipe's workers (default: %(default)s)")
    parser.add_argument("--step-rows", action=argparse.BooleanOptionalAction, default=True, help="time the training-step rows (default: on)")
    parser.add_argument("--whole", action=argparse.BooleanOptionalAction, default=True, help="on CUDA, time whole vae-run processes (default: on)")
    parser.add_argument("--root", default=default_root(), help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    return parser.parse_args(argv)


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else the CPU; `cuda` must exist."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        from vae_runner.build import resolve_device

        return resolve_device("cuda")
    return torch.device("cpu")


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `vae-run` would compose with these overrides, validated."""
    from hydra import compose, initialize_config_dir

    from vae_runner.config import config_dir, register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


def load_workload(name: str, root: str, device: torch.device) -> Workload:
    """The model's config and its training images: MNIST's real ones for `mlp`, random ones of CIFAR-10's shape for `cifar_conv`."""
    from vae_runner.build import pixel_stats
    from vae_runner.data import load_dataset

    cfg = compose_config(MODELS[name])
    if cfg.dataset.name == "cifar10":
        torch.manual_seed(cfg.seed)
        images = torch.randint(0, 256, (CIFAR_TRAIN_IMAGES, 3, 32, 32), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 10, (CIFAR_TRAIN_IMAGES,), device=device)
        info = DatasetInfo("cifar10", channels=3, image_size=32, num_classes=10, class_names=[str(c) for c in range(10)])
        return Workload(name, cfg, info, (0.5, 0.25), Split(images, labels))
    data = load_dataset(cfg.dataset.name, root=root)
    return Workload(name, cfg, data.info, pixel_stats(data.train), data.train)


def fresh_model(w: Workload, device: torch.device, capturable: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A newly initialised model (the same weights every call) and its optimizer; `capturable` for CUDA graph capture."""
    from omegaconf import OmegaConf

    from vae_runner.build import build_model, make_optimizer

    torch.manual_seed(w.cfg.seed)
    model = build_model(w.cfg.model, w.info, w.stats).to(device)
    optim_cfg = OmegaConf.create({**OmegaConf.to_container(w.cfg.optim), "capturable": True}) if capturable else w.cfg.optim
    return model, make_optimizer(optim_cfg, model.parameters())


def full_batches(epoch: Callable[[int], Iterable[Batch]], size: int) -> Iterator[Batch]:
    """Batches of exactly `size` images, epoch after epoch: graphs and compiled code want one shape."""
    for n in itertools.count(1):
        for x, y in epoch(n):
            if x.shape[0] == size:
                yield x, y


def sync(device: torch.device) -> None:
    """Wait for queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Step, batches: Iterator[Batch], batch: int, warmup: int, steps: int, device: torch.device) -> float:
    """Images per second over `steps` steps after `warmup` untimed ones: CUDA events on the GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        return steps * batch / (time.perf_counter() - start)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(steps):
        step(*next(batches))
    end.record()
    end.synchronize()
    return steps * batch / (begin.elapsed_time(end) / 1000)


def eager_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, objective: Objective, amp_dtype: Optional[torch.dtype]
) -> tuple[Step, Callable[[], int]]:
    """`train_step` as `vae-run` calls it, and a count of the steps it skipped as non-finite."""
    from vae_runner.train import train_step

    skipped = 0

    def step(x: Tensor, y: Optional[Tensor]) -> None:
        nonlocal skipped
        skipped += train_step(model, optimizer, scaler, x, y, objective=objective, amp_dtype=amp_dtype) is None

    return step, lambda: skipped


class GraphStep:
    """A whole training step captured as one CUDA graph on static inputs; each call copies a batch in and replays it.

    The step is train_step's (forward under autocast, the objective in fp32, scaled backward,
    unscale, gradient norm, optimizer step, scaler update) without its per-step finite check:
    the graph adds each non-finite step to a counter on the device, read every CHECK_EVERY calls.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        objective: Objective,
        amp_dtype: Optional[torch.dtype],
        x: Tensor,
        y: Optional[Tensor],
    ):
        self.model, self.optimizer, self.scaler, self.objective, self.amp_dtype = model, optimizer, scaler, objective, amp_dtype
        self.x, self.y = x.clone(), None if y is None or not model.num_classes else y.clone()
        self.bad = torch.zeros((), dtype=torch.int32, device=x.device)
        self.calls, self.nonfinite = 0, 0
        self.graph = self._capture()

    def _body(self) -> None:
        """The captured work; every tensor it reads or writes outlives the capture."""
        from vae_runner.objective import objective_terms

        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(self.x, self.y, samples=self.objective.samples)
        terms = objective_terms(self.x, out, self.model.likelihood, self.objective)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.scaler.step(self.optimizer)  # fused Adam skips an fp16 step with an overflow on the device, no host sync
        self.scaler.update()
        self.bad.add_((~(torch.isfinite(terms["loss"]) & torch.isfinite(grad_norm))).int())

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (lazy state, autotuning, compilation), then capture one step (PyTorch's whole-network pattern)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients from the graph's pool
        with torch.cuda.graph(graph):
            self._body()
        return graph

    def __call__(self, x: Tensor, y: Optional[Tensor]) -> None:
        """Copy the batch into the static inputs and replay; every CHECK_EVERY calls, read the count, as a training loop would (its sync is timed)."""
        self.x.copy_(x, non_blocking=True)
        if self.y is not None:
            self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        self.calls += 1
        if self.calls % CHECK_EVERY == 0:
            self.nonfinite = int(self.bad.item())

    def count(self) -> int:
        """The non-finite steps so far (a host sync)."""
        self.nonfinite = int(self.bad.item())
        return self.nonfinite


def skip_reason(device: torch.device, precision: str, variant: str, compile_on_cpu: bool) -> Optional[str]:
    """Why a variant is not run on this device, or None."""
    if device.type == "cuda":
        return None
    if precision == "fp16":
        return "skipped: no fp16 on the CPU"
    if "graph" in variant:
        return "skipped: CUDA graphs need CUDA"
    if "compiled" in variant and not compile_on_cpu:
        return "skipped on the CPU: see --compile-on-cpu"
    return None


def measure_variant(w: Workload, batch: int, precision: str, variant: str, args: argparse.Namespace, device: torch.device) -> Row:
    """Time one variant on a fresh model; the row's note counts non-finite steps."""
    from vae_runner.build import AMP_DTYPES, make_objective, resolve_precision
    from vae_runner.data import make_batches

    resolve_precision(precision, device)  # refuses bf16 on a GPU without it
    amp_dtype = AMP_DTYPES[precision]
    model, optimizer = fresh_model(w, device, capturable="graph" in variant)
    if "compiled" in variant:
        model = torch.compile(model, mode=args.compile_mode, dynamic=False)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    objective = make_objective(w.cfg.model, len(w.train))
    batches = full_batches(make_batches(w.train, batch, device, shuffle=True, seed=w.cfg.seed).epoch, batch)
    if "graph" in variant:
        step = GraphStep(model, optimizer, scaler, objective, amp_dtype, *next(batches))
        nonfinite = step.count
    else:
        step, nonfinite = eager_step(model, optimizer, scaler, objective, amp_dtype)
    rate = images_per_s(step, batches, batch, args.warmup, args.steps, device)
    bad = nonfinite()
    return Row(w.name, batch, precision, variant, rate, f"{bad} non-finite step(s)" if bad else "")


def recipe_row(w: Workload, batch: int, args: argparse.Namespace, device: torch.device) -> Row:
    """The conventional recipe: torchvision's MNIST through a shuffling DataLoader into the same model and `train_step`, fp32."""
    import torchvision
    from torch.utils.data import DataLoader

    from vae_runner.build import make_objective

    dataset = torchvision.datasets.MNIST(args.root, train=True, transform=torchvision.transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda")
    model, optimizer = fresh_model(w, device)
    step, skipped = eager_step(model, optimizer, torch.amp.GradScaler(device.type, enabled=False), make_objective(w.cfg.model, len(dataset)), None)

    def on_device(_: int) -> Iterator[Batch]:
        return ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)

    rate = images_per_s(step, full_batches(on_device, batch), batch, args.warmup, args.steps, device)
    return Row(w.name, batch, "fp32", RECIPE, rate, f"{args.workers} worker(s)" + (f", {skipped()} non-finite step(s)" if skipped() else ""))


def guarded(model: str, batch: int, precision: str, variant: str, measure: Callable[[], Row]) -> Row:
    """`measure()`, or a row holding the first line of whatever it raised."""
    try:
        return measure()
    except Exception as err:  # a benchmark reports a failing variant and goes on
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return Row(model, batch, precision, variant, None, f"failed: {type(err).__name__}: {first}")


def free_device_memory(device: torch.device) -> None:
    """Give cached blocks (and dead graphs' pools) back, so later rows and processes start alike."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_rows(args: argparse.Namespace, device: torch.device, say: Callable[[Row], None]) -> list[Row]:
    """Every (model, batch, precision, variant) row, and the DataLoader recipe's rows for `mlp`."""
    rows = []
    for name in args.models:
        w = load_workload(name, args.root, device)
        for batch, precision in itertools.product(args.batches, args.precisions):
            if any("compiled" in v for v in args.variants) and (device.type == "cuda" or args.compile_on_cpu):
                torch._dynamo.reset()  # one shape and precision per compilation: no recompile limit, no dynamic shapes
            for variant in args.variants:
                reason = skip_reason(device, precision, variant, args.compile_on_cpu)
                row = Row(name, batch, precision, variant, None, reason) if reason else guarded(
                    name, batch, precision, variant, lambda: measure_variant(w, batch, precision, variant, args, device)
                )
                rows.append(row)
                say(row)
                free_device_memory(device)
        if name == "mlp":
            for batch in args.batches:
                rows.append(guarded(name, batch, "fp32", RECIPE, lambda: recipe_row(w, batch, args, device)))
                say(rows[-1])
    return rows


def ratio_to_eager(rows: list[Row], row: Row) -> Optional[float]:
    """The row's images/s over eager fp32's for the same model and batch."""
    base = next((r for r in rows if (r.model, r.batch, r.precision, r.variant) == (row.model, row.batch, "fp32", "eager")), None)
    if base is None or base.images_per_s is None or row.images_per_s is None:
        return None
    return row.images_per_s / base.images_per_s


def vae_run_command() -> list[str]:
    """`vae-run` next to this Python (a venv's), else on PATH, else this Python running the CLI module (an install with no scripts)."""
    beside = Path(sys.executable).parent / "vae-run"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vae-run")
    return [found] if found else [sys.executable, "-m", "vae_runner.cli"]


def timed_vae_run(name: str, overrides: list[str], out: Path) -> Process:
    """Run `vae-run` with these overrides from launch to exit; its wall time and the mean metrics of the runs it wrote under `out`."""
    cmd = [*vae_run_command(), *overrides]
    shown = " ".join(["vae-run", *overrides])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Process(name, shown, note=f"failed: still running after {PROCESS_TIMEOUT_S} s")
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        last = ([line for line in proc.stderr.splitlines() if line.strip()] or ["no error output"])[-1]
        return Process(name, shown, note=f"failed (exit {proc.returncode}): {last.strip()}")
    metrics = [json.loads(p.read_text()) for p in sorted(out.rglob("metrics.json"))]
    return Process(name, shown, wall_s, len(metrics), mean_metric(metrics, "train/images_per_s"), mean_metric(metrics, "test/nll"))


def mean_metric(metrics: list[dict[str, Any]], key: str) -> Optional[float]:
    """The mean of one key over the runs' metrics, or None when a run lacks it."""
    return statistics.fmean(m[key] for m in metrics) if metrics and all(key in m for m in metrics) else None


def process_rows(root: str, say: Callable[[Process], None]) -> list[Process]:
    """The default 10-epoch run, and the beta sweep with the basic launcher and with the stacked one."""
    data = f"dataset.root={Path(root).resolve()}"
    plans = [
        ("default run, 10 epochs", ["train.epochs=10", data], "run", "hydra.run.dir"),
        (f"beta sweep {BETAS}, basic launcher", ["-m", f"model.beta={BETAS}", data], "sweep", "hydra.sweep.dir"),
        (f"beta sweep {BETAS}, stacked launcher", ["-m", "hydra/launcher=stacked", f"model.beta={BETAS}", data], "sweep", "hydra.sweep.dir"),
    ]
    done = []
    for name, overrides, folder, key in plans:
        with tempfile.TemporaryDirectory(prefix="vae-gpu-bench-") as tmp:
            out = Path(tmp) / folder
            done.append(timed_vae_run(name, [*overrides, f"{key}={out}"], out))
        say(done[-1])
    return done


def number(value: Optional[float], spec: str) -> str:
    """A formatted number, or a dash."""
    return "-" if value is None else format(value, spec)


def step_table(rows: list[Row], model: str, title: str) -> Any:
    """One model's rows: images/s and the ratio to eager fp32 at the same batch."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, right in (("batch", True), ("precision", False), ("variant", False), ("images/s", True), ("x eager fp32", True), ("note", False)):
        table.add_column(name, justify="right" if right else "left")
    for r in (r for r in rows if r.model == model):
        ratio = ratio_to_eager(rows, r)
        table.add_row(str(r.batch), r.precision, r.variant, number(r.images_per_s, ",.0f"), number(ratio, ".2f") + "x" * (ratio is not None), r.note)
    return table


def process_table(processes: list[Process]) -> Any:
    """Whole processes: wall time and what their metrics.json reported."""
    from rich.table import Table

    table = Table(title="whole vae-run processes, launch to exit (sweeps: metrics are means over the runs)", title_justify="left")
    for name, right in (("process", False), ("wall s", True), ("runs", True), ("train/images_per_s", True), ("test/nll", True), ("note", False)):
        table.add_column(name, justify="right" if right else "left")
    for p in processes:
        table.add_row(p.name, number(p.wall_s, ".1f"), str(p.runs), number(p.images_per_s, ",.0f"), number(p.test_nll, ".2f"), p.note)
    return table


def verdicts(rows: list[Row], processes: list[Process]) -> list[str]:
    """Where the measurements stand against the targets (text only: a benchmark never fails on a timing)."""
    lines = []
    best = max((r for r in rows if r.model == "mlp" and r.batch == 128 and r.images_per_s), key=lambda r: r.images_per_s, default=None)
    if best is not None:
        met = "met" if best.images_per_s >= TARGET_IMAGES_PER_S else "not met"
        lines.append(f"mlp at batch 128, fastest: {best.images_per_s:,.0f} images/s ({best.precision} {best.variant}): {met}")
    default_run = next((p for p in processes if p.name.startswith("default run") and p.wall_s is not None), None)
    if default_run is not None:
        lines.append(f"default 10-epoch run: {default_run.wall_s:.1f} s wall: {'met' if default_run.wall_s < TARGET_WALL_S else 'not met'}")
    basic, stacked = (next((p for p in processes if p.name.endswith(f"{kind} launcher") and p.wall_s), None) for kind in ("basic", "stacked"))
    if basic is not None and stacked is not None:
        lines.append(f"beta sweep: stacked launcher {basic.wall_s / stacked.wall_s:.2f}x faster than the basic one, wall")
    return lines


def device_name(device: torch.device) -> str:
    """The GPU's name, or `cpu (N threads)`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def row_line(r: Row) -> str:
    """A progress line for a finished row."""
    return f"  {r.model} batch {r.batch} {r.precision} {r.variant}: {number(r.images_per_s, ',.0f')} images/s {r.note}"


def process_line(p: Process) -> str:
    """A progress line for a finished process."""
    return f"  {p.name}: {number(p.wall_s, '.1f')} s wall {p.note}"


def write_report(rows: list[Row], processes: list[Process], args: argparse.Namespace, device: torch.device, console: Any) -> None:
    """A table per model, the processes' table, the targets and where the numbers stand against them."""
    for model in args.models if rows else []:
        console.print(step_table(rows, model, f"{model}: training-step throughput on {device_name(device)}"))
    if processes:
        console.print(process_table(processes))
    elif device.type != "cuda":
        console.print("whole-process rows: CUDA only (for the CPU, see benchmarks/throughput.py)", highlight=False)
    console.print(TARGETS, highlight=False)
    for line in verdicts(rows, processes) if device.type == "cuda" else ["(no verdict on the CPU: the targets are for one H100)"]:
        console.print(line, highlight=False)


def summary(rows: list[Row], processes: list[Process], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every number, with the settings they were taken under."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "device": device_name(device), "torch": torch.__version__, "settings": settings, "targets": TARGETS,
        "rows": [{**asdict(r), "ratio_to_eager_fp32": ratio_to_eager(rows, r)} for r in rows],
        "processes": [asdict(p) for p in processes],
    }


def main(argv: Optional[list[str]] = None) -> int:
    """Time every row (and the whole processes on CUDA), print the tables and targets, optionally save every number."""
    from rich.console import Console

    from vae_runner.atomic import write_json
    from vae_runner.errors import UserError

    args = parse_args(argv)
    console = Console()
    if "mlp" in args.models and args.step_rows and not (Path(args.root) / "MNIST" / "raw").is_dir():
        print(f"error: --root {args.root} holds no MNIST/raw/ folder; point --root at the folder that holds MNIST/raw/.", file=sys.stderr)
        return 2
    try:
        device = pick_device(args.device)
        console.print(f"device: {device_name(device)}; torch {torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps per row", highlight=False)
        rows = step_rows(args, device, lambda r: console.print(row_line(r), highlight=False)) if args.step_rows else []
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    processes: list[Process] = []
    if device.type == "cuda" and args.whole:
        free_device_memory(device)
        processes = process_rows(args.root, lambda p: console.print(process_line(p), highlight=False))
    write_report(rows, processes, args, device, console)
    if args.json is not None:
        write_json(args.json, summary(rows, processes, args, device))
        console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
