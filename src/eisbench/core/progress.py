"""Progress bars on long work (tqdm on a terminal; silent when EISBENCH_QUIET=1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(it: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``it`` in a progress bar named ``desc``."""
    quiet = os.environ.get("EISBENCH_QUIET") == "1"
    yield from tqdm(it, desc=desc, total=total, disable=quiet, leave=False, dynamic_ncols=True)


def say(message: str) -> None:
    """One line of progress on stderr (silent when EISBENCH_QUIET=1)."""
    if os.environ.get("EISBENCH_QUIET") != "1":
        tqdm.write(message, file=sys.stderr)
