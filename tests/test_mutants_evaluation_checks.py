"""Tests that kill plausible wrong versions of eisbench.evaluation's checks (see
benchmarks/mutation.py).

Each check's pass/fail rule, detail and advice on linear, hand-checkable models, where the
robust accuracy an optimal attack leaves is known in closed form. Where a rule is probed at
its exact boundary, a scripted attack stands in for APGD, so that the robust accuracies the
check sees are known to the example; elsewhere the real attacks run, and ``launched``
records how each check called them.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import LinearBinary, LinearMulti, gaussian_mixture, multi_mixture
from mutants_evaluation_helpers import (
    ADVICE,
    EPS,
    SEED,
    Centres,
    Gated,
    Log,
    Purifier,
    Stub,
    _record,
    binary,
    ctx,
    left,
    run,
)

from eisbench.evaluation import SUITES, CheckResult
from eisbench.evaluation import checks as checks_module
from eisbench.evaluation.checks import _count_autograd, _tol


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Log:
    """Every attack or suite a check launches: (name, keyword arguments, generator seed as
    ``gen``, number of images as ``n``); the real function still runs."""
    return _record(monkeypatch)


def test_check_result_inputs_and_tolerance() -> None:
    assert CheckResult("a", None, "d").to_dict() == {"name": "a", "passed": None, "detail": "d",
                                                     "advice": ""}
    model, x, y, _ = binary()
    c = ctx(model, x, y, n_checks=5)
    assert torch.equal(c.sub[0], x[:5]) and torch.equal(c.sub[1], y[:5])
    assert c.gen(5).initial_seed() == SEED * 7919 + 5
    assert [_tol(n) for n in (0, 1, 50, 64, 200)] == [1.0, 1.0, 0.02, 0.015625, 0.01]


def test_returns_logits_and_deterministic_at_their_edges() -> None:
    x, y = torch.rand(100, 1, 1, 2), torch.zeros(100, dtype=torch.long)
    for rows, probs in [((0.3, 0.7), True), ((0.0, 1.0), True), ((0.50025, 0.50025), True),
                        ((0.501, 0.501), False), ((0.2, 0.3), False), ((1.5, -0.5), False)]:
        run("returns-logits", ctx(Stub(values=rows), x, y), passed=not probs, detail=(
            "outputs are probabilities (rows in [0,1] summing to 1)" if probs
            else "outputs are unnormalised scores"))
    for drift, passed in [(0.95e-4, True), (1.05e-4, False)]:  # bound 1e-5 (1 + max |logit| 9)
        ch = run("deterministic", ctx(Stub(values=(9.0, -9.0), drift=drift), x, y), passed=passed)
        diff = float(ch.detail.split("max |difference| of two forward passes ")[1])
        assert diff == pytest.approx(drift, rel=0.02)
    run("deterministic", ctx(LinearMulti(), x, y, n_checks=0), passed=True,
        detail="max |difference| of two forward passes 0")
    for check, size in [("returns-logits", 64), ("no-autograd-in-forward", 16)]:
        sized = Stub(LinearMulti())
        run(check, ctx(sized, x, y), passed=True)
        assert sized.sizes[-1] == size  # images it looks at


@pytest.mark.parametrize(("dead", "infinite", "passed"), [(1, 0, True), (2, 0, False),
                                                          (0, 2, False)])
def test_gradients_counts_zero_and_non_finite_rows(dead: int, infinite: int,
                                                   passed: bool) -> None:
    """20 images: one (5%) may have a zero input gradient, none a non-finite one."""
    x, _ = gaussian_mixture(20)
    x[:dead, ..., 0] = 0.95
    x[dead:dead + infinite] = 0.0  # sqrt'(0) = inf in both pixels
    run("gradients", ctx(Gated(root=infinite > 0), x, torch.ones(20, dtype=torch.long)),
        passed=passed, detail=f"{dead} of 20 input gradients are exactly zero, {infinite} "
                              "non-finite")


def test_no_autograd_in_forward_counts_calls_and_restores_autograd() -> None:
    x, y = multi_mixture(20)
    grad, backward = torch.autograd.grad, torch.Tensor.backward
    for n in (0, 1, 3):
        run("no-autograd-in-forward", ctx(Purifier(n), x, y), passed=n == 0,
            detail=f"{n} autograd calls during one forward pass")
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="inside"), _count_autograd() as calls:
        assert torch.equal(torch.autograd.grad((a ** 2).sum(), a)[0], 2 * a.detach())
        assert torch.autograd.grad((a ** 2).sum(), a, create_graph=True)[0].requires_grad
        out = (a ** 3).sum()
        out.backward(None, True)  # retain_graph given by position, then by name
        out.backward(retain_graph=True)
        out.backward()
        assert torch.equal(a.grad, 9 * a.detach() ** 2) and calls == [5]  # type: ignore[arg-type]
        raise RuntimeError("inside")
    assert (torch.autograd.grad, torch.Tensor.backward) == (grad, backward)


def test_eval_mode_and_enough_classes_details() -> None:
    model, x, y, _ = binary(8)
    run("eval-mode", ctx(model, x, y, was_training=True), passed=False,
        detail="model was handed over in training mode")
    run("eval-mode", ctx(model, x, y), passed=True, detail="model was in eval mode")
    for skipped, k, fit in [((), 10, "adaptive, binary, fast, standard"), (("a (x)",), 3, "binary"),
                            (("a (x)", "b (y)"), 1, "none")]:
        run("enough-classes", ctx(model, x, y, skipped=skipped, num_classes=k),
            passed=not skipped, advice=ADVICE["enough-classes"].format(k, fit),
            detail=f"{k} classes" + (f"; skipped {', '.join(skipped)}" if skipped else ""))


def test_within_budget_names_each_violation() -> None:
    model, x, y, _ = binary()
    run("within-budget", ctx(model, x, y), passed=True,
        detail="all 64 adversarial examples within linf eps=0.1 and in [0,1]")
    spread = (x + 0.08).clamp(0, 1)  # linf 0.08 but l2 0.113
    run("within-budget", ctx(model, x, y, result={"x_adv": spread}), passed=True)
    bad = run("within-budget", ctx(model, x, y, norm="l2", result={"x_adv": spread}),
              passed=False)
    assert bad.detail.startswith("returned examples: l2 distance 0.11")
    rows = [{"name": "leaky", "budget_violations": ["examples 0..2: far", "examples 3..5: far"]},
            {"name": "fgsm"}]
    run("within-budget", ctx(model, x, y, result={"per_attack": rows}), passed=False,
        detail="leaky: examples 0..2: far; leaky: examples 3..5: far")
    many = [{"name": "leaky", "budget_violations": ["x" * 50] * 20}]
    assert len(run("within-budget", ctx(model, x, y, result={"per_attack": many})).detail) == 500


@pytest.mark.parametrize("missed", [0, 1])
def test_iterative_beats_single_step_counts_what_fgsm_adds(missed: int, launched: Log) -> None:
    model, x, y, margin = binary()
    run("iterative-beats-single-step", ctx(model, x, y, result={"robust": left(margin, missed)},
                                           n_checks=40), passed=missed == 0,
        detail=f"FGSM breaks {missed} of 40 examples the suite left robust")
    assert launched == [("fgsm", {"eps": EPS, "norm": "linf", "gen": None, "n": 40})]
    ch = run("iterative-beats-single-step", ctx(model, x, y))
    assert ch.detail.startswith("FGSM breaks 20 of 64")  # a suite of no attack: 20 breakable


@pytest.mark.parametrize(("keep", "monotone", "chance"), [
    ([32, 33, 33, 16], True, True),  # a rise of exactly 1/64 (the tolerance); 1/5 + 5 points
    ([32, 34, 30, 10], False, True), ([34, 32, 32, 17], True, False)])
def test_eps_curve_rule_at_its_boundaries(keep: list[int], monotone: bool, chance: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A scripted APGD whose i-th call leaves the first keep[i] of 64 images alone and moves
    the rest onto the next class's centre (5 classes)."""
    model, y, grid, todo = Centres(), torch.arange(64) % 5, [], iter(keep)

    def attack(model: Centres, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               **kw: Any) -> torch.Tensor:
        n, xa = next(todo), x.clone()
        grid.append(eps)
        xa[n:] = model.c[(y[n:] + 1) % 5].view(-1, 1, 1, 2)
        return xa
    monkeypatch.setattr(checks_module, "apgd", attack)
    ch = run("eps-curve", ctx(model, model.c[y].view(64, 1, 1, 2), y))
    curve = ", ".join(f"{e:.3g}: {k / 64:.3f}" for e, k in zip(grid, keep, strict=True))
    assert grid == [0.05, 0.1, 0.2, 1.0] and ch.passed is (monotone and chance)
    assert ch.detail == (f"APGD-CE robust accuracy by eps {{{curve}}}; monotone={monotone}, "
                         f"chance at eps=1: {chance}")


