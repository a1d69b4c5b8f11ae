"""Tests that kill plausible wrong versions of eisbench.evaluation (see benchmarks/mutation.py).

The models are linear and hand-checkable (tests/conftest.py). On ``LinearBinary`` (logits
[0, w.x + b], |w|_1 = 3) an L-inf attack of radius e breaks exactly the examples whose margin
|w.x + b| is below 3e, so every count below is known in closed form. Where a check's pass/fail
rule is probed at its exact boundary, a scripted attack stands in for APGD, so that the robust
accuracies the check sees are known to the example; elsewhere the real attacks run, and
``launched`` records how each check called them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import LinearBinary, LinearMulti, gaussian_mixture, multi_mixture
from torch import nn

from eisbench.attacks import ATTACKS, fgsm, pgd
from eisbench.core.stats import wilson_ci
from eisbench.evaluation import CHECKS, SUITES, CheckResult, Evaluation, SuiteResult, run_suite
from eisbench.evaluation import checks as checks_module
from eisbench.evaluation import suite as suite_module
from eisbench.evaluation.checks import (
    CheckInputs,
    EvaluationBudgetViolation,
    _count_autograd,
    _tol,
    evaluate_robustness,
)
from eisbench.evaluation.suite import (
    Step,
    describe_suite,
    register_suite,
    runnable,
    step_min_classes,
    suites_for,
    summary,
)

EPS, SEED, CPU = 0.1, 3, torch.device("cpu")
Log = list[tuple[str, dict[str, Any]]]
ADVICE = {  # "within-budget" and "control-falls" advise only when they fail / run
    "returns-logits": "return logits: a softmax output flattens the cross-entropy gradient",
    "deterministic": "the model is randomised: attack the expectation over its randomness (EoT, "
    "Athalye et al. 2018) before trusting this number",
    "gradients": "zero or broken gradients mean gradient masking (e.g. quantised inputs or "
    "saturated outputs): use BPDA or a gradient-free attack",
    "no-autograd-in-forward": "the forward pass optimises something itself: gradients through "
    "it are not the model's; attack it adaptively (Tramer et al. 2020)",
    "eval-mode": "switch the model to eval mode (model.train(False)): dropout and batch-norm "
    "statistics change the function (eisbench attacks and scores in eval mode)",
    "within-budget": "", "control-falls": "",
    "iterative-beats-single-step": "a single step beating the iterative attacks means the loss "
    "surface is masked or the iterative attacks are misconfigured",
    "eps-curve": "robust accuracy must fall with eps and reach chance when the budget covers "
    "the whole image space; otherwise the attack does not work",
    "more-steps-and-restarts": "the number has not converged: raise steps and restarts until it "
    "stops moving",
    "black-box-not-stronger": "black-box or transfer attacks beating white-box ones is the "
    "signature of gradient masking: the gradients mislead, so robustness may be lower still (the "
    "suite's number includes these breaks); try more queries and an adaptive attack",
    "enough-classes": "the suite's attacks need more classes than the model has: run a suite "
    "made for {} classes ({})",
    "budget-failed": "an attack broke the threat model: its successes were not counted; fix the "
    "attack before trusting any number from it",
    "control-ran": "the attack cannot break an undefended model at this eps: it is too weak or "
    "the budget too small to mean anything"}


def binary(n: int = 64) -> tuple[LinearBinary, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LinearBinary on its mixture, labelled by itself, and each margin |w.x + b| (n=64: 6, 20
    and 61 examples under 0.15, 0.3 and 0.6, none within 0.007 of these)."""
    model, (x, _) = LinearBinary(), gaussian_mixture(n)
    with torch.no_grad():
        z = model.lin(x.flatten(1)).squeeze(1)  # (N,)
    return model, x, (z > 0).long(), z.abs()


