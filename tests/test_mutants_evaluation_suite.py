"""Tests that kill plausible wrong versions of eisbench.evaluation's attack suites (see
benchmarks/mutation.py): run_suite attacks each example until one attack breaks it, in batches,
with a seed per attack and its budget violations recorded; the registered suites, the classes
they need, their summary text and exact accuracies.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest
import torch
from conftest import LinearMulti, multi_mixture
from mutants_evaluation_helpers import EPS, Stub, _probe_attacks, binary, progress_labels

from eisbench.attacks import fgsm, pgd
from eisbench.core.stats import wilson_ci
from eisbench.evaluation import SUITES, CheckResult, Evaluation, SuiteResult, run_suite
from eisbench.evaluation.suite import (
    Step,
    describe_suite,
    register_suite,
    runnable,
    step_min_classes,
    suites_for,
    summary,
)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Registers two attacks that log each call: ``probe`` returns its input, ``leaky`` leaves
    the eps-ball on its first call and runs FGSM after."""
    return _probe_attacks(monkeypatch)


def test_run_suite_attacks_each_example_until_one_attack_breaks_it() -> None:
    model, x, y, margin = binary()
    steps: tuple[Step, ...] = (("pgd", {"steps": 1, "step_size": 0.05, "random_start": False}),
                               ("fgsm", {}))
    t0 = time.perf_counter()
    res = run_suite(model, x, y, eps=EPS, steps=steps, batch_size=10)
    took = time.perf_counter() - t0
    first, second = margin < 0.15, (margin >= 0.15) & (margin < 0.3)  # 6 and 14 examples
    assert res.clean.dtype == torch.bool and bool(res.clean.all())
    assert torch.equal(res.robust, margin >= 0.3) and res.broken_by == [
        "pgd" if f else "fgsm" if s else "" for f, s in zip(first, second, strict=True)]
    xp, xf = pgd(model, x, y, eps=EPS, **steps[0][1]), fgsm(model, x, y, eps=EPS)
    expected = torch.where(first.view(-1, 1, 1, 1), xp, torch.where(second.view(-1, 1, 1, 1), xf,
                                                                     x))
    assert torch.allclose(res.x_adv, expected, atol=1e-6, rtol=0)
    # passes: a gradient, the attack's judging forward and the suite's, per example
    assert [{k: v for k, v in a.items() if k != "seconds"} for a in res.per_attack] == [
        {"name": "pgd", "hyper": steps[0][1], "n_in": 64, "n_broken": 6, "forward": 3 * 64,
         "backward": 64, "forward_per_example": 3.0, "backward_per_example": 1.0},
        {"name": "fgsm", "hyper": {}, "n_in": 58, "n_broken": 14, "forward": 3 * 58,
         "backward": 58, "forward_per_example": 3.0, "backward_per_example": 1.0}]
    assert all(0 <= a["seconds"] <= took for a in res.per_attack)
    assert (res.suite, res.norm, res.eps, res.robust_acc, res.clean_acc) == (
        "custom", "linf", EPS, 44 / 64, 1.0)
    lo, hi = wilson_ci(44, 64)
    pgd_s, fgsm_s = (f"{a['seconds']:.2f}" for a in res.per_attack)
    assert res.seconds is not None and res.seconds <= took
    assert repr(res) == (f"robust accuracy 0.688 (95% CI {lo:.3f}-{hi:.3f}, n=64); clean "
                         "accuracy 1.000\nattacks: pgd broke 6 of 64, fgsm broke 14 of 58; "
                         "linf eps=0.1\npasses forward/backward per attacked example: pgd "
                         f"3.0/1.0 in {pgd_s} s, fgsm 3.0/1.0 in {fgsm_s} s\ntotal passes "
                         f"430/122 (6.7/1.9 per attacked example, n=64) in {res.seconds:.2f} s")


