"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (Python pickles of numpy arrays).

The batches are read with the restricted unpickler and checked after loading: ``b"data"`` a
uint8 (N, 3072) array (1024 red, 1024 green, 1024 blue values per row), ``b"labels"`` N ints in
0..9.

A batch file is untrusted input (there is no known hash to check it against), so before it is
unpickled its opcodes are read (:func:`~eisbench.data.safe_pickle.check_opcodes`): every length
must lie within the file and every memo index must be one the file could have filled, so that
no few-byte file makes the unpickler allocate gigabytes. ``_codecs.encode`` (which Python 3
pickles of bytes use below protocol 3) is admitted only as ``encode(str, "latin1")``, so a chain
of expanding codecs cannot inflate a small file either, and an array larger than the file
(built by calling ``numpy.ndarray`` rather than read from the file) is refused before it is
touched.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eisbench.data.bounded import BoundedReader
from eisbench.data.core import DATASETS, FETCHERS, DataError, ImageData, sha256_files
from eisbench.data.safe_pickle import ARRAY_GLOBALS, CODECS_GLOBALS, safe_loads

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
MAX_BATCH_BYTES = 256 * 1024**2
"""The most bytes one batch pickle may read (a real batch is 31 MB)."""
_HOW = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html on a "
    "machine with internet access, extract it, and pass root=DIR (--root DIR) pointing at the "
    f"extracted {FOLDER} folder (or its parent)"
)


def find_root(root: str | Path | None) -> Path:
    """The folder holding ``data_batch_1..5`` and ``test_batch`` (``root`` or ``root/FOLDER``)."""
    if root is None:
        raise DataError(f"CIFAR-10 cannot be downloaded here and needs root: {_HOW}")
    root = Path(root)
    for cand in (root, root / FOLDER):
        if all((cand / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return cand
    raise DataError(f"{root} does not hold the CIFAR-10 batch files "
                    f"({', '.join(TRAIN_FILES)}, {TEST_FILE}): {_HOW}")


_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, OverflowError,
                      MemoryError, LookupError, AttributeError, RecursionError, struct.error)
"""What unpickling a malformed or hostile file can raise (a huge declared array: MemoryError;
a bad memo reference: KeyError; a bad codec name: LookupError; ...)."""


def _unpickle(path: str | Path) -> tuple[Any, int]:
    """The object pickled in ``path`` (opcodes checked first) and the file's size in bytes."""
    with open(path, "rb") as f:  # read its size, not the limit: read(n) reserves n bytes
        raw = BoundedReader(f, limit=MAX_BATCH_BYTES, source=str(path),
                            setting="eisbench.data.cifar.MAX_BATCH_BYTES").read(
                                os.fstat(f.fileno()).st_size)
    try:
        return safe_loads(raw, allowed=ARRAY_GLOBALS | CODECS_GLOBALS, encoding="bytes"), len(raw)
    except _UNPICKLING_ERRORS as e:
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: "
                        f"{str(e)[:200]})") from e


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (N, 3, 32, 32), int64 (N,)), validated."""
    batch, size = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected b'data' as uint8 (N, 3072), got {got}")
    if data.nbytes > size:  # not read from the file: an ndarray(shape) call, memory untouched
        raise DataError(f"{path}: b'data' holds {data.nbytes} bytes, more than the file's "
                        f"{size}: not a CIFAR-10 batch")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"{path}: expected {len(data)} labels in b'labels'")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError, OverflowError):  # ragged or odd items
        y = np.asarray([], dtype=object)
    if (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)
            or (len(y) and (y.min() < 0 or y.max() > 9))):
        raise DataError(f"{path}: labels must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _tensors(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x).to(torch.float32) / 255, torch.from_numpy(y)  # (N, 3, 32, 32)


def fetch_cifar10(*, root: str | Path | None = None) -> Path:
    """Check that ``root`` holds the batch files and return their folder (nothing to download)."""
    return find_root(root)


@DATASETS.register("cifar10")
def cifar10(*, root: str | Path | None = None) -> ImageData:
    """CIFAR-10: (N, 3, 32, 32) float32 in [0,1], labels 0..9 (50000 / 10000 for the real set).

    ``root`` (required): the ``cifar-10-batches-py`` folder or its parent.

    Example:
        >>> cifar10(root="~/data/cifar-10-batches-py").shape  # doctest: +SKIP
        (3, 32, 32)
    """
    folder = find_root(root)
    train = [folder / f for f in TRAIN_FILES]
    test = [folder / TEST_FILE]
    x_tr, y_tr = _tensors(train)
    x_te, y_te = _tensors(test)
    return ImageData("cifar10", x_tr, y_tr, x_te, y_te, 10, sha256_files(train + test))


FETCHERS.register("cifar10")(fetch_cifar10)
