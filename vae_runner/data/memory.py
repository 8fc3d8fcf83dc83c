"""How much memory the machine has free, and whether a split about to be materialised fits in it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vae_runner.errors import UserError

# Resize this many bytes of float temporaries at a time: big enough to keep
# F.interpolate efficient, small enough not to matter next to the result.
RESIZE_CHUNK_BYTES = 256 * 2**20


def available_memory() -> int:
    """Bytes the process can still allocate: MemAvailable, capped by a cgroup v2 limit; sys.maxsize when unknown."""
    free = _meminfo_available()
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX, or the name is unknown here
            free = None
    limit = _cgroup_room()
    # A container's limit is invisible to MemAvailable, which reports the host's memory.
    candidates = [v for v in (free, limit) if v is not None]
    return min(candidates) if candidates else sys.maxsize


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """cgroup v2 memory.max minus memory.current, when this process runs under such a limit."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def resize_plan(n: int, channels: int, height: int, width: int, size: int) -> tuple[int, int]:
    """(bytes needed, images per chunk) to resize n uint8 images to size x size in float chunks."""
    # Per image in float32: the input, the separable antialiased filter's intermediate, the output.
    temp_per_image = 4 * channels * (height * width + height * size + size * size)
    chunk = max(1, min(n, RESIZE_CHUNK_BYTES // max(1, temp_per_image)))
    return n * channels * size * size + chunk * temp_per_image, chunk


def require_memory(needed: int, what: str, image_size: int, advice: str) -> None:
    """Raise a UserError naming dataset.image_size when `needed` bytes exceed the memory available."""
    free = available_memory()
    if needed > free:
        raise UserError(
            f"dataset.image_size={image_size} would need {needed / 2**30:,.1f} GiB of memory to hold {what}, "
            f"but {free / 2**30:,.1f} GiB is available; {advice}."
        )
