"""One sentence on how a guarded training run stopped, for the report pages' notes.

A run's history (one entry per epoch, :func:`eisbench.training.fit`) marks a stop in one of two
ways: the per-epoch guard (PGD-10 accuracy on a fixed batch fell; the entry has
``guard_pgd10_acc`` and the run keeps its best epoch) or the within-epoch guard (FGSM against
PGD-5; ``backoffs_at`` lists its back-offs and the run keeps its last healthy weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def stop_note(run: str, hist: Sequence[Mapping[str, Any]]) -> str | None:
    """How the training run ``run`` stopped, or None if it ran to the end.

    Example:
        >>> stop_note("seed 1 robust model", [{"epoch": 1, "eps": 0.3, "stopped": True,
        ...                                     "backoffs_at": [100, 200, 300, 400]}])[:48]
        'The seed 1 robust model overfitted catastrophica'
    """
    stop = [h for h in hist if h.get("stopped")]
    if not stop:
        return None
    h = stop[0]
    if "guard_pgd10_acc" in h:  # the per-epoch guard: the best epoch is kept
        best = max((x for x in hist if not x.get("stopped") and "guard_pgd10_acc" in x),
                   key=lambda x: x["guard_pgd10_acc"], default=h)
        return (f"The {run} overfitted catastrophically in epoch {h['epoch']} (PGD-10 accuracy "
                f"on a fixed training batch fell to {h['guard_pgd10_acc']:.0%}); training "
                f"stopped and kept epoch {best['epoch']}, trained at eps {best['eps']:.3g}.")
    steps = [s for x in hist for s in x.get("backoffs_at", [])]
    at = f" (at steps {', '.join(map(str, steps))})" if steps else ""
    return (f"The {run} overfitted catastrophically in epoch {h['epoch']}: the within-epoch "
            f"guard (FGSM against PGD-5 accuracy) backed off {len(steps)} times{at} and stopped "
            "it with its last healthy weights.")
