"""Synthetic distributions whose robust and non-robust features are known by construction."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from eisbench.core.paths import data_dir
from eisbench.data.core import DATASETS, FETCHERS, ImageData

tsipras_robust_feature_index = 0
"""Index (along the last axis of x) of the robust feature x_1 of :func:`tsipras`."""


def tsipras_sample(
    n: int, *, d: int, p: float, eta: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the Tsipras et al. (2019) distribution.

    y is uniform in {-1, +1}; x_1 = y with probability ``p`` else -y (robust, weakly
    predictive in aggregate: accuracy p); x_2..x_{d+1} ~ N(eta * y, 1) (each non-robust and
    weak, together highly predictive). Returns x (n, 1, 1, d + 1) float32 and labels (n,) int64
    in {0, 1} (label = (y + 1) / 2).
    """
    y = torch.randint(0, 2, (n,), generator=generator) * 2 - 1  # (n,) in {-1, +1}
    agree = torch.rand(n, generator=generator) < p
    x1 = torch.where(agree, y, -y).to(torch.float32)  # (n,)
    weak = eta * y.to(torch.float32)[:, None] + torch.randn(n, d, generator=generator)  # (n, d)
    x = torch.cat([x1[:, None], weak], dim=1).reshape(n, 1, 1, d + 1)
    return x, (y + 1).div(2, rounding_mode="floor").to(torch.int64)


@DATASETS.register("tsipras")
def tsipras(
    *,
    root: str | Path | None = None,
    d: int = 100,
    p: float = 0.95,
    eta: float | None = None,
    n_train: int = 10000,
    n_test: int = 2000,
    seed: int = 0,
) -> ImageData:
    """The robust/non-robust feature distribution of Tsipras et al. 2019, as ImageData.

    NOT images: x has shape (N, 1, 1, d + 1), is unbounded (``bounded=False``) and must not be
    clipped to [0,1] or attacked with pixel-range projections. Feature
    ``tsipras_robust_feature_index`` (0) is the robust one. ``eta`` defaults to 2 / sqrt(d).
    Deterministic in ``seed`` (an explicit ``torch.Generator``; train drawn before test).

    Example:
        >>> data = tsipras(d=10, n_train=100, n_test=20)
        >>> data.x_train.shape, data.bounded
        (torch.Size([100, 1, 1, 11]), False)
    """
    if root is not None:
        raise ValueError(f"tsipras is synthetic and takes no root; got root={root}")
    if d < 1 or not 0.0 <= p <= 1.0 or n_train < 0 or n_test < 0:
        raise ValueError(f"need d >= 1, 0 <= p <= 1, n >= 0; got d={d}, p={p}, "
                         f"n_train={n_train}, n_test={n_test}")
    eta = 2 / math.sqrt(d) if eta is None else float(eta)
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr = tsipras_sample(n_train, d=d, p=p, eta=eta, generator=g)
    x_te, y_te = tsipras_sample(n_test, d=d, p=p, eta=eta, generator=g)
    params = {"dist": "tsipras", "d": d, "p": p, "eta": eta, "n_train": n_train,
              "n_test": n_test, "seed": seed, "torch": torch.__version__.split("+")[0]}
    sha = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return ImageData("tsipras", x_tr, y_tr, x_te, y_te, 2, sha, bounded=False)


def fetch_tsipras(*, root: str | Path | None = None) -> Path:
    """Nothing to fetch (generated on the fly); returns ``data_dir()``."""
    if root is not None:
        raise ValueError(f"tsipras is synthetic and takes no root; got root={root}")
    return data_dir()


FETCHERS.register("tsipras")(fetch_tsipras)
