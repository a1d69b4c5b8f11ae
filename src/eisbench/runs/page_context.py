"""What a report page says about the run around it: the preset, the dataset, and the suite
page and sibling experiment pages it belongs to.

:func:`eisbench.api.run` sets the preset and dataset while it measures and renders; the evidence
suite adds, around each experiment's report, the link back to the suite page and the links to
the other experiments' pages. The report templates read :func:`current`. Rendering a record
outside a run (a test, a notebook) gives the defaults: no preset known, no navigation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

PRESET_NOTES = {
    "quick": ("quick preset: a smoke test in minutes on tiny settings (few seeds, images and "
              "steps); its verdicts are not the final results: run with --full for those"),
    "full": ("full preset: the settings the verdicts are meant to be read at (more seeds, "
             "images and steps)"),
    "default": "default settings (pass --quick for a smoke test)",
}


@dataclass(frozen=True)
class PageContext:
    """``preset``: quick | full | default, or None when unknown; ``dataset``: the data's name;
    ``suite``: the suite page's address relative to this page (None outside a suite);
    ``siblings``: ``(name, address)`` of the suite's experiment pages; ``current``: this
    page's experiment name (marked in the navigation)."""

    preset: str | None = None
    dataset: str | None = None
    suite: str | None = None
    siblings: tuple[tuple[str, str], ...] = ()
    current: str | None = None

    @property
    def preset_note(self) -> str | None:
        """What the preset is good for, or None when unknown."""
        if self.preset is None:
            return None
        return PRESET_NOTES.get(self.preset, f"{self.preset} preset")


_CONTEXT: ContextVar[PageContext] = ContextVar(  # the default is frozen: safe to share
    "eisbench_page_context", default=PageContext())  # noqa: B039


def current() -> PageContext:
    """The page context in force (the defaults outside :func:`page_context`)."""
    return _CONTEXT.get()


@contextlib.contextmanager
def page_context(**changes: Any) -> Iterator[PageContext]:
    """Change fields of the page context for the block (nested blocks add to outer ones).

    Example:
        >>> with page_context(preset="quick", dataset="digits"):
        ...     current().preset, current().dataset
        ('quick', 'digits')
        >>> current().preset is None
        True
    """
    token = _CONTEXT.set(dataclasses.replace(_CONTEXT.get(), **changes))
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)