def ctx(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = EPS,
        norm: str = "linf", result: dict[str, Any] | None = None, **kw: Any) -> CheckInputs:
    """Check inputs after a suite of no attack (robust = clean), ``result`` fields replaced."""
    res = dataclasses.replace(run_suite(model, x, y, eps=eps, norm=norm, steps=()),
                              **(result or {}))
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    return CheckInputs(**{"model": model, "x": x, "y": y, "eps": eps, "norm": norm, "result": res,
                          "was_training": False, "num_classes": k, "n_checks": len(x),
                          "seed": SEED, "device": CPU, **kw})


def run(name: str, c: CheckInputs, **expect: Any) -> CheckResult:
    """Run check ``name``; assert its name, its advice and the ``expect``ed fields."""
    ch = CHECKS.get(name)(c)
    assert ch.name == name and {k: getattr(ch, k) for k in expect} == expect
    advice = {"within-budget": ADVICE["budget-failed"] if ch.passed is False else "",
              "control-falls": "" if ch.passed is None else ADVICE["control-ran"],
              "black-box-not-stronger": "" if ch.passed is None else ADVICE[name]}
    assert name == "enough-classes" or ch.advice == advice.get(name, ADVICE[name])
    return ch


def left(margin: torch.Tensor, missed: int, among: int = 64) -> torch.Tensor:
    """What an optimal L-inf attack at EPS leaves robust, and ``missed`` breakable examples
    among the first ``among``."""
    robust = margin >= 3 * EPS
    robust[(~robust[:among]).nonzero()[:missed]] = True
    return robust


