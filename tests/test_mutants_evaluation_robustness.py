"""Tests that kill plausible wrong versions of eisbench.evaluation.evaluate_robustness (see
benchmarks/mutation.py): its defaults, the attacks it skips when the model has too few classes,
a custom plan with its warnings and budget violation, and the model's own train/eval modes
restored.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import LinearMulti, multi_mixture
from mutants_evaluation_helpers import ADVICE, EPS, SEED, Log, Stub, _probe_attacks, _record, binary
from torch import nn

from eisbench.evaluation import CHECKS
from eisbench.evaluation.checks import EvaluationBudgetViolation, evaluate_robustness


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Log:
    """Every attack or suite a check launches: (name, keyword arguments, generator seed as
    ``gen``, number of images as ``n``); the real function still runs."""
    return _record(monkeypatch)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Registers two attacks that log each call: ``probe`` returns its input, ``leaky`` leaves
    the eps-ball on its first call and runs FGSM after."""
    return _probe_attacks(monkeypatch)


def test_evaluate_robustness_defaults() -> None:
    """Every default, on 501 images of a 4-class linear model that APGD-CE breaks at eps 0.4."""
    sized = Stub(LinearMulti()).eval()
    with pytest.MonkeyPatch.context() as mp:
        log = _record(mp)
        ev = evaluate_robustness(sized, *multi_mixture(501), eps=0.4)
    assert sized.sizes[:3] == [1, 500, 1]  # the class count, then the suite in batches of 500
    assert ev.result.suite == "standard" and [a["name"] for a in ev.result.per_attack] == [
        "apgd", "apgd-t", "fmn", "square"]
    assert [c.name for c in ev.checks] == CHECKS.names() and ev.warnings == []
    assert {c.name: c.advice for c in ev.checks} == {n: ADVICE[n] for n in CHECKS.names()} | {
        "enough-classes": ADVICE["enough-classes"].format(4, "adaptive, binary, fast, standard")}
    details = {c.name: c.detail for c in ev.checks}
    assert (details["iterative-beats-single-step"], details["enough-classes"]) == (
        "FGSM breaks 0 of 200 examples the suite left robust", "4 classes")
    assert [(kw["gen"], kw["n"], kw["norm"]) for name, kw in log if name == "apgd"][:4] == [
        (i, 200, "linf") for i in range(4)]  # eps-curve: seed 0, the first 200 images
    assert repr(ev).endswith("checks: 11 passed, 0 failed, 1 could not run (control-falls)")
    d = ev.to_dict()
    assert d == {"suite": "standard", "norm": "linf", "eps": 0.4, "n": 501,
                 "clean_acc": 1.0, "robust_acc": 0.0, "per_attack": ev.result.per_attack,
                 "checks": [c.to_dict() for c in ev.checks], "passes": ev.result.passes_dict(),
                 "check_passes": d["check_passes"]}
    # every forward the model saw: the class count (1 image), the suite's and the checks'
    assert sum(sized.sizes) == 1 + d["passes"]["forward"] + d["check_passes"]["forward"]


def test_evaluate_robustness_skips_attacks_needing_more_classes(launched: Log) -> None:
    model, x, y, _ = binary(20)
    sized = Stub(model).eval()
    ev = evaluate_robustness(sized, x, y, eps=0.3, suite="fast", n_checks=5, batch_size=7,
                             seed=SEED)  # eps 0.3 breaks every example
    assert ev.result.suite == "fast" and max(sized.sizes) == 7
    assert [a["name"] for a in ev.result.per_attack] == ["apgd", "square"]
    assert [(w.name, w.detail) for w in ev.warnings] == [
        ("enough-classes", "2 classes; skipped apgd-t (needs >= 4 classes)")]
    assert [(kw["gen"], kw["n"]) for name, kw in launched if name == "apgd"][:4] == [
        (SEED * 7919 + i, 5) for i in range(4)]


def test_evaluate_robustness_custom_plan(probe: list[dict[str, Any]]) -> None:
    model, x, y, margin = binary(6)
    wrapped = nn.Sequential(model).eval()
    model.train()  # one submodule in training mode is enough to trip the check
    ev = evaluate_robustness(wrapped, x, y, eps=EPS, norm="l2", n_checks=50, seed=SEED,
                             steps=(("probe", {"steps": 2}),))
    assert ev.result.suite == "custom" and ev.result.norm == "l2"
    assert [(e["gen"], e["n"], e["norm"]) for e in probe] == [(SEED * 1000, 6, "l2")]
    assert [w.name for w in ev.warnings] == [  # and an attack that does nothing is caught
        "eval-mode", "iterative-beats-single-step", "more-steps-and-restarts"]
    fgsm_l2 = int((margin < EPS * math.sqrt(5)).sum())  # an l2 step moves w.x by eps |w|_2
    assert {c["name"]: c["detail"] for c in ev.to_dict()["checks"]}[
        "iterative-beats-single-step"] == f"FGSM breaks {fgsm_l2} of 6 examples the suite " \
        "left robust"
    with pytest.raises(EvaluationBudgetViolation) as info:
        evaluate_robustness(model.eval(), x, y, eps=EPS, steps=(("leaky", {}),), n_checks=2)
    budget = next(c for c in info.value.evaluation.checks if c.name == "within-budget")
    assert budget.passed is False and budget.detail.startswith("leaky: examples ")
    assert str(info.value) == (f"an attack broke the threat model ({budget.detail}); the "
                               "evaluation, with its failed within-budget check, is attached as "
                               ".evaluation")


def test_eval_mode_restores_every_submodules_own_mode() -> None:
    """A model handed over with mixed modes (an eval wrapper around a training-mode child)
    comes back with the same mix, not with every submodule set to the top module's mode."""
    from torch import nn

    from eisbench.core.tensors import eval_mode

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    net.eval()
    net[1].train()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [False, False, True]
