"""A runnable experiment or benchmark: presets, the function that measures, the report.

:meth:`Experiment.run` is the one path from a config to a written record: it calls
``measure(cfg, *, out, store) -> Result``, adds the envelope
(:func:`~eisbench.runs.result.to_record`) and writes ``record.json`` with the artifacts. The
experiments' and benchmarks' registries hold these.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eisbench.runs.record import Record
from eisbench.runs.result import Result, to_record, write
from eisbench.runs.store import Store


@dataclass(frozen=True)
class Experiment:
    """``quick`` and ``full`` are preset configs (frozen dataclasses); ``extra`` names further
    presets of this experiment only (e.g. ``cifar10``: the papers' settings on CIFAR-10);
    ``measure`` runs one; ``report(record, out) -> path`` writes ``report.html`` next to the
    record."""

    name: str
    summary: str
    quick: Any
    full: Any
    measure: Callable[..., Result]  # measure(cfg, *, out: Path, store: Store) -> Result
    report: Callable[[Record, Path], Path]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def run(self, cfg: Any, *, out: Path, store: Store) -> Record:
        """Measure with ``cfg``, write ``out/record.json`` (and artifacts), return the record."""
        t0 = time.perf_counter()
        result = self.measure(cfg, out=out, store=store)
        rec = to_record(self.name, cfg, result, seconds=time.perf_counter() - t0)
        write(rec, result, out)
        return rec

    @property
    def presets(self) -> tuple[str, ...]:
        """The names of this experiment's presets: ``quick``, ``full``, then ``extra``'s."""
        return ("quick", "full", *self.extra)

    def preset(self, name: str) -> Any:
        """The config of preset ``name`` (one of :attr:`presets`)."""
        if name not in self.presets:
            raise ValueError(f"preset must be one of {', '.join(map(repr, self.presets))}, "
                             f"got {name!r}")
        return {"quick": self.quick, "full": self.full, **self.extra}[name]


def report_from(module: str) -> Callable[[Record, Path], Path]:
    """``module.write_report``, imported on first use (reports pull in matplotlib)."""

    def report(rec: Record, out: Path) -> Path:
        write_report: Callable[[Record, Path], Path] = importlib.import_module(
            module).write_report
        return write_report(rec, out)

    return report

