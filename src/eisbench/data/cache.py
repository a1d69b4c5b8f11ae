"""Safetensors cache of an :class:`ImageData`, so that a dataset is parsed once.

Pixels that are exact multiples of 1/255 or 1/256 are stored as uint8 (4x smaller) together
with their scale, and come back bit-identical; anything else is stored as float32. The source
sha256 travels in the file's metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from eisbench.core.paths import atomic_write_bytes
from eisbench.data.core import DataError, ImageData

CACHE_FORMAT = "eisbench-imagedata/1"
_SCALES = (255, 256)


def _quantise(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(uint8 tensor, scale) if ``x == q / scale`` exactly for some scale, else (x, 0)."""
    if x.numel() and float(x.min()) >= 0 and float(x.max()) <= 1:
        for scale in _SCALES:
            q = torch.round(x * scale).clamp_(0, 255)
            if torch.equal(q / scale, x):
                return q.to(torch.uint8), scale
    return x.to(torch.float32), 0


def save_image_data(path: str | Path, data: ImageData) -> None:
    """Write ``data`` to ``path`` atomically as safetensors (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {"y_train": data.y_train, "y_test": data.y_test}
    meta = {"format": CACHE_FORMAT, "name": data.name, "num_classes": str(data.num_classes),
            "sha256": data.sha256, "bounded": str(int(data.bounded))}
    for split in ("train", "test"):
        x, scale = _quantise(getattr(data, f"x_{split}"))
        tensors[f"x_{split}"] = x.contiguous()
        meta[f"x_{split}_scale"] = str(scale)
    atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in tensors.items()}, meta))


def read_cache_sha256(path: str | Path) -> str | None:
    """The source sha256 recorded in a cache file, or None if it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - any unreadable file means "no valid cache"
        return None
    return meta.get("sha256") if meta.get("format") == CACHE_FORMAT else None


def load_image_data(path: str | Path, *, expect_sha256: str | None = None) -> ImageData:
    """Read an :class:`ImageData` written by :func:`save_image_data`.

    Raises :class:`DataError` if the file is unreadable or records another source hash.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        xs = {}
        for split in ("train", "test"):
            x, scale = tensors[f"x_{split}"], int(meta[f"x_{split}_scale"])
            xs[split] = x.to(torch.float32) / scale if scale else x
        data = ImageData(
            meta["name"], xs["train"], tensors["y_train"], xs["test"], tensors["y_test"],
            int(meta["num_classes"]), meta["sha256"], bounded=meta["bounded"] == "1",
        )
    except Exception as e:  # safetensors raises its own error type
        raise DataError(
            f"cache file {path} is unreadable ({e}): delete it and fetch the dataset again"
        ) from e
    if expect_sha256 is not None and data.sha256 != expect_sha256:
        raise DataError(
            f"cache file {path} was built from data with sha256 {data.sha256}, expected "
            f"{expect_sha256}: delete it and fetch the dataset again"
        )
    return data