def _record(mp: pytest.MonkeyPatch) -> Log:
    log: Log = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def record(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Any:
            g = kw.get("generator")
            log.append((name, {**{k: v for k, v in kw.items() if k not in ("generator", "device")},
                               "gen": None if g is None else g.initial_seed(), "n": len(x)}))
            return real(model, x, y, **kw)
        return record
    for name in ("apgd", "pgd", "fgsm", "run_suite"):
        mp.setattr(checks_module, name, wrap(name, getattr(checks_module, name)))
    return log


def progress_labels(mp: pytest.MonkeyPatch) -> list[str]:
    """The label of each progress bar run_suite opens, from now on."""
    labels: list[str] = []

    def progress(it: Any, *, desc: str, **kwargs: Any) -> Any:
        labels.append(desc)
        return it
    mp.setattr(suite_module, "progress", progress)
    return labels


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Log:
    """Every attack or suite a check launches: (name, keyword arguments, generator seed as
    ``gen``, number of images as ``n``); the real function still runs."""
    return _record(monkeypatch)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Registers two attacks that log each call: ``probe`` returns its input, ``leaky`` leaves
    the eps-ball on its first call and runs FGSM after."""
    log: list[dict[str, Any]] = []

    def make(name: str) -> Callable[..., torch.Tensor]:
        def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   norm: str, generator: torch.Generator, **hyper: Any) -> torch.Tensor:
            log.append({"attack": name, "n": len(x), "eps": eps, "norm": norm,
                        "gen": generator.initial_seed(), **hyper})
            if name == "probe":
                return x
            first = [e["attack"] for e in log].count("leaky") == 1
            return (x + 2 * eps).clamp(0, 1) if first else fgsm(model, x, y, eps=eps)
        return attack
    for name in ("probe", "leaky"):
        monkeypatch.setitem(ATTACKS._items, name, make(name))
        monkeypatch.setitem(ATTACKS._meta, name, ATTACKS.meta("fgsm"))
    return log


class Stub(nn.Module):
    """Records each batch size; returns ``net(x)``, or else the rows ``values`` plus ``drift``
    times the number of earlier calls."""

    def __init__(self, net: nn.Module | None = None, values: tuple[float, ...] = (),
                 drift: float = 0.0) -> None:
        super().__init__()
        self.net, self.values, self.drift = net, torch.tensor(values), drift
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if self.net is not None:
            return self.net(x)
        return self.values.expand(len(x), -1) + self.drift * (len(self.sizes) - 1)  # (B, K)


class Gated(LinearBinary):
    """Constant (zero input gradient) where the first pixel is > 0.9; on sqrt(x) when ``root``
    (an infinite gradient at a 0 pixel)."""

    def __init__(self, root: bool) -> None:
        super().__init__()
        self.root = root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = (x.flatten(1)[:, :1] <= 0.9).float()  # (B, 1)
        return super().forward(x.clamp(min=0).sqrt() if self.root else x) * gate


class Purifier(LinearMulti):
    """Takes ``n`` gradient steps on its input first (autograd.grad and backward in turn)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            with torch.enable_grad():
                xp = x.detach().requires_grad_(True)
                score = super().forward(xp).max(1).values.sum()
                g = score.backward() or xp.grad if i % 2 else torch.autograd.grad(score, xp)[0]
            x = (x + 0.01 * g.sign()).clamp(0, 1)  # type: ignore[union-attr]
        return super().forward(x)


class Centres(nn.Module):
    """Nearest-centre classifier on (B, 1, 1, 2), K centres on a circle: 2 c_k.x - |c_k|^2."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        a = torch.arange(k) * 2 * math.pi / k
        self.c = 0.5 + 0.3 * torch.stack([a.cos(), a.sin()], 1)  # (K, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x.flatten(1) @ self.c.T - (self.c ** 2).sum(1)


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
    for skipped, k, fit in [((), 10, "binary, fast, standard"), (("a (x)",), 3, "binary"),
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
    assert [{k: v for k, v in a.items() if k != "seconds"} for a in res.per_attack] == [
        {"name": "pgd", "hyper": steps[0][1], "n_in": 64, "n_broken": 6},
        {"name": "fgsm", "hyper": {}, "n_in": 58, "n_broken": 14}]
    assert all(0 <= a["seconds"] <= took for a in res.per_attack)
    assert (res.suite, res.norm, res.eps, res.robust_acc, res.clean_acc) == (
        "custom", "linf", EPS, 44 / 64, 1.0)
    lo, hi = wilson_ci(44, 64)
    assert repr(res) == (f"robust accuracy 0.688 (95% CI {lo:.3f}-{hi:.3f}, n=64); clean "
                         "accuracy 1.000\nattacks: pgd broke 6 of 64, fgsm broke 14 of 58; "
                         "linf eps=0.1")


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
                                                     ["binary", "fast", "standard"]]
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
                            "checks": [c.to_dict() for c in checks]}


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
        "enough-classes": ADVICE["enough-classes"].format(4, "binary, fast, standard")}
    details = {c.name: c.detail for c in ev.checks}
    assert (details["iterative-beats-single-step"], details["enough-classes"]) == (
        "FGSM breaks 0 of 200 examples the suite left robust", "4 classes")
    assert [(kw["gen"], kw["n"], kw["norm"]) for name, kw in log if name == "apgd"][:4] == [
        (i, 200, "linf") for i in range(4)]  # eps-curve: seed 0, the first 200 images
    assert repr(ev).endswith("checks: 11 passed, 0 failed, 1 could not run (control-falls)")
    assert ev.to_dict() == {"suite": "standard", "norm": "linf", "eps": 0.4, "n": 501,
                            "clean_acc": 1.0, "robust_acc": 0.0, "per_attack": ev.result.per_attack,
                            "checks": [c.to_dict() for c in ev.checks]}


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


def test_accuracies_are_exact_at_a_threshold_a_check_compares_with() -> None:
    """1 robust example in 20 is 5% exactly, which control-falls (robust accuracy <= 0.05)
    accepts: a float32 mean (0.0500000007) would refuse it."""
    n = 20
    res = SuiteResult("s", "linf", 0.3, clean=torch.ones(n, dtype=torch.bool),
                      robust=torch.arange(n) == 0, x_adv=torch.zeros(n, 1, 1, 1),
                      broken_by=[""] + ["a"] * (n - 1))
    assert res.robust_acc == 0.05 and res.robust_acc <= 0.05
    assert res.clean_acc == 1.0
