"""vae-runner: a config-driven experiment runner for variational autoencoders.

`from vae_runner import load_run, run` gives the Python API (`vae_runner.api`);
it is imported on first use, so `import vae_runner` alone loads neither torch nor Hydra.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Names served lazily from vae_runner.api: importing it imports torch and Hydra.
_API = ("load_run", "run", "LoadedRun", "RunMetrics", "RunFailed")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """`vae_runner.load_run` and the other API names, imported from `vae_runner.api` on first use."""
    if name in _API:
        value = getattr(importlib.import_module("vae_runner.api"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vae_runner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
