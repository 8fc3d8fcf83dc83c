"""Progress a person can watch: a rich bar on a terminal, a plain log line every half minute elsewhere.

One `Meter` per phase of work (an epoch, the test NLL, decoding a folder). On a
terminal it draws a transient bar on the console that the log handler prints to,
so log lines scroll above the bar and nothing garbles. When stdout is not a
terminal (CI, SLURM logs, joblib workers) there is no bar: a phase longer than
`PLAIN_EVERY_SECONDS` logs `epoch 3/10: 1,200/4,220 steps (28%), 9,800 img/s,
loss 110.23, 2m10s left` at that cadence, and the caller logs the phase's end.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Optional

from rich import get_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)

PLAIN_EVERY_SECONDS = 30.0  # a plain progress line at most this often
DRAW_EVERY_SECONDS = 0.1  # the bar is redrawn at most this often (advance() stays cheap per step)

_job = ""  # "job 2/5" in a sweep, shown before each phase's description
_bars = True  # False in the jobs of a parallel launcher: their bars would fight over one terminal


def set_job(text: str, bars: bool = True) -> None:
    """Name the sweep job this process runs (`job 2/5`), shown before every phase; `bars=False` for jobs running side by side."""
    global _job, _bars
    _job, _bars = text, bars


def plus_minus() -> str:
    """`±` where stdout can print it, `+/-` on an ASCII terminal."""
    return "±" if "utf" in (getattr(sys.stdout, "encoding", "") or "").lower() else "+/-"


def safe_streams() -> None:
    """stdout and stderr replace the characters their encoding lacks (± on an ASCII locale) instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and "utf" not in (getattr(stream, "encoding", "") or "").lower():
            reconfigure(errors="replace")


def on_terminal() -> bool:
    """True when the log's console is an interactive terminal (not a pipe, a file or a dumb terminal)."""
    console = get_console()
    return console.is_terminal and not console.is_dumb_terminal


def duration(seconds: float) -> str:
    """`45s`, `2m10s`, `1h05m`: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Meter:
    """Progress of one phase: `advance()` it by steps (and the images they held); `note()` adds a running figure."""

    def __init__(self, description: str, total: int, unit: str = "steps", *, done: int = 0) -> None:
        self.description = f"{_job}  {description}" if _job else description
        self.total, self.unit, self.done, self.first = total, unit, done, done
        self.images, self.text = 0, ""
        self.started = self.drawn = self.said = time.monotonic()
        self.enabled = log.isEnabledFor(logging.INFO)  # the quiet ranks of a torchrun job stay quiet
        self.bar: Optional[Progress] = None
        if self.enabled and _bars and on_terminal():
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TextColumn(unit),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=get_console(), transient=True,
            )
            self.task = self.bar.add_task(self.description, total=total, completed=done, rate="", note="")
            self.bar.start()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def rate(self) -> str:
        """Images per second since the phase began, or empty before any."""
        elapsed = time.monotonic() - self.started
        return f"{self.images / elapsed:,.0f} img/s" if self.images and elapsed > 0 else ""

    def note(self, text: str) -> None:
        """A running figure shown beside the rate (e.g. `loss 110.23`)."""
        self.text = text

    def advance(self, steps: int = 1, images: int = 0) -> None:
        """Count work done; redraw or log only when it is time to."""
        self.done, self.images = self.done + steps, self.images + images
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None and now - self.drawn >= DRAW_EVERY_SECONDS:
            self.drawn = now
            self.bar.update(self.task, completed=self.done, rate=self.rate(), note=self.text)
        elif self.bar is None and now - self.said >= PLAIN_EVERY_SECONDS:
            self.said = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """The plain progress line: where the phase is, how fast, how long is left."""
        share = self.done / self.total if self.total else 1.0
        parts = [f"{self.description}: {self.done:,}/{self.total:,} {self.unit} ({share:.0%})", self.rate(), self.text]
        if self.done > self.first:
            parts.append(f"{duration((self.total - self.done) * (now - self.started) / (self.done - self.first))} left")
        return ", ".join(p for p in parts if p)

    def close(self) -> None:
        """Take the bar off the screen (the caller's own log line reports the phase's end)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
