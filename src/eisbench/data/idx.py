"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not).

An IDX file is: two zero bytes, a dtype code, the number of dimensions ``k``, ``k`` big-endian
uint32 sizes, then the data in C order. :func:`read_idx` checks every part of that and raises
:class:`DataError` on anything malformed.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from eisbench.core.paths import data_dir
from eisbench.data.bounded import Readable
from eisbench.data.cache import load_image_data, read_cache_sha256, save_image_data
from eisbench.data.core import DataError, ImageData, sha256_files

log = logging.getLogger(__name__)

_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
                           0x0E: ">f8"}
IDX_STEMS: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


MAX_IDX_BYTES = 2 * 1024**3
"""The largest IDX body (bytes after the header) :func:`read_idx` accepts; MNIST's is 47 MB."""

MAX_IDX_NDIM = 8
"""The most dimensions an IDX header may declare (MNIST files have 1 or 3)."""

_CHUNK = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"


def _read_exact(stream: Readable, n: int) -> bytearray:
    """Up to ``n`` bytes from ``stream`` in chunks; fewer only at the end of the stream."""
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(min(_CHUNK, n - len(buf)))
        if not part:
            break
        buf += part
    return buf


def _read_header(stream: Readable, *, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Magic, dtype and dims of an IDX stream -> (dtype, dims, header size in bytes)."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise DataError(
            f"{source} is not an IDX file (bad magic number {magic.hex() or 'empty'}): "
            "expected the MNIST-style train-images-idx3-ubyte / *-labels-idx1-ubyte files"
        )
    ndim = magic[3]
    if not 1 <= ndim <= MAX_IDX_NDIM:
        raise DataError(f"{source}: invalid IDX header ({ndim} dimensions, expected 1.."
                        f"{MAX_IDX_NDIM}); the file is corrupt: download it again")
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{source}: truncated IDX header ({ndim} dimensions); download the file "
                        "again")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4"))
    return np.dtype(_DTYPES[magic[2]]), dims, 4 + 4 * ndim


def read_idx_stream(stream: Readable, *, source: str = "<stream>") -> np.ndarray:
    """Read one IDX array from an uncompressed binary stream, header first.

    The header is checked before any of the body is read; the body size is computed from the
    dims and refused above :data:`MAX_IDX_BYTES`; then exactly that many bytes are read, plus
    one to detect trailing bytes. Returns an array of the header's shape in native byte order.
    """
    dtype, dims, header = _read_header(stream, source=source)
    nbytes = math.prod(dims) * dtype.itemsize
    # an empty axis makes the body empty, not the shape sane: (0, 2**32-1, 2**32-1) is no array
    span = math.prod(d for d in dims if d) * dtype.itemsize
    if max(nbytes, span) > MAX_IDX_BYTES:
        what = f"{nbytes} bytes of data" if nbytes else f"its non-empty axes alone {span} bytes"
        raise DataError(
            f"{source}: header says shape {dims} ({what}), more than the limit of "
            f"{MAX_IDX_BYTES} bytes (eisbench.data.idx.MAX_IDX_BYTES); the file is corrupt or a "
            "decompression bomb: download it again from the official source"
        )
    body = _read_exact(stream, nbytes)
    if len(body) < nbytes or stream.read(1):
        what = "is truncated" if len(body) < nbytes else "has trailing bytes"
        got = f"{header + len(body)} bytes" if len(body) < nbytes else "more bytes"
        raise DataError(
            f"{source} {what}: header says shape {dims} ({header + nbytes} bytes), file has "
            f"{got}; download the file again"
        )
    arr = np.frombuffer(body, dtype).reshape(dims)  # writable: body is a fresh bytearray
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _read_maybe_gzip(f: BinaryIO, *, source: str) -> np.ndarray:
    """:func:`read_idx_stream` on ``f`` (seekable), through gzip if ``f`` starts with its magic."""
    gz = f.read(2) == _GZIP_MAGIC
    f.seek(0)
    if not gz:
        return read_idx_stream(f, source=source)
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as stream:
            return read_idx_stream(stream, source=source)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source} is a corrupt or truncated gzip file ({e}); download it "
                        "again") from e


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of one IDX file (gzipped or not) into an array of its shape and dtype."""
    return _read_maybe_gzip(io.BytesIO(data), source=source)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip detected from its content) into a numpy array.

    Memory stays bounded by the size the header declares (at most :data:`MAX_IDX_BYTES`), however
    far a gzip file would inflate.
    """
    with open(path, "rb") as f:
        return _read_maybe_gzip(f, source=str(path))


def find_idx_files(root: str | Path) -> dict[str, Path]:
    """The four standard IDX files in ``root`` (``.gz`` or not, ``-idx`` or ``.idx`` spelling)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the folder that holds the four IDX files")
    found: dict[str, Path] = {}
    for key, stem in IDX_STEMS.items():
        names = [stem, stem.replace("-idx", ".idx")]
        cands = [root / (n + ext) for n in names for ext in ("", ".gz")]
        hits = [c for c in cands if c.is_file()]
        if not hits:
            raise DataError(
                f"{root} has no {stem}[.gz]; the folder must hold the four IDX files "
                f"{', '.join(IDX_STEMS.values())} (gzipped or not)"
            )
        found[key] = hits[0]
    return found


def _split(images: np.ndarray, labels: np.ndarray, *, source: str, num_classes: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{source}: expected uint8 images (N, H, W), got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels outside [0, {num_classes - 1}]")
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32) / 255  # (N, 1, H, W)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_folder(root: str | Path, *, name: str, num_classes: int = 10) -> ImageData:
    """Load the four IDX files in ``root`` into an :class:`ImageData` (pixels / 255).

    Returns x_train (60000, 1, 28, 28) etc. for MNIST-style folders; ``sha256`` is one hash over
    the four files.
    """
    files = find_idx_files(root)
    arrays = {key: read_idx(path) for key, path in files.items()}
    x_tr, y_tr = _split(arrays["train_images"], arrays["train_labels"],
                        source=f"{root} (train)", num_classes=num_classes)
    x_te, y_te = _split(arrays["test_images"], arrays["test_labels"],
                        source=f"{root} (test)", num_classes=num_classes)
    return ImageData(name, x_tr, y_tr, x_te, y_te, num_classes, sha256_files(files.values()))


def fetch_idx_folder(root: str | Path, *, name: str, num_classes: int = 10) -> Path:
    """Convert an IDX folder once into a safetensors cache keyed by the files' content hash.

    Returns the cache path, ``data_dir()/name/name-<hash16>.safetensors``.
    """
    sha = sha256_files(find_idx_files(root).values())
    path = data_dir() / name / f"{name}-{sha[:16]}.safetensors"
    if read_cache_sha256(path) != sha:  # missing, or its bytes changed since written
        if path.is_file():
            log.warning("cache file %s does not verify; converting %s again", path, root)
        data = load_idx_folder(root, name=name, num_classes=num_classes)
        save_image_data(path, data)
    return path


def load_idx_cached(root: str | Path, *, name: str, num_classes: int = 10) -> ImageData:
    """:func:`load_idx_folder` through the cache of :func:`fetch_idx_folder` (bytes verified)."""
    path = fetch_idx_folder(root, name=name, num_classes=num_classes)
    return load_image_data(path)
