"""Files written whole or not at all: a temporary file, fsync, then a rename (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

from vae_runner.errors import UserError

# How torch.save's C++ writer words a failed write: it raises RuntimeError, not OSError, so
# a full disk is recognised by these phrases (torch 2.x, inline_container.cc) or by an OSError
# in the exception's chain (a Python file object's own write failing underneath it).
_WRITE_FAILURES = ("file write failed", "failed writing", "unexpected pos", "iostream error", "No space left on device")
RUN_DIR = "output folder (hydra.run.dir=...)"  # what a failed write suggests choosing instead, unless the caller names another setting


class OutputError(UserError):
    """The run directory could not be written (disk full, read-only, not a folder)."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], elsewhere: str = RUN_DIR) -> None:
    """Write through a temporary file, fsync, then rename: a kill leaves the old file or the new, never half of one.

    Whatever `write` raises, the temporary file is removed and the previous file
    is left intact. An OSError, or a RuntimeError from a failed write (what
    `torch.save` raises on a full disk), becomes an `OutputError` naming the
    path, the reason, the space left and `elsewhere`, what to choose instead;
    anything else propagates.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # BaseException too: a Ctrl-C mid-write must not leave a temporary file on a nearly full disk.
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = _write_failure(err)
        if reason is None:
            raise
        raise OutputError(
            f"could not write {path} ({reason}){_free_space(path.parent)}; free some space or choose another "
            f"{elsewhere}; the previous file there, if any, is intact."
        ) from None


def _write_failure(err: BaseException) -> Optional[str]:
    """The reason to show when `err` is a failed write (OSError, or torch's RuntimeError), else None."""
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    if not isinstance(err, RuntimeError):
        return None
    cause: Optional[BaseException] = err
    while cause is not None:  # torch.save wraps the file object's own OSError (ENOSPC) in its RuntimeError
        if isinstance(cause, OSError):
            return cause.strerror or str(cause)
        cause = cause.__cause__ or cause.__context__
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not any(phrase in message for phrase in _WRITE_FAILURES):
        return None
    # "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598": keep the part after the location.
    detail = message.split("] ", 1)[-1].lstrip(". ").strip()
    return f"the write failed: {detail[:100]}"


def _free_space(folder: Path) -> str:
    """", with 12.0 KiB free on that filesystem" for the nearest existing folder, or "" when that cannot be read."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                free = shutil.disk_usage(candidate).free
            except OSError:
                return ""
            return f", with {human_bytes(free)} free on that filesystem"
    return ""


def human_bytes(n: int) -> str:
    """A byte count as people read it: 512 B, 12.0 KiB, 3.4 GiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def write_json(path: Path, data: Any, elsewhere: str = RUN_DIR) -> None:
    """Write JSON atomically; `elsewhere` is what a failed write tells the user to choose instead (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()), elsewhere=elsewhere)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (any `hashlib` algorithm), read in 1 MiB chunks so a large file is never held in memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
