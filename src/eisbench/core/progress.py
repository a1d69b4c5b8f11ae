"""Progress on long work, on stderr: a bar (tqdm) while stderr is a terminal; otherwise, as in
a saved log, one line per finished loop with what it counted and its seconds (a bar's
redraws would fill a log with carriage returns). ``EISBENCH_QUIET=1`` silences both.

Example (in a log; on a terminal the same loop is a bar):
    >>> _ = list(progress(range(3), desc="[seed 1] robust model (epoch 1/5)", unit="batch"))
    ... # doctest: +SKIP
    [seed 1] robust model (epoch 1/5): 3 batches in 0.0 s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    """Whether progress is silenced (``EISBENCH_QUIET=1``)."""
    return os.environ.get("EISBENCH_QUIET") == "1"


def bars() -> bool:
    """Whether progress is drawn as bars: stderr is a terminal and progress is not silenced."""
    return not quiet() and sys.stderr.isatty()


def plural(unit: str, n: int) -> str:
    """``unit`` for a count of ``n``.

    Example:
        >>> plural("batch", 2), plural("step", 1), plural("trojan", 12)
        ('batches', 'step', 'trojans')
    """
    if n == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def duration(seconds: float) -> str:
    """Seconds as a short duration.

    Example:
        >>> duration(42.4), duration(185), duration(4000)
        ('42 s', '3 min 05 s', '1 h 06 min')
    """
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress(it: Iterable[T], *, desc: str, total: int | None = None,
             unit: str = "step") -> Iterator[T]:
    """Yield from ``it``, shown as a bar named ``desc`` counting ``unit``s on a terminal, or
    as one line ``"<desc>: <n> <units> in <s> s"`` once it is exhausted elsewhere. ``desc``
    says what the loop is and where it stands (``"[seed 1] robust model (epoch 3/5)"``)."""
    if quiet():
        yield from it
        return
    if bars():
        yield from tqdm(it, desc=desc, total=total, unit=unit, leave=False,
                        dynamic_ncols=True)
        return
    t0, n = time.perf_counter(), 0
    for item in it:
        n += 1
        yield item
    say(f"{desc}: {n} {plural(unit, n)} in {time.perf_counter() - t0:.1f} s")


def say(message: str) -> None:
    """One line of progress on stderr (silent when EISBENCH_QUIET=1)."""
    if not quiet():
        tqdm.write(message, file=sys.stderr)


__all__ = ["bars", "duration", "plural", "progress", "quiet", "say"]
