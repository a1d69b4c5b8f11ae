"""The report pages' note on a stopped training run names the guard that stopped it: the
per-epoch guard (a PGD-10 fall, best epoch kept) or the within-epoch guard (back-offs, the last
healthy weights kept), whose history entry has no PGD-10 accuracy."""

from __future__ import annotations

from typing import Any

from eisbench.report.training import stop_note


def test_a_run_that_finished_has_no_note() -> None:
    assert stop_note("r", [{"epoch": 1, "eps": 0.3, "guard_pgd10_acc": 0.8}]) is None


def test_per_epoch_guard_keeps_the_best_epoch() -> None:
    hist = [{"epoch": 1, "eps": 0.1, "guard_pgd10_acc": 0.5},
            {"epoch": 2, "eps": 0.2, "guard_pgd10_acc": 0.7},
            {"epoch": 3, "eps": 0.3, "guard_pgd10_acc": 0.1, "stopped": True}]
    note = stop_note("seed 1 robust model", hist)
    assert note == ("The seed 1 robust model overfitted catastrophically in epoch 3 (PGD-10 "
                    "accuracy on a fixed training batch fell to 10%); training stopped and kept "
                    "epoch 2, trained at eps 0.2.")


def test_within_epoch_guard_has_no_pgd10_accuracy_and_says_so() -> None:
    # the history the guarded fast-AT runs of the quick suite write (a KeyError before)
    hist: list[dict[str, Any]] = [{"epoch": 1, "eps": 0.06, "guard_pgd10_acc": 0.9},
            {"epoch": 4, "eps": 0.3, "backoffs_at": [1900, 2300]},
            {"epoch": 5, "eps": 0.3, "backoffs_at": [2800, 3300], "stopped": True}]
    note = stop_note("seed 1 robust model", hist)
    assert note is not None
    assert "in epoch 5" in note and "backed off 4 times (at steps 1900, 2300, 2800, 3300)" in note
    assert "last healthy weights" in note and "PGD-10" not in note
