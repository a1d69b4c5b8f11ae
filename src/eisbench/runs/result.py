"""What a run returns, and the one place the record envelope is added.

An experiment or benchmark measures and judges; it returns a :class:`Result` (metrics, claims,
details, artifacts, plus the data it saw and the stages it ran). :func:`to_record` wraps it in
the envelope every record shares (config, seeds, git state, library versions, device, wall
time) and :func:`write` puts ``record.json`` and the artifacts on disk atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from eisbench.core.config import to_plain
from eisbench.core.paths import atomic_write_bytes
from eisbench.runs.preregistered import RULES_VERSION, digest
from eisbench.runs.record import (
    SCHEMA_VERSION,
    Claim,
    Metric,
    Record,
    git_state,
    library_versions,
    now,
)
from eisbench.runs.record import write as write_record

Artifact = bytes | Mapping[str, torch.Tensor]
"""A file beside the record: raw bytes, or named tensors (written as safetensors)."""


@dataclass(frozen=True)
class Result:
    """The measurements of one run, before the envelope.

    ``data`` maps each dataset's name to its sha256; ``stages`` is the run's
    :class:`~eisbench.runs.store.StageLog` entries; ``seeds`` and ``device`` default to the
    config's ``seeds`` and ``device`` fields.
    """

    metrics: dict[str, Metric]
    claims: list[Claim] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    seeds: tuple[int, ...] | None = None
    device: str | None = None


def to_record(name: str, config: Any, result: Result, *, seconds: float) -> Record:
    """``result`` wrapped in the envelope (validated when written)."""
    seeds = result.seeds if result.seeds is not None else getattr(config, "seeds", ())
    device = result.device if result.device is not None else str(getattr(config, "device", "cpu"))
    return {
        "schema_version": SCHEMA_VERSION, "experiment": name, "created": now(),
        "config": to_plain(config), "seeds": [int(s) for s in seeds], "git": git_state(),
        "versions": {**library_versions(), "claim_rules": str(RULES_VERSION),
                     "thresholds": digest()[:16]},
        "device": device, "data": dict(result.data),
        "stages": list(result.stages), "wall_seconds": seconds, "metrics": result.metrics,
        "claims": result.claims, "details": result.details,
    }


def write(rec: Record, result: Result, out: Path) -> Path:
    """Write ``out/record.json`` and each artifact of ``result`` (atomically); return the
    record's path."""
    out.mkdir(parents=True, exist_ok=True)
    for fname, art in result.artifacts.items():
        if isinstance(art, bytes):
            blob = art
        else:
            blob = save({k: v.detach().cpu().contiguous() for k, v in art.items()})
        atomic_write_bytes(out / fname, blob)
    write_record(rec, out / "record.json")
    return out / "record.json"


def with_details(result: Result, **details: Any) -> Result:
    """``result`` with more entries in ``details``."""
    return dataclasses.replace(result, details={**result.details, **details})


__all__ = ["Artifact", "Result", "to_record", "with_details", "write"]
