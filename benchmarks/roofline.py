"""How close a training step comes to this CPU's own fp32 GEMM rate, at batch 128 and 512.

The model is the default `vae-run` model (configs/config.yaml composed with Hydra,
built by `vae_runner.build.build_model`, Adam from `make_optimizer`): an MLP VAE
784-512-20 with a Bernoulli likelihood. One training step is
`vae_runner.train.train_step` on a batch of binarised random (B, 1, 28, 28) images:
its cost depends on the batch's shape, not on the pixel values, so no data is loaded.

FLOPs are counted from the model's nn.Linear layers, as 2·m·k·n per (m, k) x (k, n)
product (a multiply and an add; bias adds, activations, the loss and Adam are not
counted). A Linear that sees `rows` = B·S rows (S = 1 sample for the decoder) costs
2·rows·in·out forward; backward is twice that (the input's gradient and the weight's),
except for the encoder's first layer, whose input (the images) needs no gradient: the
weight's only, once the forward. Conv layers are not counted; the default model has none.

The reference is the GEMM rate at the step's own shapes: the same products (forward
`addmm` with the transposed weight, `mm` for the input's gradient, `mm` with the
transposed output gradient for the weight's), with the same shapes and strides, run in
the step's order on their own operands (checked against the products one real step
calls). The step reaches a fraction of that rate (the headline), and of a large square
GEMM's rate (the CPU's practical peak). The profiler's share of the step's self CPU time
in aten::mm, aten::addmm and aten::bmm says where the rest goes.

Timings are CPU time (time.process_time; wall time alongside) with --threads torch
threads. The step and its GEMMs are timed in alternating blocks of --block repetitions
(the order flipped every round), and the square GEMM once a round, so a burst of load
from another process lands on all of them alike; each figure is the median block. It
measures and prints; it never fails on a timing.

    .venv/bin/python benchmarks/roofline.py --json roofline.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
Layout = tuple[tuple[int, ...], tuple[int, ...]]  # (shape, strides) of one operand


@dataclass(frozen=True)
class Layer:
    """A Linear as one forward pass used it: how many rows it saw, its widths, and whether its input needs a gradient."""

    name: str
    rows: int
    d_in: int
    d_out: int
    input_grad: bool


@dataclass(frozen=True)
class Gemm:
    """One matrix product of the step: its layer, its role, the aten op and its operands' layouts."""

    layer: str
    role: str  # forward, grad input, grad weight
    op: str  # addmm or mm
    operands: tuple[Layout, ...]

    @property
    def flops(self) -> int:
        """2·m·k·n for the (m, k) x (k, n) product."""
        (m, k), (_, n) = self.operands[-2][0], self.operands[-1][0]
        return 2 * m * k * n


@dataclass
class Timing:
    """Median per-repetition seconds of one thing timed in blocks: CPU and wall."""

    cpu_s: float
    wall_s: float


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def batch_sizes(text: str) -> list[int]:
    """`128,512` as [128, 512]; each a positive whole number."""
    parts = text.split(",")
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive batch sizes, e.g. 128,512")
    return sorted({int(p) for p in parts})


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=batch_sizes, default=[128, 512], help="batch sizes, comma-separated (default: 128,512)")
    parser.add_argument("--steps", type=positive, default=200, help="timed training steps per batch size (default: %(default)s)")
    parser.add_argument("--block", type=positive, default=20, help="repetitions per timed block (default: %(default)s)")
    parser.add_argument("--warmup", type=positive, default=20, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--square", type=positive, default=1024, help="size n of the n x n x n reference GEMM (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=1, help="torch's CPU threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    return parser.parse_args(argv)


def compose_config(batch_size: int) -> DictConfig:
    """The config `vae-run train.batch_size=<batch_size> device=cpu` composes, validated."""
    from hydra import compose, initialize_config_dir

    from vae_runner.config import config_dir, register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"train.batch_size={batch_size}", "device=cpu"])
    validate(cfg)
    return cfg


