"""The dataset container, input checks and the dataset registries.

Every loader returns an :class:`ImageData`: train and test tensors, NCHW float32 in [0,1]
(unless ``bounded`` is False, for synthetic feature vectors), int64 labels, and the sha256 of
the source file(s) so that a run record can say exactly which data it saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from eisbench.core.registry import Registry
from eisbench.core.tensors import check_images, check_labels, check_layout


class DataError(RuntimeError):
    """Missing, corrupt or malformed data; the message says what to do about it."""


DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")
"""Dataset loaders: ``DATASETS.get(name)(root=..., **kwargs) -> ImageData``."""

FETCHERS: Registry[Callable[..., Path]] = Registry("dataset")
"""Per-dataset ``fetch(root=...) -> Path`` functions, registered under the dataset's name."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled train/test split held in memory.

    Attributes:
        name: dataset name (the registry name).
        x_train: (N, C, H, W) float32, in [0,1] when ``bounded``.
        y_train: (N,) int64 class labels in [0, num_classes).
        x_test: (M, C, H, W) float32, in [0,1] when ``bounded``.
        y_test: (M,) int64.
        num_classes: number of classes.
        sha256: content hash of the source file(s) the data came from.
        bounded: False for synthetic feature vectors (e.g. ``tsipras``) that are not pixels and
            may lie outside [0,1]; :func:`check_images` is only applied when True.

    Example:
        >>> data = ImageData("toy", torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]),
        ...                  torch.rand(2, 1, 2, 2), torch.tensor([1, 0]), 2, "0" * 64)
        >>> data.subset(n_train=2).x_train.shape
        torch.Size([2, 1, 2, 2])
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    sha256: str
    bounded: bool = True

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{split}")
            what = f"{self.name} x_{split}"
            if self.bounded:
                check_images(x, what=what)
            else:
                check_layout(x, what=what)
            check_labels(getattr(self, f"y_{split}"), len(x), self.num_classes,
                          what=f"{self.name} y_{split}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train inputs {tuple(self.x_train.shape[1:])} and test inputs "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one input."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, *, n_train: int | None = None, n_test: int | None = None) -> ImageData:
        """The first ``n_train`` training and first ``n_test`` test examples (None keeps all).

        Deterministic: the same call always returns the same examples.
        """
        for n, split, have in ((n_train, "n_train", len(self.y_train)),
                               (n_test, "n_test", len(self.y_test))):
            if n is not None and not 0 <= n <= have:
                raise ValueError(f"{split}={n} is out of range: {self.name} has {have}")
        return dataclasses.replace(
            self,
            x_train=self.x_train[:n_train], y_train=self.y_train[:n_train],
            x_test=self.x_test[:n_test], y_test=self.y_test[:n_test],
        )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One hex sha256 over several files (their names' order matters, their folder does not)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> str:
    """Return the sha256 of ``path``; raise :class:`DataError` if it is not ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise DataError(
            f"{path} has sha256 {got}, expected {expected}: the file is corrupt or has been "
            "tampered with. Delete it and download it again from the official source"
        )
    return got