def test_eps_curve_with_apgd_matches_the_closed_form(launched: Log) -> None:
    model, x, y, margin = binary()
    accs = [float((margin >= 3 * e).float().mean()) for e in (0.05, 0.1, 0.2)] + [0.0]
    curve = ", ".join(f"{e:.3g}: {a:.3f}" for e, a in zip((0.05, 0.1, 0.2, 1), accs, strict=True))
    run("eps-curve", ctx(model, x, y), passed=True, detail=f"APGD-CE robust accuracy by eps "
        f"{{{curve}}}; monotone=True, chance at eps=1: True")
    assert launched == [("apgd", {"eps": e, "norm": "linf", "steps": 50, "gen": SEED * 7919 + i,
                                  "n": 64}) for i, e in enumerate((0.05, 0.1, 0.2, 1.0))]
    launched.clear()
    l2 = run("eps-curve", ctx(model, x, y, norm="l2", eps=0.2, n_checks=1))
    assert l2.detail.endswith("chance at eps=1.41: True")  # sqrt(2): the whole 1x1x2 box
    assert [(kw["eps"], kw["norm"]) for _, kw in launched] == [
        (0.1, "l2"), (0.2, "l2"), (0.4, "l2"), (math.sqrt(2), "l2")]


@pytest.mark.parametrize(("hyper", "steps", "restarts"), [
    (None, 200, 2), ({}, 200, 2), ({"steps": 3, "restarts": 1}, 6, 2), ({"restarts": 4}, 200, 5)])
