"""Files written whole or not at all: a temporary file, fsync, then a rename (no torch needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from vae_runner.errors import UserError


class OutputError(UserError):
    """The run directory could not be written (disk full, read-only, not a folder)."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temporary file, fsync, then rename: a kill leaves the old file or the new, never half of one.

    An OSError (disk full, read-only folder) removes the temporary file, leaves
    the previous file intact and becomes an `OutputError` naming the path.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise OutputError(
            f"could not write {path} ({reason}); free disk space or choose a writable output folder "
            f"(hydra.run.dir=...); the previous file there, if any, is intact."
        ) from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))
