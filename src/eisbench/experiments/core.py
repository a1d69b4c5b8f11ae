"""The experiment registry (each entry a :class:`~eisbench.runs.experiment.Experiment`)."""

from __future__ import annotations

from eisbench.core.registry import Registry
from eisbench.runs.experiment import Experiment, report_from

EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS.register(exp.name)(exp)
    return exp


__all__ = ["EXPERIMENTS", "Experiment", "register", "report_from"]
