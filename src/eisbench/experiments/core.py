"""The experiment registry.

An :class:`Experiment` bundles a quick and a full preset config (frozen dataclasses) with the
function that runs it and returns a validated :class:`~eisbench.runs.record.Record`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eisbench.core.registry import Registry
from eisbench.runs.record import Record
from eisbench.runs.store import Store


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    quick: Any
    full: Any
    run: Callable[..., Record]  # run(cfg, *, out: Path, store: Store) -> Record
    report: Callable[[Record, Path], Path]  # writes report.html next to the record


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def report_from(module: str) -> Callable[[Record, Path], Path]:
    """``module.write_report``, imported on first use (reports pull in matplotlib)."""

    def report(rec: Record, out: Path) -> Path:
        write: Callable[[Record, Path], Path] = importlib.import_module(module).write_report
        return write(rec, out)

    return report


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS.register(exp.name)(exp)
    return exp


__all__ = ["EXPERIMENTS", "Experiment", "Path", "Store", "register", "report_from"]
