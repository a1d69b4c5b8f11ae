"""Datasets as tensors: NCHW float32 in [0,1], int64 labels, with the source's sha256.

Example:
    >>> from eisbench import data
    >>> d = data.load("digits")
    >>> d.shape, d.num_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eisbench.core.tensors import check_images
from eisbench.data import cifar, digits, fashion, mnist, synthetic  # noqa: F401 - registers
from eisbench.data.core import DATASETS, FETCHERS, DataError, ImageData
from eisbench.data.synthetic import tsipras_robust_feature_index

UNBOUNDED: frozenset[str] = frozenset({"tsipras"})
"""Datasets whose inputs are feature vectors, not pixels in [0,1] (their ``bounded`` is False)."""


def load(name: str, *, root: str | Path | None = None, **kwargs: Any) -> ImageData:
    """Load dataset ``name`` (see ``DATASETS.names()``): ``DATASETS.get(name)(root=root, ...)``.

    Returns an :class:`ImageData` with x_train (N, C, H, W), y_train (N,), x_test (M, C, H, W),
    y_test (M,). Unknown names raise ``UnknownNameError`` listing close matches.
    """
    return DATASETS.get(name)(root=root, **kwargs)


def fetch(name: str, *, root: str | Path | None = None) -> Path:
    """Make dataset ``name`` available locally (download / convert / verify); return its path.

    Idempotent and fast when already cached. For ``digits`` and ``tsipras`` there is nothing to
    fetch; for ``cifar10`` ``root`` is required.
    """
    DATASETS.get(name)  # unknown names fail with close matches
    return FETCHERS.get(name)(root=root)


__all__ = [
    "DATASETS",
    "UNBOUNDED",
    "DataError",
    "ImageData",
    "check_images",
    "fetch",
    "load",
    "tsipras_robust_feature_index",
]
