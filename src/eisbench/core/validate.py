"""Checks of user-given numbers and output paths: each refuses a bad value with a
``ValueError`` that names the field, the value and the allowed range, before any work is done.

A bool is not a number here (``True`` is an ``int`` in Python, but ``epochs=True`` is a
mistake), and a float field takes an int (``lr=1``) but never NaN or an infinity.

    >>> positive_int("epochs", 3)
    3
    >>> finite("lr", float("nan"), lo=0.0, lo_open=True)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number > 0, got nan
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """The allowed range as text: ``> 0``, ``>= 1``, ``in [0, 1]``, ... (empty: any)."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[lo, hi]``, else a ``ValueError`` naming
    ``name``, the value and the range."""
    want = " ".join(filter(None, ("an integer", _range(lo, hi, False, False))))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (a count: epochs, steps, images), else a ``ValueError``."""
    return integer(name, value, lo=1)


def finite(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number (an int or float, not a bool) within
    ``lo``..``hi`` (bounds included unless ``lo_open`` / ``hi_open``), else a ``ValueError``
    naming ``name``, the value and the range."""
    want = " ".join(filter(None, ("a finite number", _range(lo, hi, lo_open, hi_open))))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
            or (hi is not None and (v >= hi if hi_open else v > hi))):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def one_of(name: str, value: Any, allowed: Collection[str]) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(sorted(allowed))}, got {value!r}")
    return str(value)


def _nearest_existing(path: Path) -> Path:
    """The closest of ``path`` and its ancestors that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _creatable(name: str, folder: Path) -> None:
    """Refuse (``ValueError``) a ``folder`` that could not be made: an ancestor is a file or
    cannot be written into."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ValueError(f"{name}: cannot create the folder {folder}: {base} is a file")
    if base != folder.absolute() and not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot create the folder {folder}: {base} is not writable")


def file_out(name: str, path: Path, *, create_parent: bool = False) -> Path:
    """``path`` if a file can be written there: not an existing folder, its parent a folder
    that exists or can be created (made now with ``create_parent``); else a ``ValueError``."""
    if path.is_dir():
        raise ValueError(f"{name} must be a file path, got {path}, an existing folder")
    _creatable(name, path.parent)
    if create_parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{name}: cannot create the folder {path.parent}: {e}") from e
    return path


def folder_out(name: str, path: Path) -> Path:
    """``path`` if it is a folder or one can be created there (not an existing file), else a
    ``ValueError``."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a folder, got {path}, an existing file")
    _creatable(name, path)
    return path