def test_run_suite_batches_seeds_and_records_violations(probe: list[dict[str, Any]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y, margin = binary(8)
    labels = progress_labels(monkeypatch)
    res = run_suite(model, x, y, eps=0.2, steps=(("leaky", {}), ("probe", {"k": 1})),
                    batch_size=3, seed=2)
    leaky, probed = res.per_attack
    assert len(leaky["budget_violations"]) == 1 and "budget_violations" not in probed
    assert re.fullmatch(r"examples (tensor\()?0\)?\.\.(tensor\()?2\)?: linf distance 0\.4 "
                        r"exceeds eps=0\.2", leaky["budget_violations"][0])
    hit = int((margin[3:] < 0.6).sum())  # 5: the first batch's successes are never counted
    assert (leaky["n_in"], leaky["n_broken"], probed["n_in"]) == (8, hit, 8 - hit) and hit > 0
    assert bool(res.robust[:3].all()) and [label.split(": ")[1] for label in labels] == [
        "leaky", "probe"]
    assert [(e["attack"], e["n"], e["gen"], e.get("k")) for e in probe] == [
        ("leaky", 3, 2000, None), ("leaky", 3, 2000, None), ("leaky", 2, 2000, None)] + [
        ("probe", min(3, 8 - hit - i), 2001, 1) for i in range(0, 8 - hit, 3)]
    assert {(e["eps"], e["norm"]) for e in probe} == {(0.2, "linf")}
    probe.clear()
    run_suite(model, x, y, eps=EPS, steps=(("probe", {}),))  # seed 0, one batch of 500
    assert [(e["n"], e["gen"]) for e in probe] == [(8, 0)]


def test_run_suite_defaults_and_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = progress_labels(monkeypatch)
    sized = Stub(LinearMulti())
    res = run_suite(sized, *multi_mixture(501), eps=0.4)  # the standard suite, batches of 500
    assert sized.sizes[:2] == [500, 1] and res.suite == "standard"
    assert [(a["name"], a["hyper"]) for a in res.per_attack] == list(SUITES.get("standard"))
    assert labels == ["standard: apgd", "standard: apgd-t", "standard: fmn", "standard: square"]
    model, x, y, _ = binary(4)
    empty = run_suite(model, x[:0], y[:0], eps=EPS, steps=(("fgsm", {}),))
    assert empty.clean.dtype == torch.bool and empty.clean.shape == (0,)
    assert math.isnan(empty.robust_acc) and math.isnan(empty.clean_acc)
    assert empty.per_attack[0]["n_in"] == 0
    assert repr(empty) == "robust accuracy: no images; suite custom"
    with pytest.raises(ValueError, match="expected images in"):
        run_suite(model, x * 4, y, eps=EPS, steps=())


def test_suites_state_their_attacks_and_the_classes_they_need(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, dlr = SUITES.get("fast"), (("apgd", {"loss": "dlr"}),)
    assert fast == (("apgd", {"loss": "ce", "steps": 50}),
                    ("apgd-t", {"n_targets": 3, "steps": 50}), ("square", {"n_queries": 100}))
    assert SUITES.get("standard") == (("apgd", {"loss": "ce", "steps": 100}),
                                      ("apgd-t", {"n_targets": 9, "steps": 100}),
                                      ("fmn", {"steps": 100}), ("square", {"n_queries": 5000}))
    assert SUITES.get("binary") == (("apgd", {"loss": "ce", "steps": 100, "restarts": 5}),
                                    ("fmn", {"steps": 100}), ("square", {"n_queries": 5000}))
    assert describe_suite("fast", "l2", 0.15) == "suite fast (apgd loss=ce steps=50; apgd-t " \
        "n_targets=3 steps=50; square n_queries=100) l2 eps=0.15"
    assert [step_min_classes(s) for s in [dlr[0], ("apgd", {"loss": "ce"}),
                                          ("apgd-t", {"loss": "dlr"}), ("fmn", {})]] == [3, 2, 4, 2]
    assert runnable(fast, 4) == (fast, ()) and runnable(fast, 3) == (
        (fast[0], fast[2]), ("apgd-t (needs >= 4 classes)",))
    assert runnable(dlr, 3) == (dlr, ()) and runnable(dlr, 2) == ((), ("apgd (needs >= 3 "
                                                                       "classes)",))
    assert [suites_for(k) for k in (1, 2, 3, 4)] == [[], ["binary"], ["binary"],
                                                     ["adaptive", "binary", "fast", "standard"]]
    monkeypatch.setattr(SUITES, "_items", dict(SUITES._items))
    monkeypatch.setattr(SUITES, "_meta", dict(SUITES._meta))
    with pytest.raises(ValueError, match=r"^attack suite 'odd' states min_classes=2, but its "
                                         r"attacks need 4 classes: state 4$"):
        register_suite("odd", (("apgd-t", {}),), min_classes=2)
    register_suite("none", (), min_classes=2)
    register_suite("t", dlr, min_classes=3)
    assert (SUITES.get("t"), SUITES.meta("t")["min_classes"],
            SUITES.meta("none")["min_classes"]) == (dlr, 3, 2)


def test_summary_counts_checks_and_lists_failures() -> None:
    res = SuiteResult("s", "l2", 0.5, clean=torch.tensor([True, True, True, False]),
                      robust=torch.tensor([True, False, False, False]),
                      x_adv=torch.zeros(4, 1, 1, 2), broken_by=["", "a", "", ""],
                      per_attack=[{"name": "a", "n_broken": 1, "n_in": 2},
                                  {"name": "b", "n_broken": 0, "n_in": 1}])
    checks = [CheckResult("p", True, "ok"), CheckResult("f", False, "bad"),
              CheckResult("n1", None, "-"), CheckResult("n2", None, "-")]
    lo, hi = wilson_ci(1, 4)
    head = (f"robust accuracy 0.250 (95% CI {lo:.3f}-{hi:.3f}, n=4); clean accuracy 0.750\n"
            "attacks: a broke 1 of 2, b broke 0 of 1; l2 eps=0.5\n")
    ev = Evaluation(result=res, checks=checks)
    assert repr(ev) == head + "checks: 1 passed, 1 failed, 2 could not run (n1, n2)\n  FAILED " \
        "f: bad"
    assert summary(res, checks[:1]) == head + "checks: 1 passed, 0 failed"
    assert ev.warnings == [checks[1]]
    assert ev.to_dict() == {"suite": "s", "norm": "l2", "eps": 0.5, "n": 4, "clean_acc": 0.75,
                            "robust_acc": 0.25, "per_attack": res.per_attack,
                            "checks": [c.to_dict() for c in checks],
                            "passes": None, "check_passes": None}  # not counted: built by hand


def test_accuracies_are_exact_at_a_threshold_a_check_compares_with() -> None:
    """1 robust example in 20 is 5% exactly, which control-falls (robust accuracy <= 0.05)
    accepts: a float32 mean (0.0500000007) would refuse it."""
    n = 20
    res = SuiteResult("s", "linf", 0.3, clean=torch.ones(n, dtype=torch.bool),
                      robust=torch.arange(n) == 0, x_adv=torch.zeros(n, 1, 1, 1),
                      broken_by=[""] + ["a"] * (n - 1))
    assert res.robust_acc == 0.05 and res.robust_acc <= 0.05
    assert res.clean_acc == 1.0
