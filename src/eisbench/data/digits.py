"""scikit-learn's bundled 8x8 digits (1797 images), with a fixed 80/20 split."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from eisbench.data.core import DATASETS, FETCHERS, ImageData, sha256_file

N_TRAIN = 1437  # 80% of 1797; the other 360 are the test set
SPLIT_SEED = 0


def _source_file() -> Path | None:
    try:
        path = Path(str(resources.files("sklearn.datasets.data") / "digits.csv.gz"))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        return None
    return path if path.is_file() else None


def _no_root(root: str | Path | None, name: str) -> None:
    if root is not None:
        raise ValueError(f"{name} takes no root (it ships with scikit-learn); got root={root}")


def fetch_digits(*, root: str | Path | None = None) -> Path:
    """Nothing to download: return the data file bundled with scikit-learn."""
    _no_root(root, "digits")
    path = _source_file()
    if path is None:  # pragma: no cover
        import sklearn

        return Path(sklearn.__file__).parent
    return path


@DATASETS.register("digits")
def digits(*, root: str | Path | None = None) -> ImageData:
    """8x8 digits: 1437 train / 360 test, (N, 1, 8, 8) float32 in [0,1] (values / 16).

    The split is a fixed permutation from ``torch.Generator().manual_seed(0)``.

    Example:
        >>> digits().x_train.shape
        torch.Size([1437, 1, 8, 8])
    """
    _no_root(root, "digits")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    x = torch.from_numpy(images).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    src = _source_file()
    sha = sha256_file(src) if src else hashlib.sha256(images.tobytes()).hexdigest()
    return ImageData("digits", x[tr], y[tr], x[te], y[te], 10, sha)


FETCHERS.register("digits")(fetch_digits)
