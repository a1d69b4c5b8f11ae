"""The audit's sections, each run on its own: a section that fails is recorded with its error,
where it happened and a remedy, and the others still run (an audit degrades, it does not die).

Each section ends in one of four states, kept in the record's ``details["sections"]``:

- ``done``;
- ``partial``: it ran, but some of its parts failed (a tool among the tools), listed with
  their errors (:class:`Partial`);
- ``skipped``: it does not apply to this model, or a section it needs did not complete; the
  reason says which (:class:`Skip`);
- ``failed``: it raised; ``error``, ``where`` (the last frames) and ``remedy``.

Example:
    >>> def ok(a: object) -> None: ...
    >>> def boom(a: object) -> None: raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    >>> st = run_sections(None, [Section("clean", "clean accuracy", ok),
    ...                          Section("tools", "tools' images", boom)])
    >>> st["clean"]["status"], st["tools"]["status"], missing(st)
    ('done', 'failed', ['tools'])
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eisbench.core.progress import say
from eisbench.models import LayerError


class Skip(Exception):  # noqa: N818 - a section's outcome, not an error
    """The section does not apply to this model; the message says why."""


class Partial(Exception):  # noqa: N818 - a section's outcome, not an error
    """The section ran, but some of its parts failed: ``failed`` maps each part to its error."""

    def __init__(self, failed: Mapping[str, str]) -> None:
        self.failed = dict(failed)
        super().__init__(f"{len(self.failed)} part(s) failed: "
                         + "; ".join(f"{k}: {v}" for k, v in self.failed.items()))


@dataclass(frozen=True)
class Section:
    """A named part of the audit: ``run(audit)`` adds its metrics and details; ``needs``: the
    sections that must be done (or partial) before it can run."""

    name: str
    title: str
    run: Callable[[Any], None]
    needs: tuple[str, ...] = ()


_SHAPES = ("size of tensor", "shapes cannot be multiplied", "mat1 and mat2", "must match the size",
           "Expected input batch_size", "expected input")


def remedy(e: BaseException) -> str:
    """What to do about error ``e`` of a section, in one sentence."""
    msg = str(e)
    if isinstance(e, LayerError):
        return ("name the layer whose output is the model's penultimate features: --layer NAME "
                "(the error lists the layers that ran)")
    if isinstance(e, MemoryError) or "out of memory" in msg:
        return ("use fewer images (the quick preset: drop --full; or --set n_robust=... "
                "n_scan=...) or a larger machine")
    if isinstance(e, RuntimeError) and any(s in msg for s in _SHAPES):
        return ("a shape mismatch between the model and what eisbench fed or hooked: if it "
                "comes from the penultimate features, name their layer with --layer NAME; check "
                "that the model takes the dataset's (C, H, W) images in [0,1] (--scale 255 for "
                "raw pixels)")
    if isinstance(e, ValueError):
        return "the message says what was wrong; fix that setting or input and rerun"
    return ("the last frames are under `where`; rerun with the same settings to debug, and "
            "report an eisbench bug with the model's definition if the fault is not the model's")


def _where(e: BaseException, frames: int = 3) -> list[str]:
    tb = traceback.extract_tb(e.__traceback__)[-frames:]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in tb]


def _run_one(audit: Any, s: Section) -> dict[str, Any]:
    try:
        s.run(audit)
        return {"status": "done"}
    except Skip as e:
        say(f"audit: {s.title} skipped: {e}")
        return {"status": "skipped", "reason": str(e)}
    except Partial as e:
        say(f"audit: {s.title} partial: {e}")
        return {"status": "partial", "error": str(e), "failed": e.failed,
                "remedy": "see each part's error"}
    except Exception as e:  # a section's failure is reported; KeyboardInterrupt still stops
        say(f"audit: {s.title} FAILED: {type(e).__name__}: {e}")
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "where": _where(e),
                "remedy": remedy(e)}


def run_sections(audit: Any, sections: Sequence[Section]) -> dict[str, dict[str, Any]]:
    """Run each section on ``audit`` in order (see the module docstring); returns
    ``{name: {"status", "title", "seconds", ...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for s in sections:
        t0 = time.perf_counter()
        blocked = [n for n in s.needs if out.get(n, {}).get("status") not in ("done", "partial")]
        if blocked:
            entry: dict[str, Any] = {"status": "skipped",
                                     "reason": f"needs {', '.join(blocked)}, which did not "
                                               "complete"}
            say(f"audit: {s.title} skipped: {entry['reason']}")
        else:
            entry = _run_one(audit, s)
        out[s.name] = {"title": s.title, **entry, "seconds": time.perf_counter() - t0}
    return out


def missing(sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The sections that did not complete (failed, skipped or partial)."""
    return [n for n, s in sections.items() if s["status"] != "done"]
