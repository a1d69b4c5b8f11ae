"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not).

An IDX file is: two zero bytes, a dtype code, the number of dimensions ``k``, ``k`` big-endian
uint32 sizes, then the data in C order. :func:`read_idx` checks every part of that and raises
:class:`DataError` on anything malformed.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from eisbench.core.paths import data_dir
from eisbench.data.cache import load_image_data, save_image_data
from eisbench.data.core import DataError, ImageData, sha256_files

_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
                           0x0E: ">f8"}
IDX_STEMS: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the (uncompressed) bytes of one IDX file into an array of its shape and dtype."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(
            f"{source} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}): "
            "expected the MNIST-style train-images-idx3-ubyte / *-labels-idx1-ubyte files"
        )
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: truncated or invalid IDX header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{source} is {what}: header says shape {dims} ({expected} bytes), file has "
            f"{len(data)} bytes; download the file again"
        )
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip detected from its content) into a numpy array."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e})") from e
    return parse_idx(raw, source=str(path))


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
    if not path.is_file():
        data = load_idx_folder(root, name=name, num_classes=num_classes)
        save_image_data(path, data)
    return path


def load_idx_cached(root: str | Path, *, name: str, num_classes: int = 10) -> ImageData:
    """:func:`load_idx_folder` through the cache of :func:`fetch_idx_folder`."""
    path = fetch_idx_folder(root, name=name, num_classes=num_classes)
    return load_image_data(path)
