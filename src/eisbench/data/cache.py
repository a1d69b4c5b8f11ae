"""Safetensors cache of an :class:`ImageData`, so that a dataset is parsed once.

Pixels that are exact multiples of 1/255 or 1/256 are stored as uint8 (4x smaller) together
with their scale, and come back bit-identical; anything else is stored as float32. The source
sha256 travels in the file's metadata. The sha256 of the cache file's own bytes is written next to
it (``<file>.sha256``) and every load hashes the bytes it parses against it, so a cache file
changed on disk is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load, save

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


def hash_path(path: str | Path) -> Path:
    """Where the sha256 of cache file ``path`` is kept: ``<path>.sha256``."""
    return Path(f"{path}.sha256")


def save_image_data(path: str | Path, data: ImageData) -> None:
    """Write ``data`` to ``path`` atomically as safetensors, then the sha256 of those bytes."""
    tensors: dict[str, torch.Tensor] = {"y_train": data.y_train, "y_test": data.y_test}
    meta = {"format": CACHE_FORMAT, "name": data.name, "num_classes": str(data.num_classes),
            "sha256": data.sha256, "bounded": str(int(data.bounded))}
    for split in ("train", "test"):
        x, scale = _quantise(getattr(data, f"x_{split}"))
        tensors[f"x_{split}"] = x.contiguous()
        meta[f"x_{split}_scale"] = str(scale)
    raw = save({k: v.contiguous() for k, v in tensors.items()}, meta)
    atomic_write_bytes(Path(path), raw)
    atomic_write_bytes(hash_path(path), hashlib.sha256(raw).hexdigest().encode() + b"\n")


def read_verified(path: str | Path) -> bytes:
    """The bytes of cache file ``path``, checked against the sha256 recorded when it was written.

    Raises :class:`DataError` if the file or its recorded hash is missing or they disagree.
    """
    fix = "delete it and fetch the dataset again (`eisbench data fetch NAME`)"
    try:
        raw = Path(path).read_bytes()
        recorded = hash_path(path).read_text().strip()
    except OSError as e:
        raise DataError(f"cache file {path} or its recorded sha256 is unreadable ({e}): {fix}"
                        ) from e
    got = hashlib.sha256(raw).hexdigest()
    if got != recorded:
        raise DataError(
            f"cache file {path} has sha256 {got}, but {recorded} was recorded when it was "
            f"written: the file is corrupt or has been changed; {fix}"
        )
    return raw


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian header length, JSON)."""
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
    return dict(meta)


def read_cache_sha256(path: str | Path) -> str | None:
    """The source sha256 recorded in a cache file whose bytes verify, else None (no valid cache)."""
    try:
        return _metadata(read_verified(path)).get("sha256")
    except Exception:  # noqa: BLE001 - any unreadable or changed file means "no valid cache"
        return None


def load_image_data(path: str | Path, *, expect_sha256: str | None = None) -> ImageData:
    """Read an :class:`ImageData` written by :func:`save_image_data`, verifying its bytes.

    Raises :class:`DataError` if the file's bytes do not match the sha256 recorded when it was
    written, if it is unreadable, or if it records another source hash.
    """
    raw = read_verified(path)
    try:
        meta = _metadata(raw)
        tensors = load(raw)
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
