"""Config helpers: frozen dataclasses -> plain JSON -> stable content hashes; device choice."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch


def to_plain(obj: Any) -> Any:
    """A JSON-able view of ``obj`` (dataclasses, tuples, paths, scalars), stable across runs."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def stable_hash(*parts: Any) -> str:
    """sha256 (hex, 16 chars) of the canonical JSON of ``parts``."""
    blob = json.dumps([to_plain(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA where there is none is an error."""
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; "
                             "use --device cpu")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}: expected cpu, cuda or cuda:N")
