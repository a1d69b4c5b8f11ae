"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


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
