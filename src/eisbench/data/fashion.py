"""Fashion-MNIST from a folder of IDX files; by default the Debian ``dataset-fashion-mnist``."""

from __future__ import annotations

from pathlib import Path

from eisbench.data.core import DATASETS, FETCHERS, DataError, ImageData
from eisbench.data.idx import IDX_STEMS, fetch_idx_folder, load_idx_cached

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    if not DEFAULT_ROOT.is_dir():
        raise DataError(
            f"Fashion-MNIST not found in {DEFAULT_ROOT}: install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or pass root=DIR (--root DIR) for a "
            f"folder holding the four IDX files ({', '.join(IDX_STEMS.values())}, .gz or not)"
        )
    return DEFAULT_ROOT


def fetch_fashion_mnist(*, root: str | Path | None = None) -> Path:
    """Convert the IDX files once to the safetensors cache; return the cache path."""
    return fetch_idx_folder(_root(root), name="fashion-mnist")


@DATASETS.register("fashion-mnist")
def fashion_mnist(*, root: str | Path | None = None) -> ImageData:
    """Fashion-MNIST: 60000 train / 10000 test, (N, 1, 28, 28) float32 in [0,1], labels 0..9.

    ``root``: folder of the four IDX files (default ``/usr/share/datasets/fashion-mnist``).

    Example:
        >>> fashion_mnist().shape  # doctest: +SKIP
        (1, 28, 28)
    """
    return load_idx_cached(_root(root), name="fashion-mnist")


FETCHERS.register("fashion-mnist")(fetch_fashion_mnist)
