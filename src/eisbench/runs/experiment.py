"""A runnable experiment or benchmark: presets, the function that measures, the report.

:meth:`Experiment.run` is the one path from a config to a written record: it calls
``measure(cfg, *, out, store) -> Result``, adds the envelope
(:func:`~eisbench.runs.result.to_record`) and writes ``record.json`` with the artifacts. The
experiments' and benchmarks' registries hold these.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eisbench.runs.record import Record
from eisbench.runs.result import Result, to_record, write
from eisbench.runs.store import Store


@dataclass(frozen=True)
class Experiment:
    """``quick`` and ``full`` are preset configs (frozen dataclasses); ``measure`` runs one;
    ``report(record, out) -> path`` writes ``report.html`` next to the record."""

    name: str
    summary: str
    quick: Any
    full: Any
    measure: Callable[..., Result]  # measure(cfg, *, out: Path, store: Store) -> Result
    report: Callable[[Record, Path], Path]

    def run(self, cfg: Any, *, out: Path, store: Store) -> Record:
        """Measure with ``cfg``, write ``out/record.json`` (and artifacts), return the record."""
        t0 = time.perf_counter()
        result = self.measure(cfg, out=out, store=store)
        rec = to_record(self.name, cfg, result, seconds=time.perf_counter() - t0)
        write(rec, result, out)
        return rec

    def preset(self, name: str) -> Any:
        """The ``quick`` or ``full`` config."""
        if name not in ("quick", "full"):
            raise ValueError(f"preset must be 'quick' or 'full', got {name!r}")
        return self.quick if name == "quick" else self.full


def report_from(module: str) -> Callable[[Record, Path], Path]:
    """``module.write_report``, imported on first use (reports pull in matplotlib)."""

    def report(rec: Record, out: Path) -> Path:
        write_report: Callable[[Record, Path], Path] = importlib.import_module(
            module).write_report
        return write_report(rec, out)

    return report

