"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def import_torchattacks(hint: str) -> ModuleType:
    """The peer library, or exit with ``hint`` (how to install it under the torch constraint)."""
    try:
        import torchattacks
    except ImportError:
        sys.exit(hint)
    return torchattacks


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def supplied(decide: Callable[..., Any], mod: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments an experiment's ``decide`` takes, from its record ``rec``: the
    config's fields, and ``chance`` from the record's own ``details["chance"]`` where it has one
    (ntk's is the majority-class rate of its binary task, not 1/K). ``mod`` is the experiment's
    module (its ``QUICK`` preset fills what the record does not say)."""
    cfg, details = rec["config"], rec.get("details", {})

    def config() -> Any:
        cls = inspect.signature(decide).parameters["cfg"].annotation
        cls = getattr(mod, cls) if isinstance(cls, str) else cls
        base = getattr(mod, "QUICK", None) or cls()
        simple = {f.name: (tuple(v) if isinstance(v, list) else v)
                  for f in dataclasses.fields(base) if (v := cfg.get(f.name)) is not None
                  and not isinstance(v, dict)}
        return dataclasses.replace(base, **simple)
    k = 10  # every dataset of the suite (MNIST, Fashion-MNIST, CIFAR-10, digits) has 10 classes
    supply: dict[str, Callable[[], Any]] = {
        "num_classes": lambda: k, "chance": lambda: float(details.get("chance", 1.0 / k)),
        "n_features": lambda: cfg["n_features"], "cfg": config,
        "syn_eps": lambda: tuple(cfg["syn_eps"]), "p": lambda: cfg["syn_p"],
        "train_eps": lambda: tuple(cfg["train_eps"]), "dataset": lambda: cfg["dataset"],
        "eval_eps": lambda: cfg["eval_eps"]}
    return {p: supply[p]() for p in list(inspect.signature(decide).parameters)[1:]}
