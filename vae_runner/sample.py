"""`vae-sample`: decode draws from a trained run's prior into one PNG grid."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from vae_runner.errors import UserError
from vae_runner.run_dir import RunDir

if TYPE_CHECKING:  # torch loads after the arguments are checked: a typo is answered at once
    from torch import Tensor

    from vae_runner.api import LoadedRun

MAX_IMAGES = 4096  # a 64 x 64 grid; more is no longer a picture
MAX_TEMPERATURE = 100.0  # z = 100 sigma is far past anything the decoder saw; much further overflows float32
MAX_SEED = 2**32 - 1  # config.MAX_SEED, not imported: the arguments are checked before Hydra or torch load
KEYS = ("n", "class", "temperature", "seed", "out", "device")

USAGE = """usage: vae-sample RUN_DIR [n=64] [class=K] [temperature=1.0] [seed=0] [out=samples.png] [device=auto]

Decode n latents drawn from the run's prior with the seed (the normal prior: z ~ N(0, temperature^2 I);
a mixture prior: a component by its weight, its standard deviation times temperature), through the decoder of
RUN_DIR/checkpoints/last.pt and write the mean images (a Bernoulli decoder's
probabilities) as one PNG grid, ceil(sqrt(n)) to a row.
A CVAE: class=K draws n images of class K; without class=, one row per class,
ceil(sqrt(n)) images each (10 rows of 8 for the default n=64), the same z down each column.
  n            images, 1 to 4096                    (64)
  class        a CVAE's class, 0 to classes - 1     (every class, a row each)
  temperature  scale of z's standard deviation, > 0 (1.0: the prior itself)
  seed         0 to 2**32 - 1; the same seed gives the same file
  out          the PNG file, in an existing folder  (samples.png)
  device       auto, cpu, cuda, cuda:N, mps         (auto: CUDA, then MPS, then the CPU)
  vae-sample outputs/runs/<run>
  vae-sample outputs/runs/<run> n=16 temperature=0.7 seed=3 out=figure.png"""


@dataclass
class SampleArgs:
    """What to draw, from which run, and where the PNG goes."""

    run_dir: Path
    n: int = 64
    label: Optional[int] = None  # `class=`
    temperature: float = 1.0
    seed: int = 0
    out: Path = Path("samples.png")
    device: str = "auto"


def parse_args(argv: list[str]) -> SampleArgs:
    """RUN_DIR, then key=value pairs, each checked; a bad one is one sentence naming it."""
    run_dir, *pairs = argv
    if "=" in run_dir and not Path(run_dir).exists():
        raise UserError(f"vae-sample needs the run directory first (vae-sample RUN_DIR key=value ...), got {run_dir}.")
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{pair} is not key=value; vae-sample takes {', '.join(f'{k}=' for k in KEYS)} (vae-sample --help).")
        if key not in KEYS:
            raise UserError(f"{key} is not a vae-sample key; use one of {', '.join(KEYS)} (vae-sample --help).")
        if key in values:
            raise UserError(f"{key} is given twice ({key}={values[key]} and {pair}); pass it once.")
        values[key] = value
    args = SampleArgs(Path(run_dir))
    if "n" in values:
        args.n = _whole("n", values["n"], 1, MAX_IMAGES, f"use 1 to {MAX_IMAGES} images, e.g. n=64")
    if "class" in values:
        args.label = _whole("class", values["class"], 0, None, "use a class index from 0, e.g. class=3")
    if "temperature" in values:
        args.temperature = _temperature(values["temperature"])
    if "seed" in values:
        args.seed = _whole("seed", values["seed"], 0, MAX_SEED, f"use an integer from 0 to 2**32 - 1 ({MAX_SEED})")
    if "out" in values:
        args.out = Path(values["out"]).expanduser()
    args.device = values.get("device", args.device)
    return args


def _whole(key: str, value: str, low: int, high: Optional[int], rule: str) -> int:
    """A whole number in low..high (no upper bound when None); `rule` says what to pass instead."""
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{key}={value} is not a whole number; {rule}.") from None
    if number < low or (high is not None and number > high):
        raise UserError(f"{key}={value} is out of range; {rule}.")
    return number


def _temperature(value: str) -> float:
    """A positive, finite scale of z's standard deviation."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= MAX_TEMPERATURE):
        raise UserError(
            f"temperature={value} must be a positive number up to {MAX_TEMPERATURE:g} (1.0 samples the prior itself; 0.7 draws nearer its mean)."
        )
    return number