def fresh_model(cfg: DictConfig) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The default model for MNIST (the same weights every call), its optimizer and a disabled scaler (fp32)."""
    from vae_runner.build import build_model, make_optimizer
    from vae_runner.data import DatasetInfo

    if cfg.dataset.name != "mnist":
        raise SystemExit(f"error: this benchmark times MNIST's model, but the config's dataset.name is {cfg.dataset.name}.")
    info = DatasetInfo("mnist", channels=1, image_size=28, num_classes=10, class_names=[str(c) for c in range(10)])
    torch.manual_seed(cfg.seed)
    # vae-run passes the pixels' mean and std; they only start a learned likelihood scale, which a Bernoulli has not.
    model = build_model(cfg.model, info, (0.5, 0.25))
    return model, make_optimizer(cfg.optim, model.parameters()), torch.amp.GradScaler("cpu", enabled=False)


def binary_batch(batch_size: int) -> Tensor:
    """(B, 1, 28, 28) pixels of 0 or 1, as binarised MNIST reaches the step."""
    return torch.bernoulli(torch.full((batch_size, 1, 28, 28), 0.5))


def linear_layers(model: nn.Module, step: Callable[[], Any]) -> list[Layer]:
    """The Linear layers in the order one step's forward pass calls them, with the rows each saw."""
    names = {module: name for name, module in model.named_modules()}
    seen: list[Layer] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        x = inputs[0]
        seen.append(Layer(names[module], x.numel() // module.in_features, module.in_features, module.out_features, x.requires_grad))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def step_gemms(layers: list[Layer]) -> list[Gemm]:
    """The products nn.Linear's forward and backward run for these layers, in the step's order, with their layouts."""

    def dense(rows: int, cols: int) -> Layout:
        return (rows, cols), (cols, 1)

    def transposed(rows: int, cols: int) -> Layout:  # the .t() view of a dense (cols, rows) tensor
        return (rows, cols), (1, rows)

    # y = addmm(b, x, W.t()): x (rows, in) @ W.t() (in, out)
    forward = [Gemm(ly.name, "forward", "addmm", (((ly.d_out,), (1,)), dense(ly.rows, ly.d_in), transposed(ly.d_in, ly.d_out))) for ly in layers]
    backward = []
    for ly in reversed(layers):
        if ly.input_grad:  # dL/dx = dL/dy (rows, out) @ W (out, in)
            backward.append(Gemm(ly.name, "grad input", "mm", (dense(ly.rows, ly.d_out), dense(ly.d_out, ly.d_in))))
        # dL/dW = dL/dy.t() (out, rows) @ x (rows, in)
        backward.append(Gemm(ly.name, "grad weight", "mm", (transposed(ly.d_out, ly.rows), dense(ly.rows, ly.d_in))))
    return forward + backward


class RecordGemms(TorchDispatchMode):
    """Note the layouts of every aten mm, addmm and bmm call run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Layout, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        op = func.overloadpacket.__name__
        if op in ("mm", "addmm", "bmm"):
            self.calls.append((op, tuple((tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, Tensor))))
        return func(*args, **(kwargs or {}))


def called_gemms(step: Callable[[], Any]) -> list[tuple[str, tuple[Layout, ...]]]:
    """The (op, operand layouts) of every matrix product one real step calls, in order."""
    with RecordGemms() as recorder:
        step()
    return recorder.calls


def strided(layout: Layout) -> Tensor:
    """A tensor of standard-normal values with exactly this shape and these strides."""
    shape, strides = layout
    return torch.empty_strided(shape, strides).normal_()


def gemm_pass(gemms: list[Gemm]) -> Callable[[], None]:
    """Run every product once, in order, each on its own operands (as each layer has its own weights and activations)."""
    calls = [(torch.addmm if g.op == "addmm" else torch.mm, [strided(o) for o in g.operands]) for g in gemms]

    def run() -> None:
        for fn, operands in calls:
            fn(*operands)

    return run


def square_gemm(n: int) -> Callable[[], None]:
    """One dense n x n by n x n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.mm(a, b)


def time_block(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """CPU and wall seconds per call of `fn`, over `reps` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.process_time() - cpu) / reps, (time.perf_counter() - wall) / reps


def median_timing(blocks: list[tuple[float, float]]) -> Timing:
    """The median block's CPU and wall seconds (each taken on its own)."""
    return Timing(statistics.median(b[0] for b in blocks), statistics.median(b[1] for b in blocks))


def matmul_share(step: Callable[[], Any], reps: int) -> float:
    """The share of the step's self CPU time (torch.profiler, over `reps` steps) spent in aten::mm, addmm and bmm."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / max(total, 1e-9)


@dataclass
class Workload:
    """One batch size: its step, its GEMMs and the blocks timed so far."""

    batch_size: int
    step: Callable[[], Any]
    gemms: list[Gemm]
    matches_step: bool  # the layer-derived products are exactly those one real step calls
    gemm_pass: Callable[[], None]
    step_blocks: list[tuple[float, float]]
    gemm_blocks: list[tuple[float, float]]
    matmul_share: float = float("nan")

    @property
    def flops(self) -> int:
        """The step's FLOPs: its Linear layers' products."""
        return sum(g.flops for g in self.gemms)


def prepare(batch_size: int, warmup: int) -> Workload:
    """Build the model, find its layers and the GEMMs one step calls, and warm the step and the GEMMs up."""
    from vae_runner.train import train_step

    model, optimizer, scaler = fresh_model(compose_config(batch_size))
    x = binary_batch(batch_size)

    def step() -> None:
        train_step(model, optimizer, scaler, x, None)

    layers = linear_layers(model, step)
    gemms = step_gemms(layers)
    called = called_gemms(step)
    run = gemm_pass(gemms)
    for _ in range(warmup):
        step()
        run()
    return Workload(batch_size, step, gemms, called == [(g.op, g.operands) for g in gemms], run, [], [])


def measure(args: argparse.Namespace) -> tuple[list[Workload], Timing]:
    """Time every batch size's step and GEMMs, and the square GEMM, in alternating blocks; the workloads and the square's timing."""
    torch.set_num_threads(args.threads)
    workloads = [prepare(b, args.warmup) for b in args.batches]
    square, square_blocks = square_gemm(args.square), []
    square()
    for round_ in range((args.steps + args.block - 1) // args.block):
        for w in workloads:
            order = [(w.step, w.step_blocks), (w.gemm_pass, w.gemm_blocks)]
            for fn, blocks in order if round_ % 2 == 0 else order[::-1]:
                blocks.append(time_block(fn, args.block))
        square_blocks.append(time_block(square, 2))
    for w in workloads:  # after the timings: the profiler slows what it watches
        w.matmul_share = matmul_share(w.step, args.block)
    return workloads, median_timing(square_blocks)


def summarize(w: Workload, peak_flops_s: float) -> dict[str, Any]:
    """One batch size's numbers: the step's and its GEMMs' times and rates, the fractions, the profiler's matmul share."""
    step, gemm = median_timing(w.step_blocks), median_timing(w.gemm_blocks)
    step_rate, gemm_rate = w.flops / step.cpu_s, w.flops / gemm.cpu_s
    return {
        "batch_size": w.batch_size, "step_flops": w.flops, "gemms": len(w.gemms), "gemms_match_step": w.matches_step,
        "step_ms_cpu": 1e3 * step.cpu_s, "step_ms_wall": 1e3 * step.wall_s, "gemm_ms_cpu": 1e3 * gemm.cpu_s, "gemm_ms_wall": 1e3 * gemm.wall_s,
        "step_gflops": step_rate / 1e9, "gemm_gflops": gemm_rate / 1e9,
        # the step and the same GEMMs do the same FLOPs, so a rate's fraction is a time's inverse ratio
        "fraction_of_gemm": gemm.cpu_s / step.cpu_s, "fraction_of_gemm_wall": gemm.wall_s / step.wall_s,
        "fraction_of_peak": step_rate / peak_flops_s, "matmul_share": w.matmul_share,
        "step_blocks": w.step_blocks, "gemm_blocks": w.gemm_blocks, "products": [asdict(g) | {"flops": g.flops} for g in w.gemms],
    }


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's word for it."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def write_report(report: dict[str, Any]) -> None:
    """The table per batch size, the square GEMM's rate and the counting convention."""
    from rich.console import Console
    from rich.table import Table

    threads = report["threads"]
    table = Table(title=f"fp32 training step vs GEMM: the default MLP VAE, {threads} thread{'s' * (threads != 1)}", title_justify="left")
    for name in ("batch", "GFLOP/step", "step ms", "wall ms", "step GFLOP/s", "GEMM GFLOP/s", "of GEMM", "of peak", "matmul share"):
        table.add_column(name, justify="right")
    for r in report["batches"]:
        table.add_row(
            str(r["batch_size"]), f"{r['step_flops'] / 1e9:.3f}", f"{r['step_ms_cpu']:.2f}", f"{r['step_ms_wall']:.2f}", f"{r['step_gflops']:.1f}",
            f"{r['gemm_gflops']:.1f}", f"[bold]{r['fraction_of_gemm']:.0%}[/]", f"{r['fraction_of_peak']:.0%}", f"{r['matmul_share']:.0%}",
        )
    console = Console()
    if not console.is_terminal:  # piped or redirected: rich would squeeze the table into 80 columns
        console = Console(width=120)
    console.print(table)
    sq = report["square"]
    for line in (
        f"{report['cpu']}, torch {report['torch']}; medians of {report['blocks']} blocks of {report['block']} (CPU time unless 'wall').",
        "GEMM GFLOP/s: the step's own Linear products (shapes and strides) alone; of GEMM: the step's rate over it (the headline);",
        "of peak: over the square GEMM's rate; matmul share: aten::mm/addmm/bmm self CPU time over all ops' (torch.profiler).",
    ):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"square GEMM {sq['n']}x{sq['n']}x{sq['n']}: {sq['gflops']:.1f} GFLOP/s ({sq['ms_cpu']:.1f} ms CPU, {sq['ms_wall']:.1f} ms wall)", highlight=False, soft_wrap=True)
    for r in report["batches"]:
        check = "match" if r["gemms_match_step"] else "DO NOT match (the GEMM rate is of the layers' products, not the step's)"
        console.print(f"batch {r['batch_size']}: the {r['gemms']} layer-derived products {check} those one real step calls", highlight=False, soft_wrap=True)
    console.print(
        "FLOPs: 2·m·k·n per Linear product; forward 2·B·in·out, backward 2x forward (1x for the encoder's first layer); bias, activations, loss and Adam not counted.",
        highlight=False, soft_wrap=True,
    )


def main(argv: Optional[list[str]] = None) -> int:
    """Time the steps and GEMMs, print the table (and optionally save every number)."""
    args = parse_args(argv)
    workloads, square = measure(args)
    peak = 2 * args.square**3 / square.cpu_s
    report = {
        "cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads, "block": args.block,
        "blocks": len(workloads[0].step_blocks), "warmup": args.warmup,
        "square": {"n": args.square, "gflops": peak / 1e9, "ms_cpu": 1e3 * square.cpu_s, "ms_wall": 1e3 * square.wall_s},
        "batches": [summarize(w, peak) for w in workloads],
    }
    write_report(report)
    if args.json is not None:
        from vae_runner.atomic import write_json

        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
