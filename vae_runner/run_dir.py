"""The one place that names a run directory's files, and reads back the small ones (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_runner.errors import UserError


@dataclass(frozen=True)
class RunDir:
    """A run directory: what `vae-run` writes there, by name.

    ```
    <root>/.hydra/{config,hydra,overrides}.yaml   Hydra's records (config.yaml is the resolved config)
    <root>/vae-run.log                            the log, as plain text
    <root>/events.out.tfevents.*                  TensorBoard's event files, so the run shows under its folder's name
    <root>/pictures/*.png                         the pictures, as TensorBoard shows them
    <root>/checkpoints/last.pt                    model, optimizer, progress, RNG states, config
    <root>/environment.json, metrics.json         package versions; the final metrics
    <root>/.lock, .lock.pid                       held by the process using the directory
    ```
    """

    root: Path

    @property
    def config(self) -> Path:
        return self.root / ".hydra" / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.root / ".hydra" / "overrides.yaml"

    @property
    def log(self) -> Path:
        return self.root / "vae-run.log"

    @property
    def tensorboard(self) -> Path:
        """The run directory itself; a run started before 0.2 keeps its `tensorboard/` folder, so one run stays one curve."""
        legacy = self.root / "tensorboard"
        return legacy if legacy.is_dir() else self.root

    @property
    def pictures(self) -> Path:
        return self.root / "pictures"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def only_records(self) -> bool:
        """True when the directory holds nothing a run produced: Hydra's records, the log, the lock, at most an empty event file."""
        records = {".hydra", self.log.name, self.environment.name, self.lock.name, f"{self.lock.name}.pid"}
        names = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        kept = {n for n in names if n not in records and not n.startswith("events.out.tfevents.")}
        return self.root.is_dir() and not kept and not self.checkpoint.parent.exists()


def read_metrics(path: Path) -> dict[str, float]:
    """A metrics.json as {name: number}; a truncated or foreign file is one sentence naming it."""
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise UserError(f"{path} is not readable JSON ({reason}); delete it and recompute it with vae-eval {path.parent}.") from None
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw.values()):
        raise UserError(f"{path} is not a vae-run metrics file (a JSON object of numbers); delete it and recompute it with vae-eval {path.parent}.")
    return {k: float(v) for k, v in raw.items()}
