"""The experiment registry.

An :class:`Experiment` bundles a quick and a full preset config (frozen dataclasses) with the
function that runs it and returns a validated :class:`~eisbench.record.Record`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eisbench.record import Record
from eisbench.registry import Registry
from eisbench.store import Store


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    quick: Any
    full: Any
    run: Callable[..., Record]  # run(cfg, *, out: Path, store: Store) -> Record
    report: Callable[[Record, Path], Path]  # writes report.html next to the record


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS.register(exp.name)(exp)
    return exp


__all__ = ["EXPERIMENTS", "Experiment", "Path", "Store", "register"]
