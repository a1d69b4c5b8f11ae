"""Where eisbench keeps its data and cache (``$EISBENCH_HOME``, default ``~/.cache/eisbench``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def home() -> Path:
    """Root folder of eisbench's data and stage cache; ``$EISBENCH_HOME`` overrides it."""
    root = Path(os.environ.get("EISBENCH_HOME", Path.home() / ".cache" / "eisbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path:
    d = home() / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_dir() -> Path:
    d = home() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename).

    A full disk or an interruption leaves the previous file (or none), never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