def check_out(out: Path) -> None:
    """The PNG can be written: a .png name, not a folder, in an existing folder this user may write to."""
    folder = out.absolute().parent
    if out.is_dir():
        raise UserError(f"out={out} is a folder; name a file in it, e.g. out={out / 'samples.png'}.")
    if out.is_symlink() or (out.exists() and not out.is_file()):  # a rename would replace the link or device itself
        raise UserError(f"out={out} exists and is not a regular file (a link or a device); name a new or regular file.")
    if out.suffix.lower() != ".png":
        raise UserError(f"out={out} must name a .png file, e.g. out={out.with_suffix('.png').name}.")
    if not folder.is_dir():
        raise UserError(f"out={out}: the folder {folder} does not exist; create it or choose another out=.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"out={out}: the folder {folder} is not writable; choose another out=.")


def check_paths(args: SampleArgs) -> None:
    """The run directory holds a checkpoint and the PNG can be written: checked before torch loads, so a typo is answered at once."""
    run = RunDir(args.run_dir)
    if not run.checkpoint.is_file() or not run.config.is_file():
        raise UserError(
            f"{args.run_dir} is not a vae-run run directory with a checkpoint (it needs .hydra/config.yaml and checkpoints/last.pt); "
            f"pass a folder under outputs/runs/ or outputs/sweeps/<time>/."
        )
    check_out(args.out)


def check_class(run: LoadedRun, label: Optional[int]) -> None:
    """`class=` only for a CVAE, and one of its classes."""
    if label is None:
        return
    if not run.num_classes:
        raise UserError(f"class={label} needs a conditional model, but {run.run_dir} holds model={run.config.model.name}, which is not; drop class=.")
    if label >= run.num_classes:
        raise UserError(f"class={label} is out of range: this run's CVAE has {run.num_classes} classes; use class=0 to class={run.num_classes - 1}.")


def draw(run: LoadedRun, args: SampleArgs) -> tuple[Tensor, int, str]:
    """The images, how many to a row, and a phrase saying what they are.

    A CVAE without `class=` gets one row per class from the same ceil(sqrt(n))
    latents, so each column shows one z under every label.
    """
    import torch

    from vae_runner.api import draw_latents

    per_row = math.ceil(math.sqrt(args.n))
    if run.num_classes and args.label is None:
        z = draw_latents(per_row, run.prior, args.temperature, args.seed)  # (per_row, D)
        labels = torch.arange(run.num_classes).repeat_interleave(per_row)  # row k is class k
        images = run.decode(z.repeat(run.num_classes, 1), labels)  # (K * per_row, C, H, W)
        return images, per_row, f"{run.num_classes} rows (classes 0 to {run.num_classes - 1}) of {per_row}, the same z down each column"
    z = draw_latents(args.n, run.prior, args.temperature, args.seed)
    images = run.decode(z, args.label)
    what = f"{args.n} sample{'s' if args.n > 1 else ''}" + ("" if args.label is None else f" of class {args.label}{_named(run, args.label)}")
    return images, per_row, f"{what}, {per_row} to a row"


def _named(run: LoadedRun, label: int) -> str:
    """` (Sneaker)` when the run knows its class names."""
    names = run.class_names or []
    return f" ({names[label]})" if label < len(names) else ""


def write_png(grid: Tensor, out: Path, grey: bool) -> None:
    """A (3, H, W) grid in [0, 1] as an 8-bit PNG (greyscale for grey images), written whole or not at all."""
    from vae_runner import tracking

    pixels = tracking.image_bytes(grid)  # (H, W, 3)
    tracking.write_png(out, pixels[..., 0] if grey else pixels, elsewhere="file (out=...)")


def sample(args: SampleArgs) -> str:
    """Load the run, draw, write the PNG; returns the line that says what went where."""
    check_paths(args)
    from vae_runner.api import load_run  # torch, after the cheap checks
    from vae_runner.tracking import image_grid

    loaded = load_run(args.run_dir, args.device)
    check_class(loaded, args.label)
    images, per_row, what = draw(loaded, args)
    write_png(image_grid(images, per_row), args.out, grey=loaded.model.in_channels == 1)
    return f"wrote {args.out.absolute()}: {what} (temperature {args.temperature:g}, seed {args.seed}, step {loaded.step} of {loaded.run_dir})"


def main(argv: Optional[list[str]] = None) -> None:
    """`vae-sample` entry point."""
    from vae_runner.cli import EXIT_USER_ERROR, fail

    from vae_runner.progress import safe_streams

    argv = sys.argv[1:] if argv is None else argv
    safe_streams()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else EXIT_USER_ERROR)
    try:
        args = parse_args(argv)
        check_paths(args)  # before torch loads: a typo is answered at once
    except UserError as err:
        fail(str(err))
    from vae_runner.train import Interrupted, StopSignals

    try:
        with StopSignals(at_once="during vae-sample; no PNG was written (an earlier one at out= is unchanged)."):
            print(sample(args))
    except UserError as err:
        fail(str(err))
    except Interrupted as stop:  # SIGINT, SIGTERM, SIGHUP: the temporary file is gone, the exit status says which
        fail(str(stop), stop.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; no PNG was written (an earlier one at out= is unchanged).", 130)


if __name__ == "__main__":
    main()