def test_more_steps_outdoes_the_first_attack(hyper: dict[str, int] | None, steps: int,
                                             restarts: int, launched: Log) -> None:
    """Twice the steps of the suite's first attack (100 if none), one more restart (2 at least)."""
    model, x, y, margin = binary()
    rows = [] if hyper is None else [{"name": "pgd", "hyper": hyper},
                                     {"name": "apgd", "hyper": {"steps": 7, "restarts": 9}}]
    run("more-steps-and-restarts", ctx(model, x, y, eps=0.3, result={"per_attack": rows},
                                       n_checks=10))  # eps 0.3 breaks all: no restart runs
    assert launched == [("apgd", {"eps": 0.3, "norm": "linf", "steps": steps,
                                  "restarts": restarts, "gen": SEED * 7919 + 99, "n": 10})]
    first = [{"name": "pgd", "hyper": {"steps": 5}}]
    for missed in (1, 2):  # on 64 examples one may be missed
        run("more-steps-and-restarts", ctx(model, x, y, result={
            "robust": left(margin, missed), "per_attack": first}), passed=missed == 1,
            detail=f"APGD-CE with 10 steps and 2 restarts breaks {missed} of 64 examples the "
                   "suite left robust")


@pytest.mark.parametrize(("by_square", "transfer", "passed"), [
    (1, None, True), (2, None, False), (0, 1, True), (0, 2, False), (1, 1, False)])
def test_black_box_check_allows_one_break_in_200(by_square: int, transfer: int | None,
                                                 passed: bool, launched: Log) -> None:
    """200 examples: at most 0.5% (one) may fall to a gradient-free or transfer attack."""
    model, x, y, margin = binary(200)
    rows = [{"name": "apgd"}, {"name": "square"}] if transfer is None else [{"name": "apgd"}]
    ch = run("black-box-not-stronger", ctx(
        model, x, y, n_checks=20, surrogate=None if transfer is None else LinearBinary(),
        result={"robust": left(margin, transfer or 0, among=20), "per_attack": rows,
                "broken_by": ["square"] * by_square + ["apgd"] * 3 + [""] * (197 - by_square)}),
        passed=passed)
    detail = f"gradient-free attacks break {by_square} examples the white-box attacks missed"
    if transfer is not None:
        detail += f"; transfer from the surrogate breaks {transfer}"
        assert launched == [("pgd", {"eps": EPS, "norm": "linf", "steps": 50,
                                     "gen": SEED * 7919 + 7, "n": 20})]
    assert ch.detail == detail
    for rows in ([], [{"name": "apgd"}, {"name": "fgsm"}]):  # nothing could beat the white box
        run("black-box-not-stronger", ctx(model, x, y, result={"per_attack": rows}), passed=None,
            detail="no gradient-free attack in the suite and no surrogate given: cannot run")


def test_control_falls_runs_the_fast_suite_on_the_control(launched: Log) -> None:
    model, x, y, _ = binary(8)
    run("control-falls", ctx(model, x, y), passed=None, detail="no undefended control model given")
    xc, yc = multi_mixture(12)
    for eps, acc in [(0.3, "0.000"), (0.001, "1.000")]:
        run("control-falls", ctx(model, xc, yc, eps=eps, control=LinearMulti(), num_classes=4),
            passed=eps == 0.3, detail=f"undefended control: robust accuracy {acc} (clean 1.000)")
    assert launched[0] == ("run_suite", {"eps": 0.3, "norm": "linf", "steps": SUITES.get("fast"),
                                         "seed": SEED, "gen": None, "n": 12})
    launched.clear()  # on 2 classes the fast suite runs without APGD-T
    run("control-falls", ctx(model, x, y, eps=0.3, control=model), passed=True)
    assert launched[0][1]["steps"] == (SUITES.get("fast")[0], SUITES.get("fast")[2])
