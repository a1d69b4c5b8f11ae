"""Content-addressed stage cache: a stage runs once per (name, config, inputs, code version).

``run_stage`` returns a finished stage's output from disk, or computes it in a stable
``<key>.partial`` folder (so a stage that checkpoints, like training, resumes after an
interruption) and publishes it by renaming the folder once complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from eisbench import __version__
from eisbench.core.config import stable_hash, to_plain
from eisbench.core.paths import atomic_write_bytes

T = TypeVar("T")


@dataclass
class StageLog:
    """Timing of every stage a run touched, in order (goes into the record)."""

    entries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Store:
    root: Path

    def key(self, name: str, config: Any, inputs: tuple[str, ...] = (), version: int = 1) -> str:
        return stable_hash(name, config, list(inputs), __version__, version)

    def run(self, name: str, config: Any, *, compute: Callable[[Path], T],
            save: Callable[[T, Path], None], load: Callable[[Path], T],
            inputs: tuple[str, ...] = (), version: int = 1,
            log: StageLog | None = None) -> tuple[T, str]:
        """Return ``(output, key)`` of stage ``name``: cached if finished, else computed.

        ``compute(work_dir)`` may write resumable state into ``work_dir``; ``save(out, dir)``
        writes the output's files; ``load(dir)`` reads them back.
        """
        key = self.key(name, config, inputs, version)
        final = self.root / name / key
        done = final / "done.json"
        if done.exists():
            meta = json.loads(done.read_text())
            out = load(final)
            if log is not None:
                log.entries.append({"name": name, "key": key, "seconds": meta["seconds"],
                                    "cached": True})
            return out, key
        work = self.root / name / f"{key}.partial"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = compute(work)
        seconds = time.perf_counter() - t0
        save(out, work)
        atomic_write_bytes(work / "config.json",
                           json.dumps(to_plain(config), indent=2, sort_keys=True).encode())
        atomic_write_bytes(work / "done.json", json.dumps({"seconds": seconds}).encode())
        if final.exists():  # a concurrent run finished first; keep its result
            shutil.rmtree(work, ignore_errors=True)
        else:
            work.rename(final)
        if log is not None:
            log.entries.append({"name": name, "key": key, "seconds": seconds, "cached": False})
        return out, key
