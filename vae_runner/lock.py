"""One process at a time in a run directory: an exclusive, non-blocking lock that the kernel drops if the holder dies."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Optional

from filelock import FileLock, Timeout

from vae_runner.atomic import OutputError, atomic_write
from vae_runner.errors import UserError

# A holder writes its PID just after taking the lock; a contender that lands in between waits this long for it.
PID_WAIT_S = 0.5


class RunLock:
    """Exclusive lock on a run directory, held for a process's whole use of it."""

    def __init__(self, lock_path: Path, what: str):
        # what: the run directory as shown to the user, in the sentence a second process gets.
        self.lock_path = Path(lock_path)
        self.pid_path = pid_path(self.lock_path)
        self.what = what
        # flock on Unix (filelock's default): the kernel releases it when the holder exits, SIGKILL included,
        # so a killed run never leaves a stale lock behind and can be resumed at once.
        self._lock = FileLock(str(self.lock_path), timeout=0)

    def __enter__(self) -> "RunLock":
        """Take the lock without waiting; raise `UserError` naming the holder's PID if another process has it."""
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(in_use(self.what, holder_pid(self.pid_path, wait_s=PID_WAIT_S))) from None
        except OSError as err:
            raise OutputError(
                f"could not lock {self.lock_path} ({err.strerror or err}); choose a writable output folder (hydra.run.dir=...)."
            ) from None
        # The PID lives in a sibling file: older filelock versions truncate the lock file itself on opening it.
        with suppress(OutputError):  # the PID only improves the message; the lock is what protects the run
            atomic_write(self.pid_path, lambda f: f.write(f"{os.getpid()}\n".encode()))
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Release the lock; the PID file goes first, so it never names a process that no longer holds the lock."""
        with suppress(OSError):
            self.pid_path.unlink(missing_ok=True)
        self._lock.release()


def check_unlocked(lock_path: Path, what: str) -> None:
    """Raise the `RunLock` sentence if another live process holds the lock; takes it for an instant at most, creates nothing."""
    lock_path = Path(lock_path)
    # No folder or no lock file: nobody has ever held it, and a read-only check must not create either.
    if not lock_path.is_file():
        return
    holder = holder_pid(pid_path(lock_path))
    if holder == os.getpid():
        return  # this process holds it (a RunLock around this call); that is no other process
    probe = FileLock(str(lock_path), timeout=0)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        raise UserError(in_use(what, holder_pid(pid_path(lock_path), wait_s=PID_WAIT_S))) from None
    except OSError:
        return  # unreadable lock file (another user's, say): the writer will report it when it runs
    probe.release()


def pid_path(lock_path: Path) -> Path:
    """Where the holder of `lock_path` records its PID: the same name with the suffix .pid."""
    return lock_path.with_suffix(".pid")


def holder_pid(path: Path, wait_s: float = 0.0) -> Optional[int]:
    """The live PID recorded in `path`, waiting up to `wait_s` for it to appear; None when missing, unreadable or dead."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _alive(pid):
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True when a process with this PID exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        return True  # os.kill on Windows terminates the process whatever the signal; trust the file there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


def in_use(what: str, pid: Optional[int]) -> str:
    """The sentence a second vae-run or vae-eval gets for a locked run directory."""
    holder = f"PID {pid}" if pid is not None else "another process"
    return f"{what} is in use by {holder} (another vae-run or vae-eval); wait for it to finish, or stop it, then run again."
